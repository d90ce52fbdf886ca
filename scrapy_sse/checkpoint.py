"""Delivered-id checkpoints in ``JOBDIR``, so a restarted crawl resumes each stream.

The file maps a stream key (the fingerprint of the request that first opened the
stream) to the id of the last event delivered to the spider. It is rewritten
atomically (temporary file, fsync, rename): a crash leaves the old or the new file,
never half of one. Ids are read from the streams on a timer and when a stream or the
spider closes, so the per-event path pays nothing for it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

FILENAME = "sse_checkpoints.json"


class Checkpoints:
    def __init__(self, jobdir: str | os.PathLike[str]) -> None:
        self.path = Path(jobdir) / FILENAME
        self._ids: dict[str, str] = {}
        self._dirty = False
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._ids = {str(k): str(v) for k, v in data.get("last_event_ids", {}).items()}
            except (OSError, ValueError) as exc:
                logger.error(
                    "Ignoring unreadable SSE checkpoint file %s (%s): streams restart "
                    "without Last-Event-ID",
                    self.path,
                    exc,
                )

    def get(self, key: str) -> str | None:
        return self._ids.get(key)

    def set(self, key: str, event_id: str) -> None:
        if event_id and self._ids.get(key) != event_id:
            self._ids[key] = event_id
            self._dirty = True

    def __len__(self) -> int:
        return len(self._ids)

    def flush(self) -> bool:
        """Write the file if anything changed; returns whether it wrote."""
        if not self._dirty:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".sse_checkpoints.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "last_event_ids": self._ids}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False
        return True
