"""No credential in any record: a crawl whose stream carries a recognisable secret in
each place a credential goes (a query parameter, an Authorization header, a cookie, a
proxy's password) drives every path that writes a record (DEBUG logs, a failed first
connection, a failing callback, dead letters, the SQLite store with its cursors, JOBDIR
checkpoints, stats, ``scrapy sse``), then every output is searched for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scrapy_sse.secrets import Secrets, mask_url

from .crawl import run_crawl
from .servers.proxy import ConnectProxy
from .servers.sse_server import SSEServer

SECRETS = {
    "query": "S3cretQueryTok",
    "bearer": "S3cretBearerKey",
    "cookie": "S3cretCookieVal",
    "proxy": "S3cretProxyPw",
}


def leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_no_secret_reaches_any_record(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url(
        f"/status?code=500&times=1&key=secrets&body=refused&n=9&done=1&ascii=1"
        f"&token={SECRETS['query']}"
    )
    with ConnectProxy(auth=("user", SECRETS["proxy"])) as proxy:
        proxied = proxy.url.replace("http://", f"http://user:{SECRETS['proxy']}@")
        result = run_crawl(
            "FailingCallback",
            args={
                "url": url,
                "reconnect": "1",
                "auth": SECRETS["bearer"],
                "cookie": SECRETS["cookie"],
                "proxy": proxied,
            },
            settings={
                "LOG_LEVEL": "DEBUG",
                "SSE_RETRY_DELAY": 0.01,
                "SSE_DEAD_LETTERS": True,
                "SSE_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl"),
                "JOBDIR": str(tmp_path / "job"),
                "ITEM_PIPELINES": {
                    "tests.crawl_main.RecordPipeline": 100,
                    "scrapy_sse.pipelines.SQLitePipeline": 300,
                },
                "SSE_SQLITE_PATH": str(tmp_path / "store.sqlite3"),
                "SSE_SPILL_DIR": str(tmp_path / "spill"),
            },
            workdir=tmp_path,
        )
    assert result.returncode == 0, result.log[-3000:]
    # It ran through every path: the 500, the events, the failures, the store.
    assert result.stat("sse/failures/http_500") == 1
    assert result.stat("sse/callback_errors") == 3
    assert (tmp_path / "dead.jsonl").exists()
    assert any(item.get("id") for item in result.items)
    outputs = {
        "log": result.log,
        "stats": json.dumps(result.stats, default=str),
        "items": json.dumps(result.items),
    }
    for path in tmp_path.rglob("*"):
        if path.is_file():
            outputs[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    assert found == {}, found
    # (The secrets did travel: the proxy saw the password, the server the token.)
    assert any(
        r.query.get("token") == SECRETS["query"] for r in sse_server.requests_for_key("secrets")
    )


def test_scrapy_sse_output_has_no_secret(sse_server: SSEServer, tmp_path: Path) -> None:
    url = sse_server.url(f"/status?code=500&times=1&key=tail&n=3&done=1&token={SECRETS['query']}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "sse",
            url,
            "-H",
            f"Authorization: Bearer {SECRETS['bearer']}",
            "--json",
            "-L",
            "DEBUG",
            "-s",
            "SSE_RETRY_DELAY=0.01",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 3
    assert leaks(result.stdout + result.stderr) == []


def test_masks_and_redaction() -> None:
    assert (
        mask_url("https://u:pw@h/s?token=abc&n=1&API_KEY=x")
        == "https://h/s?token=***&n=1&API_KEY=***"
    )
    secrets = Secrets()
    secrets.add_request(
        "https://h/s?key=Gem1n1Key", {b"X-Api-Key": [b"Ant0pic-Key-1"]}, "http://u:Pr0xyPass@p:1"
    )
    text = "tried https://h/s?key=Gem1n1Key with Ant0pic-Key-1 via Pr0xyPass; ok"
    assert secrets.redact(text) == "tried https://h/s?key=*** with *** via ***; ok"


def test_credential_names_are_recognised_by_their_words() -> None:
    url = "https://h/s?auth_token=a1&private-token=a2&accessToken=a3&jwt=a4&keyword=python&n=1"
    assert mask_url(url) == (
        "https://h/s?auth_token=***&private-token=***&accessToken=***&jwt=***&keyword=python&n=1"
    )


def test_every_log_record_is_redacted_whatever_handler_takes_it() -> None:
    import io
    import logging

    from scrapy_sse.secrets import redact_logs, stop_redacting

    secrets = Secrets()
    secrets.add("Bearer Tok3nForLogs")
    stream = io.StringIO()
    logger = logging.getLogger("scrapy.test_secrets")
    handler = logging.StreamHandler(stream)  # (a handler of its own, not the root's)
    logger.addHandler(handler)
    logger.propagate = False
    redact_logs(secrets)
    try:
        logger.warning("sent %s to %s", "Tok3nForLogs", "https://h/s?sig=abcdef123")
        try:
            raise ValueError("refused Tok3nForLogs")
        except ValueError:
            logger.exception("failed")
    finally:
        stop_redacting(secrets)
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "Tok3nForLogs" not in text and "abcdef123" not in text
    assert "sent *** to https://h/s?sig=***" in text and "ValueError: refused ***" in text


def test_an_unusable_ca_file_stops_the_crawl_at_start(
    tmp_path: Path, sse_server: SSEServer
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    result = run_crawl(
        "PerEvent",
        args={"url": sse_server.url("/stream?n=1")},
        settings={"SSE_TLS_CA_FILE": str(bad)},
    )
    assert (
        result.returncode != 0 and "SSE_TLS_CA_FILE" in result.log and "holds no PEM" in result.log
    )


def test_only_an_explicit_no_turns_verification_off() -> None:
    from scrapy_sse.settings import verify_wanted

    assert [verify_wanted(v) for v in (False, 0, "0", "false", "No", "off")] == [False] * 6
    assert [verify_wanted(v) for v in (True, None, "", "required", "ture", 1)] == [True] * 6
