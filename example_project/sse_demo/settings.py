"""Settings of the ``sse_demo`` example project.

Only what differs from Scrapy's defaults is set here.  Stream-specific
behaviour (download timeouts that must not cut an endless stream, reconnection,
``Last-Event-ID`` handling) is the job of the ``scrapy_sse`` add-on, so the
project enables the add-on instead of tuning those settings itself.  No store is
configured here: ``run_demo.py`` writes to SQLite (or ``--store postgres|redis|jsonl``);
with ``scrapy crawl`` pick one per run, e.g. ``-O out.jsonl``, or
``-s ITEM_PIPELINES='{"scrapy_sse.pipelines.SQLitePipeline": 800}' -s SSE_SQLITE_PATH=x.db``.
"""

from __future__ import annotations

BOT_NAME = "sse_demo"
SPIDER_MODULES = ["sse_demo.spiders"]
NEWSPIDER_MODULE = "sse_demo.spiders"

ADDONS = {"scrapy_sse.SSEAddon": 500}

# Streams are API endpoints, not pages: the demo server has no robots.txt, and
# fetching one first would only add a 404 before every stream.
ROBOTSTXT_OBEY = False

# A default that names the project; spiders whose upstream has a User-Agent
# policy (Wikimedia) set a more specific one.
USER_AGENT = "scrapy-sse-demo/0.1 (+https://pypi.org/project/scrapy-sse/)"

LOG_LEVEL = "INFO"
# Event payloads are Unicode (wiki titles in many scripts): keep them readable.
FEED_EXPORT_ENCODING = "utf-8"
# Streams carry no session state, and a demo needs no remote access to the
# running crawl (Scrapy would otherwise listen on extra ports per crawler).
COOKIES_ENABLED = False
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
