"""Benchmarks for scrapy-sse: parse-only against other Python SSE parsers, and end to end
over loopback against other SSE clients and Scrapy's own item ceiling.

Run ``python benchmarks/run.py`` (``--quick`` for a short pass, ``--only parse|e2e``).
Nothing here is imported by ``scrapy_sse`` or by the tests.
"""
