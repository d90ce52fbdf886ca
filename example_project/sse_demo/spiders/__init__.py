"""Spiders of the example project; Scrapy discovers them through ``SPIDER_MODULES``."""
