"""Example Scrapy project consuming Server-Sent Events streams with ``scrapy_sse``."""
