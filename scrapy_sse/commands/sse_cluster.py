"""``scrapy sse-cluster``: the workers of a cluster, their streams, leases and cursors."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    import argparse


class Command(ScrapyCommand):
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "[options] [NAME]"

    def short_desc(self) -> str:
        return "Show (or change) an SSE cluster: workers, streams, leases, stored cursors"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--url", help="Redis URL (default: the SSE_CLUSTER_URL setting)")
        parser.add_argument("--json", action="store_true", help="print the state as JSON")
        parser.add_argument(
            "--complete",
            metavar="STREAM",
            help="mark a stream (its key, or a unique prefix) completed: closed, not reopened",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        url = opts.url or self.settings.get("SSE_CLUSTER_URL")
        name = args[0] if args else self.settings.get("SSE_CLUSTER_NAME")
        if not url or not name:
            raise UsageError("give the cluster's NAME and --url (or set SSE_CLUSTER_URL)")
        try:
            import redis
        except ImportError:
            print("scrapy sse-cluster needs redis: pip install scrapy-sse[redis]", file=sys.stderr)
            self.exitcode = 1
            return
        from ..cluster.status import complete, render, snapshot

        with redis.Redis.from_url(url) as client:
            if opts.complete:
                if not complete(client, name, opts.complete):
                    print(
                        f"no single stream of {name!r} matches {opts.complete!r}", file=sys.stderr
                    )
                    self.exitcode = 1
                    return
                print(f"stream {opts.complete} of {name!r} marked completed")
                return
            snap = snapshot(client, name)
        print(json.dumps(snap, indent=2) if opts.json else render(snap))
