"""Resume points in ``JOBDIR``, for streams whose data no store holds a cursor for.

The file maps a stream key (the fingerprint of the request that first opened the
stream, or the key the user gave it) to its resume point: the id of the last event
whose items have all left the item pipelines (stored, for sinks that commit them),
and that event's sequence number (see :mod:`scrapy_sse.durable`). A store's cursor,
committed with its rows, wins over this file: the file is written on a timer, apart
from any commit, so across a hard crash it gives at-least-once. It is rewritten
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
        self._seqs: dict[str, int] = {}
        self._dirty = False
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._ids = {str(k): str(v) for k, v in data.get("last_event_ids", {}).items()}
                # (Version 1 files have no sequence numbers.)
                self._seqs = {str(k): int(v) for k, v in data.get("seqs", {}).items()}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                logger.error(
                    "Ignoring unreadable SSE checkpoint file %s (%s): streams restart "
                    "without Last-Event-ID",
                    self.path,
                    exc,
                )

    def get(self, key: str) -> str | None:
        return self._ids.get(key)

    def points(self) -> dict[str, tuple[str, int]]:
        """Every stream's resume point: ``(event id, seq)``."""
        return {key: (event_id, self._seqs.get(key, 0)) for key, event_id in self._ids.items()}

    def set(self, key: str, event_id: str, seq: int = 0) -> None:
        if event_id and (self._ids.get(key) != event_id or self._seqs.get(key, 0) != seq):
            self._ids[key] = event_id
            self._seqs[key] = seq
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
                json.dump(
                    {"version": 2, "last_event_ids": self._ids, "seqs": self._seqs},
                    f,
                    sort_keys=True,
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False
        return True
