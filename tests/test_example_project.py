"""The README's main job, run as a user runs it (bounded: 2 s per spider)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_main_job_fills_the_embedded_store(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "example_project/run_demo.py",
            "--seconds",
            "2",
            "--output",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with sqlite3.connect(tmp_path / "demo.sqlite3") as db:
        counts = {
            table: db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in ("wikimedia", "prices", "chat", "completions")
        }
        symbols = {row[0] for row in db.execute("SELECT symbol FROM prices")}
    assert all(count > 0 for count in counts.values()), counts
    assert symbols and all(symbol.isupper() for symbol in symbols)
    assert "SSE demo summary" in proc.stdout
