"""``scrapy sse URL``: a stream tailed in the terminal, run as a user runs it (outside
any project), in each output mode; the status line driven in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from .llm_cases import DemoConfig, serve_in_thread
from .servers.sse_server import SSEServer

SCRAPY = [sys.executable, "-m", "scrapy", "sse"]


def tail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCRAPY, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_each_output_mode_prints_the_events(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url("/stream?n=3&event=tick&done=1")
    pretty = tail(url, cwd=tmp_path)
    assert pretty.returncode == 0, pretty.stderr
    blocks = pretty.stdout.strip().split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        f"event: tick  id: {i}" for i in (1, 2, 3)
    ]
    assert json.loads("\n".join(blocks[0].splitlines()[1:]))["seq"] == 1  # indented JSON
    rows = [json.loads(line) for line in tail(url, "--json", cwd=tmp_path).stdout.splitlines()]
    assert [(row["event"], row["id"], row["json"]["seq"]) for row in rows] == [
        ("tick", str(i), i) for i in (1, 2, 3)
    ]
    raw = tail(url, "--raw", cwd=tmp_path).stdout
    assert raw.startswith("event: tick\nid: 1\ndata: {") and raw.count("\n\n") == 3
    assert pretty.stderr == ""  # (no status line off a terminal, no warning)


def test_post_headers_and_last_event_id_reach_the_server(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    url = sse_server.url("/stream?n=5&key=resume")
    result = tail(
        url,
        "-X",
        "POST",
        "-d",
        '{"q": 1}',
        "-H",
        "Authorization: Bearer t",
        "--last-event-id",
        "2",
        "--no-reconnect",
        "--json",
        cwd=tmp_path,
    )
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["3", "4", "5"]
    [request] = sse_server.requests_for_key("resume")
    assert request.method == "POST" and request.body == b'{"q": 1}'
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["last-event-id"] == "2"


def test_limits_end_it_and_llm_posts_work_against_the_demo_server(tmp_path: Path) -> None:
    base, stop = serve_in_thread(0, config=DemoConfig(chat_chunk_delay=0.001))
    try:
        prices = tail(base + "/prices", "--max-events", "4", "--json", cwd=tmp_path)
        started = time.monotonic()
        timed = tail(base + "/prices", "--max-time", "1", "--json", cwd=tmp_path)
        took = time.monotonic() - started
        chat = tail(
            base + "/v1/chat/completions",
            "-H",
            "Authorization: Bearer k",
            "-d",
            json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            ),
            "--json",
            cwd=tmp_path,
        )
    finally:
        stop()
    assert len(prices.stdout.splitlines()) == 4
    assert timed.returncode == 0 and 5 <= len(timed.stdout.splitlines()) <= 40 and took < 20
    deltas = [json.loads(line)["json"]["choices"][0]["delta"] for line in chat.stdout.splitlines()]
    assert "".join(d.get("content") or "" for d in deltas).startswith("Server-Sent Events")


def test_a_terminal_gets_a_live_status_line(sse_server: SSEServer, tmp_path: Path) -> None:
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [*SCRAPY, sse_server.url("/stream?n=30&delay=0.05&done=1"), "--json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=child,
        text=True,
    )
    os.close(child)
    out, _ = proc.communicate(timeout=60)
    status = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        status += chunk
    os.close(main)
    assert proc.returncode == 0
    assert len(out.splitlines()) == 30
    text = status.decode()
    assert "\r" in text and "events," in text and "reconnects" in text
    assert text.rstrip().splitlines()[-1].split("\r")[-1].lstrip("\x1b[2K").startswith("30 events")


def test_inside_a_startproject_project_it_streams_at_once_and_a_dead_url_fails(
    sse_server: SSEServer, tmp_path: Path
) -> None:
    subprocess.run(
        [sys.executable, "-m", "scrapy", "startproject", "shop"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    project = tmp_path / "shop"
    settings = (project / "shop" / "settings.py").read_text()
    assert "ROBOTSTXT_OBEY = True" in settings  # (what startproject writes)
    with open(project / "shop" / "settings.py", "a") as f:
        f.write("\nDOWNLOAD_DELAY = 5\n")
    started = time.monotonic()
    result = tail(sse_server.url("/stream?n=2&done=1&key=inproject"), "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2 and time.monotonic() - started < 20
    assert not sse_server.requests_for("/robots.txt")
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/s"
    failed = tail(dead, "--max-time", "2", cwd=project)
    assert failed.returncode == 1 and "never opened" in failed.stderr
