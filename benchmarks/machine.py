"""What machine the numbers come from, and how busy the rest of it was meanwhile.

Why: absolute numbers only mean something next to the CPU and versions they were
measured with, and on a 2-core machine a single other busy process (a test suite, a
build) takes half the machine; measuring that makes it visible (and lets the end-to-end
runner retry a disturbed run) instead of silently skewing the results.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["LoadMonitor", "machine_info"]

_PACKAGES = (
    "scrapy",
    "twisted",
    "httpx",
    "httpx-sse",
    "sseclient-py",
    "launchdarkly-eventsource",
    "requests",
    "urllib3",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "scrapy_sse"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" (scrapy_sse/ modified)" if dirty else "")


class LoadMonitor:
    """CPU time the rest of the machine used while we ran.

    Why: on a 2-core machine, one other busy process (a test suite, a build) takes half
    the machine and skews every number; this makes that visible in the output instead of
    silently. It is the machine's busy time from ``/proc/stat`` minus this process's and
    its (waited-for) children's CPU time, and minus ``also_ours`` (the loopback server,
    which is still running). ``/proc/stat`` counts in 10 ms ticks, so a window much
    shorter than a second says little.
    """

    def __init__(self, also_ours: tuple[int, ...] = ()) -> None:
        self._pids = also_ours
        self._busy0 = self._busy()
        self._ours0 = self._ours()
        self._t0 = time.monotonic()
        self.load_before = self._loadavg()

    @staticmethod
    def _busy() -> float:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return float("nan")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    def _ours(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            total += ru.ru_utime + ru.ru_stime
        for pid in self._pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    @staticmethod
    def _loadavg() -> float:
        try:
            return float(Path("/proc/loadavg").read_text().split()[0])
        except (OSError, ValueError):
            return float("nan")

    def summary(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._t0
        other = max(0.0, (self._busy() - self._busy0) - (self._ours() - self._ours0))
        return {
            "elapsed_s": elapsed,
            "other_cpu_s": other,
            "other_cores_busy": other / elapsed if elapsed else float("nan"),
            "loadavg_before": self.load_before,
            "loadavg_after": self._loadavg(),
        }


def _tree_digest(folder: Path) -> str:
    """Digest of the package's source as measured: the code changes between commits
    (and before them), and a number must be traceable to the code it came from."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info(root: Path) -> dict[str, Any]:
    """Where the numbers come from: nothing here is comparable across machines."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "scrapy_sse_revision": _git_revision(root),
        "scrapy_sse_digest": _tree_digest(root / "scrapy_sse"),
        "scrapy_sse_parser": "compiled" if _parser_compiled() else "pure Python",
    }


def _parser_compiled() -> bool:
    from scrapy_sse.parser import COMPILED

    return COMPILED
