"""Scrapy commands scrapy-sse adds (entry point group ``scrapy.commands``)."""
