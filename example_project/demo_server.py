"""Offline demo server for the ``sse_demo`` example project.

It imitates, on 127.0.0.1, the three kinds of Server-Sent Events producers the
example spiders are written for, so the whole project can be exercised without
network access:

* ``GET /v2/stream/recentchange`` -- shaped like Wikimedia EventStreams
  (``event: message``, Kafka-style JSON ``id:`` lines, recentchange JSON data).
* ``GET /prices`` -- a price ticker (``event: price_update``), with a
  ``retry:`` hint at the start and ``: keep-alive`` comments.
* ``POST /v1/chat/completions`` -- an OpenAI-style streamed chat completion
  ending with ``data: [DONE]``.
* ``POST /v1/responses`` (OpenAI Responses; ``GET /v1/responses/{id}?stream=true&
  starting_after=N`` resumes a background one), ``POST /v1/messages`` (Anthropic) and
  ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (Gemini): the same
  answers in those formats (see ``llm_frames.py``). An ``X-Demo-Scenario`` header (or
  ``"demo_scenario"`` in the body) asks for tool calls, two choices, thinking, a
  mid-stream error or a dropped connection (``drop_once``: the first time only). With
  ``llm_streams_per_key`` set, a key with more streams open answers 429 with
  ``retry-after-ms``, as providers do.

Only the standard library (asyncio) is used so that it runs anywhere the example
runs.  Every stream is a pure function of the seed and the event offset, which
makes runs reproducible and lets ``Last-Event-ID`` resume exactly where a client
left off.  Endless streams stop by themselves after a safety cap (10 minutes by
default) so a forgotten client cannot keep the server busy forever.

Run it by itself::

    python example_project/demo_server.py --port 8765

or from Python (tests, ``run_demo.py``)::

    base_url, stop = serve_in_thread(port=0)
    ...
    stop()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import random
import re
import string
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

try:  # run as a script from example_project/, or imported as example_project.demo_server
    from llm_frames import DROP, SCENARIOS, Frame, frames
except ImportError:  # pragma: no cover - depends on how it is imported
    from .llm_frames import DROP, SCENARIOS, Frame, frames

logger = logging.getLogger("sse_demo.server")

#: A fixed "wall clock" origin for generated timestamps (2024-05-01T12:00:00Z):
#: real time would make runs differ, and reproducibility matters more here.
BASE_EPOCH = 1_714_564_800
WIKI_TOPIC = "eqiad.mediawiki.recentchange"
#: Ids above this were never issued within the safety cap, and replaying the
#: price random walk that far would block the event loop, so they are ignored.
MAX_PRICE_RESUME_ID = 200_000
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
REQUEST_READ_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo server; the defaults give the documented behaviour."""

    seed: int = 42
    #: Safety cap on the lifetime of one endless stream, in seconds.
    max_stream_seconds: float = 600.0
    wiki_events_per_second: float = 15.0
    price_events_per_second: float = 20.0
    keepalive_seconds: float = 5.0
    #: Delay between streamed chat chunks, in seconds.
    chat_chunk_delay: float = 0.02
    #: Every Nth recentchange event carries unparsable data (0 disables), to
    #: show how a spider copes with a broken producer.
    wiki_malformed_every: int = 0
    #: Every Nth recentchange event is a Wikimedia "canary" event (0 disables);
    #: the real feed emits those and consumers are expected to drop them.
    wiki_canary_every: int = 150
    #: Most completion streams open at once per API key (0: no limit); beyond it, 429.
    llm_streams_per_key: int = 0
    #: Milliseconds a 429 asks the client to wait (``retry-after-ms``).
    llm_retry_after_ms: int = 200


# --------------------------------------------------------------------------
# Wikimedia recentchange events
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wiki:
    dbname: str
    domain: str
    weight: int
    titles: tuple[str, ...]
    ns_prefix: dict[int, str] = field(default_factory=dict)


_EN_NS = {1: "Talk:", 2: "User:", 3: "User talk:", 4: "Wikipedia:", 6: "File:", 14: "Category:"}
_WIKIS: tuple[_Wiki, ...] = (
    _Wiki(
        "enwiki",
        "en.wikipedia.org",
        30,
        (
            "Taylor Swift",
            "2024 Summer Olympics",
            "Solar eclipse of April 8, 2024",
            "List of highest-grossing films",
            "Python (programming language)",
            "Battle of Hastings",
            "Mount Kilimanjaro",
            "The Beatles",
            "Climate change",
            "Ada Lovelace",
            "Manchester United F.C.",
            "Great Barrier Reef",
            "Artificial intelligence",
            "Treaty of Versailles",
        ),
        _EN_NS,
    ),
    _Wiki(
        "wikidatawiki",
        "www.wikidata.org",
        25,
        ("Q42", "Q90", "Q64", "Q1339", "Q7259", "Q11660", "Q5582", "Q937", "Q12418", "Q2013"),
        {1: "Talk:", 2: "User:", 4: "Wikidata:", 14: "Category:", 120: "Property:"},
    ),
    _Wiki(
        "commonswiki",
        "commons.wikimedia.org",
        15,
        (
            "File:Eiffel Tower at dawn.jpg",
            "File:Red fox (Vulpes vulpes) in snow.jpg",
            "File:Aurora borealis over Tromsø.jpg",
            "File:Map of Europe 1815.svg",
            "File:Kyoto Fushimi Inari torii.jpg",
            "File:Saturn during Equinox.jpg",
        ),
        {1: "Talk:", 2: "User:", 4: "Commons:", 14: "Category:"},
    ),
    _Wiki(
        "dewiki",
        "de.wikipedia.org",
        8,
        ("Berliner Mauer", "Johann Sebastian Bach", "Bundestagswahl 2025", "Zugspitze", "Goethe"),
        {1: "Diskussion:", 2: "Benutzer:", 4: "Wikipedia:", 6: "Datei:", 14: "Kategorie:"},
    ),
    _Wiki(
        "frwiki",
        "fr.wikipedia.org",
        7,
        ("Tour Eiffel", "Victor Hugo", "Révolution française", "Mont Blanc", "Marie Curie"),
        {1: "Discussion:", 2: "Utilisateur:", 4: "Wikipédia:", 6: "Fichier:", 14: "Catégorie:"},
    ),
    _Wiki(
        "jawiki",
        "ja.wikipedia.org",
        6,
        ("東京都", "富士山", "ポケットモンスター", "新幹線", "源氏物語"),
        {1: "ノート:", 2: "利用者:", 4: "Wikipedia:", 6: "ファイル:", 14: "Category:"},
    ),
    _Wiki(
        "eswiki",
        "es.wikipedia.org",
        5,
        ("Gabriel García Márquez", "Machu Picchu", "Copa América 2024", "Frida Kahlo"),
        {1: "Discusión:", 2: "Usuario:", 4: "Wikipedia:", 6: "Archivo:", 14: "Categoría:"},
    ),
    _Wiki(
        "ruwiki",
        "ru.wikipedia.org",
        4,
        ("Москва", "Лев Толстой", "Байкал", "Транссибирская магистраль"),
        {1: "Обсуждение:", 2: "Участник:", 4: "Википедия:", 6: "Файл:", 14: "Категория:"},
    ),
    _Wiki(
        "enwiktionary",
        "en.wiktionary.org",
        3,
        ("serendipity", "eventual", "stream", "ephemeral", "kettle"),
        {1: "Talk:", 2: "User:", 4: "Wiktionary:", 14: "Category:"},
    ),
)
_WIKI_WEIGHTS = [w.weight for w in _WIKIS]

_HUMANS = (
    "Materialscientist",
    "Ymblanter",
    "Jmabel",
    "Ser Amantio di Nicolao",
    "Koavf",
    "Minorax",
    "Liz",
    "Sänger S.G.",
    "Jean-Jacques Georges",
    "Marco Aurelio",
    "Kurousagi",
    "GrapesOfWrath",
    "Aubreyhodges",
    "TheAafi",
    "Hoary",
)
_BOTS = (
    "InternetArchiveBot",
    "Cewbot",
    "SchlurcherBot",
    "Citation bot",
    "QuickStatementsBot",
    "Edoderoobot",
    "AnomieBOT",
    "Emijrpbot",
)
_COMMENTS = (
    "copyedit",
    "/* History */ expanded with sources",
    "Reverted edits by {other} ([[User talk:{other}|talk]]) to last version by {user}",
    "Rescuing 2 sources and tagging 0 as dead.) #IABot (v2.0.9.5",
    "/* wbsetclaim-create:2||1 */ [[Property:P31]]: [[Q5]]",
    "Added [[Category:Living people]]",
    "fix typo",
    "Alter: title, template type. Add: doi. | [[:en:WP:UCB|Use this bot]].",
    "Updating statistics",
    "",
)
_CATEGORIES = (
    "Living people",
    "Articles with short description",
    "CS1 maint: multiple names: authors list",
    "Pages using infobox person with unknown parameters",
    "Media needing categories",
)
_LOG_ACTIONS = (
    ("patrol", "patrol", "{user} marked revision {rev} of page [[{title}]] patrolled"),
    ("thanks", "thank", "{user} thanked {other}"),
    ("newusers", "create", "User account {user} was created"),
    ("upload", "upload", "{user} uploaded [[{title}]]"),
    ("move", "move", "{user} moved page [[{title}]] to [[{title} (disambiguation)]]"),
    ("block", "block", "{user} blocked {other} with an expiration time of 31 hours"),
    ("delete", "delete", "{user} deleted page [[{title}]]"),
    ("protect", "protect", "{user} protected [[{title}]] [edit=autoconfirmed] (expires in 1 week)"),
)


def _fake_ip(rng: random.Random) -> str:
    if rng.random() < 0.3:
        groups = [f"{rng.randrange(0x10000):x}" for _ in range(4)]
        return "2a02:" + ":".join(groups) + "::" + f"{rng.randrange(0x10000):x}"
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def _iso(ts: float) -> str:
    moment = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def wiki_event_id(offset: int) -> str:
    """The ``id:`` line value Wikimedia EventStreams sends (Kafka assignments)."""
    return json.dumps(
        [{"topic": WIKI_TOPIC, "partition": 0, "offset": offset}], separators=(",", ":")
    )


def wiki_resume_offset(last_event_id: str | None) -> int:
    """Offset to continue from, given a client's ``Last-Event-ID`` (0 if unusable)."""
    if not last_event_id:
        return 0
    try:
        assignments = json.loads(last_event_id)
    except ValueError:
        return 0
    if not isinstance(assignments, list):
        return 0
    offsets = [
        a["offset"]
        for a in assignments
        if isinstance(a, dict)
        and a.get("topic") == WIKI_TOPIC
        and isinstance(a.get("offset"), int)
        and not isinstance(a.get("offset"), bool)
        and a["offset"] >= 0
    ]
    return max(offsets) + 1 if offsets else 0


def wiki_event_data(seed: int, offset: int, config: DemoConfig | None = None) -> str:
    """Return the ``data:`` payload of the recentchange event at *offset*.

    A fresh RNG per offset makes every event independent of the ones before it,
    so a resumed stream produces exactly the events a continuous one would.
    """
    config = config or DemoConfig(seed=seed)
    rng = random.Random(f"{seed}:wiki:{offset}")
    ts = BASE_EPOCH + offset / config.wiki_events_per_second
    if config.wiki_malformed_every and offset % config.wiki_malformed_every == 0 and offset:
        # A truncated JSON document, as produced by a buggy upstream.
        return '{"$schema":"/mediawiki/recentchange/1.0.0","meta":{"uri":'
    meta: dict[str, Any] = {
        "uri": "",
        "request_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "dt": _iso(ts),
        "domain": "",
        "stream": "mediawiki.recentchange",
        "topic": WIKI_TOPIC,
        "partition": 0,
        "offset": offset,
    }
    if config.wiki_canary_every and offset % config.wiki_canary_every == 7:
        meta.update(uri="https://canary/Wikimedia_canary_event", domain="canary")
        return json.dumps(
            {"$schema": "/mediawiki/recentchange/1.0.0", "meta": meta}, ensure_ascii=False
        )

    wiki = rng.choices(_WIKIS, weights=_WIKI_WEIGHTS)[0]
    kind = rng.choices(("edit", "categorize", "log", "new"), weights=(62, 20, 10, 8))[0]
    is_bot = rng.random() < 0.22
    if is_bot:
        user = rng.choice(_BOTS)
    elif rng.random() < 0.15:
        user = _fake_ip(rng)
    else:
        user = rng.choice(_HUMANS)
    other = rng.choice(_HUMANS)

    namespace = rng.choices((0, 1, 2, 4, 14), weights=(80, 6, 6, 3, 5))[0]
    if namespace not in wiki.ns_prefix:
        namespace = 0
    base_title = rng.choice(wiki.titles)
    if kind == "categorize":
        namespace = 14
        base_title = rng.choice(_CATEGORIES)
    if namespace and base_title.split(":", 1)[0] + ":" in wiki.ns_prefix.values():
        namespace = 0  # e.g. "File:..." titles on Commons are already prefixed
    title = wiki.ns_prefix.get(namespace, "") + base_title
    rcid = 1_700_000_000 + offset * 7 + rng.randrange(7)
    rev_old = 1_220_000_000 + rng.randrange(10_000_000)
    rev_new = rev_old + rng.randrange(1, 50_000)
    server_url = f"https://{wiki.domain}"
    title_url = f"{server_url}/wiki/{title.replace(' ', '_')}"
    meta.update(uri=title_url, domain=wiki.domain)

    if kind == "categorize":
        comment = (
            f"[[:{rng.choice(wiki.titles)}]] {rng.choice(('added to', 'removed from'))} category"
        )
    elif kind == "new":
        comment = rng.choice(("Created page", "New article", "stub", ""))
    else:
        comment = rng.choice(_COMMENTS).format(user=user, other=other)

    data: dict[str, Any] = {
        "$schema": "/mediawiki/recentchange/1.0.0",
        "meta": meta,
        "id": rcid,
        "type": kind,
        "namespace": namespace,
        "title": title,
        "title_url": title_url,
        "comment": comment,
        "timestamp": int(ts),
        "user": user,
        "bot": is_bot,
    }
    if kind in ("edit", "new"):
        old_len = rng.randrange(200, 120_000)
        data["minor"] = kind == "edit" and rng.random() < 0.3
        data["patrolled"] = rng.random() < 0.7
        data["length"] = (
            {"new": rng.randrange(40, 8_000)}
            if kind == "new"
            else {"old": old_len, "new": max(0, old_len + rng.randrange(-500, 1_500))}
        )
        data["revision"] = {"new": rev_new} if kind == "new" else {"old": rev_old, "new": rev_new}
        if kind == "edit":
            data["notify_url"] = f"{server_url}/w/index.php?diff={rev_new}&oldid={rev_old}"
    elif kind == "log":
        log_type, log_action, template = rng.choice(_LOG_ACTIONS)
        data["log_id"] = 160_000_000 + offset
        data["log_type"] = log_type
        data["log_action"] = log_action
        data["log_params"] = (
            {"curid": rng.randrange(1, 10**8), "previd": rev_old} if log_type == "patrol" else []
        )
        data["log_action_comment"] = template.format(
            user=user, other=other, title=title, rev=rev_new
        )
    data.update(
        server_url=server_url,
        server_name=wiki.domain,
        server_script_path="/w",
        wiki=wiki.dbname,
        parsedcomment=comment.replace("[[", "").replace("]]", ""),
    )
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------
# Price ticker
# --------------------------------------------------------------------------

PRICE_SYMBOLS: dict[str, float] = {
    "AAPL": 189.84,
    "MSFT": 415.13,
    "GOOG": 172.35,
    "AMZN": 183.63,
    "NVDA": 905.17,
    "TSLA": 176.75,
}
#: Every Nth ticker event is a ``market_status`` event rather than a price.
MARKET_STATUS_EVERY = 50


class PriceTape:
    """Deterministic random walk of a few symbols, addressable by event id.

    Event ``n`` depends on every earlier step, so resuming after id ``n``
    replays the walk up to ``n`` (bounded by :data:`MAX_PRICE_RESUME_ID`).
    """

    def __init__(self, seed: int, events_per_second: float = 20.0) -> None:
        self._rng = random.Random(f"{seed}:prices")
        self._symbols = list(PRICE_SYMBOLS)
        self._prices = dict(PRICE_SYMBOLS)
        self._interval_ms = 1000.0 / events_per_second
        self.next_id = 1

    def advance_to(self, event_id: int) -> None:
        """Skip (compute and drop) events so that the next one has *event_id*."""
        target = min(event_id, MAX_PRICE_RESUME_ID)
        for _ in range(max(0, target - self.next_id)):
            self.next_event()

    def next_event(self) -> tuple[int, str, dict[str, Any]]:
        """Return ``(id, event type, data)`` of the next event."""
        event_id = self.next_id
        self.next_id += 1
        ts = int(BASE_EPOCH * 1000 + event_id * self._interval_ms)
        if event_id % MARKET_STATUS_EVERY == 0:
            return event_id, "market_status", {"status": "open", "ts": ts}
        symbol = self._rng.choice(self._symbols)
        shock = self._rng.gauss(0.0, 1.0)
        price = max(1.0, self._prices[symbol] * math.exp(0.0009 * shock))
        self._prices[symbol] = price
        return event_id, "price_update", {"symbol": symbol, "price": round(price, 2), "ts": ts}


def price_resume_id(last_event_id: str | None) -> int:
    """The id to start from after a client's ``Last-Event-ID`` (1 if unusable)."""
    if last_event_id and last_event_id.strip().isdigit():
        last = int(last_event_id.strip())
        if last < MAX_PRICE_RESUME_ID:
            return last + 1
    return 1


# --------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------

CHAT_ANSWERS: tuple[str, ...] = (
    "Server-Sent Events let a server push a stream of text events over one long-lived "
    "HTTP response. Each event is a few lines such as event, data and id, separated by "
    "a blank line, and a client that reconnects sends Last-Event-ID to resume.",
    "Scrapy can consume a streaming response incrementally: every event becomes a "
    "callback invocation, so items flow into pipelines while the connection stays open.",
    "A price ticker, a feed of wiki edits and a token stream from a language model all "
    "look the same on the wire: text/event-stream, one event at a time.",
)
_MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


def openai_error(message: str, type_: str = "invalid_request_error", **extra: Any) -> bytes:
    """An error body in OpenAI's shape, so clients' error handling can be tried."""
    error: dict[str, Any] = {"message": message, "type": type_, "param": None, "code": None}
    error.update(extra)
    return json.dumps({"error": error}).encode()


def chat_answer(seed: int, messages: list[Any]) -> tuple[str, str]:
    """Pick the canned answer for a conversation; return ``(completion id, text)``."""
    last_user = ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            last_user = str(message.get("content", ""))
            break
    rng = random.Random(f"{seed}:chat:{last_user}")
    completion_id = "chatcmpl-" + "".join(rng.choices(string.ascii_letters + string.digits, k=29))
    return completion_id, rng.choice(CHAT_ANSWERS)


def chat_tokens(text: str) -> list[str]:
    """Split an answer the way models stream it: words with their leading space."""
    return re.findall(r"\s*\S+", text)


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
}


class BadRequestError(Exception):
    """The client sent something this tiny HTTP implementation will not serve."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> HttpRequest:
    """Parse one HTTP/1.x request (headers and a Content-Length body)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise BadRequestError(400, "request head too large") from exc
    if len(head) > MAX_HEADER_BYTES:
        raise BadRequestError(400, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise BadRequestError(400, "malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequestError(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequestError(411, "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError as exc:
        raise BadRequestError(400, "bad Content-Length") from exc
    if length < 0 or length > MAX_BODY_BYTES:
        raise BadRequestError(413, "request body too large")
    body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return HttpRequest(method.upper(), parts.path or "/", parts.query, version, headers, body)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_body(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra_headers: dict[str, str] | None = None,
) -> None:
    """Send a complete (non-streamed) response and let the caller close."""
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(extra_headers or {}),
    }
    writer.write(_head(status, headers) + body)
    await writer.drain()


class EventStreamWriter:
    """Writes ``text/event-stream`` frames, chunked on HTTP/1.1.

    Chunked encoding is what real SSE servers send, and it is what exercises a
    client's incremental parsing; HTTP/1.0 clients get a close-delimited body.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: str):
        self._reader = reader
        self._writer = writer
        self._chunked = version.upper() != "HTTP/1.0"

    async def start(self) -> None:
        headers = {
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Connection": "close",
        }
        if self._chunked:
            headers["Transfer-Encoding"] = "chunked"
        self._writer.write(_head(200, headers))
        await self._writer.drain()

    @property
    def client_gone(self) -> bool:
        """True once the peer closed its side (our reader saw EOF) or we did."""
        return self._writer.is_closing() or self._reader.at_eof()

    async def send(self, text: str) -> None:
        payload = text.encode("utf-8")
        if self._chunked:
            payload = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
        self._writer.write(payload)
        await self._writer.drain()

    async def event(self, data: str, event: str | None = None, event_id: str | None = None) -> None:
        lines = []
        if event is not None:
            lines.append(f"event: {event}")
        if event_id is not None:
            lines.append(f"id: {event_id}")
        lines += [f"data: {line}" for line in data.split("\n")]
        await self.send("\n".join(lines) + "\n\n")

    async def finish(self) -> None:
        if self._chunked and not self._writer.is_closing():
            self._writer.write(b"0\r\n\r\n")
            await self._writer.drain()


class Pacer:
    """Sleeps so that ticks happen at a steady rate without drifting.

    Scheduling against the loop clock (instead of sleeping a fixed interval
    after each write) keeps the advertised rate even when writes take time.
    """

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.time()

    async def tick(self) -> None:
        self._next += self._interval
        delay = self._next - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            self._next = self._loop.time()  # fell far behind (slow client): don't burst


class DemoServer:
    """The asyncio server behind both the CLI and :func:`serve_in_thread`."""

    def __init__(self, config: DemoConfig | None = None) -> None:
        self.config = config or DemoConfig()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stop_requested: asyncio.Event | None = None
        #: Completion streams open per API key (for llm_streams_per_key), and the most
        #: that ever were at once (a test reads it).
        self.open_per_key: dict[str, int] = {}
        self.most_open_per_key = 0
        self.rejected_429 = 0
        #: Background Responses' events by id, for resumption (bounded).
        self._background: dict[str, list[Frame]] = {}
        #: Request bodies already answered with a drop (``drop_once``; bounded).
        self._dropped_once: set[bytes] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; return the bound port."""
        self._stop_requested = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEADER_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    def request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve_until_stopped(self) -> None:
        """Run until :meth:`request_stop`, then close every open stream."""
        assert self._stop_requested is not None and self._server is not None
        await self._stop_requested.wait()
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=SHUTDOWN_TIMEOUT)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), SHUTDOWN_TIMEOUT)

    # -- connection handling ------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        peer = writer.get_extra_info("peername")
        try:
            try:
                request = await asyncio.wait_for(read_request(reader), REQUEST_READ_TIMEOUT)
            except BadRequestError as exc:
                await send_body(writer, exc.status, openai_error(str(exc)))
                return
            except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                return
            logger.info("%s %s from %s", request.method, request.path, peer)
            await self._route(request, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # client went away, or the server is shutting down
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _route(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        routes: dict[str, tuple[str, Callable[..., Any]]] = {
            "/v2/stream/recentchange": ("GET", self._recentchange),
            "/prices": ("GET", self._prices),
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/responses": ("POST", self._responses),
            "/v1/messages": ("POST", self._messages),
        }
        if request.path.startswith("/v1beta/models/") and request.path.endswith(
            ":streamGenerateContent"
        ):
            routes[request.path] = ("POST", self._gemini)
        if request.path.startswith("/v1/responses/"):
            routes[request.path] = ("GET", self._responses_resume)
        if request.path == "/":
            index = {
                "endpoints": {path: method for path, (method, _) in routes.items()},
                "llm": {
                    "most_open_per_key": self.most_open_per_key,
                    "rejected_429": self.rejected_429,
                },
            }
            await send_body(writer, 200, json.dumps(index).encode())
            return
        if request.path not in routes:
            await send_body(writer, 404, openai_error(f"no route for {request.path}"))
            return
        method, handler = routes[request.path]
        if request.method != method:
            await send_body(
                writer,
                405,
                openai_error(f"use {method} for {request.path}"),
                extra_headers={"Allow": method},
            )
            return
        await handler(request, reader, writer)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.config.max_stream_seconds

    async def _recentchange(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        offset = wiki_resume_offset(request.headers.get("last-event-id"))
        stream = EventStreamWriter(reader, writer, request.version)
        await stream.start()
        pacer = Pacer(self.config.wiki_events_per_second)
        deadline = self._deadline()
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and not stream.client_gone:
            data = wiki_event_data(self.config.seed, offset, self.config)
            await stream.event(data, event="message", event_id=wiki_event_id(offset))
            offset += 1
            await pacer.tick()
        await stream.finish()

    async def _prices(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        tape = PriceTape(self.config.seed, self.config.price_events_per_second)
        tape.advance_to(price_resume_id(request.headers.get("last-event-id")))
        stream = EventStreamWriter(reader, writer, request.version)
        await stream.start()
        await stream.send("retry: 2000\n\n")
        pacer = Pacer(self.config.price_events_per_second)
        loop = asyncio.get_running_loop()
        deadline = self._deadline()
        next_keepalive = loop.time() + self.config.keepalive_seconds
        while loop.time() < deadline and not stream.client_gone:
            event_id, event_type, data = tape.next_event()
            await stream.event(json.dumps(data), event=event_type, event_id=str(event_id))
            if loop.time() >= next_keepalive:
                await stream.send(": keep-alive\n\n")
                next_keepalive += self.config.keepalive_seconds
            await pacer.tick()
        await stream.finish()

    async def _chat(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await send_body(
                writer,
                401,
                openai_error(_MISSING_KEY_MESSAGE),
                extra_headers={"WWW-Authenticate": 'Bearer realm="OpenAI API"'},
            )
            return
        try:
            payload = json.loads(request.body or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
            await send_body(
                writer, 400, openai_error("'messages' is a required property", param="messages")
            )
            return
        model = str(payload.get("model") or "gpt-4o-mini")
        completion_id, answer = chat_answer(self.config.seed, payload["messages"])
        tokens = chat_tokens(answer)
        finish_reason = "stop"
        max_tokens = payload.get("max_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(tokens):
            tokens, finish_reason = tokens[:max_tokens], "length"
        usage = {
            "prompt_tokens": sum(len(str(m).split()) for m in payload["messages"]),
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {
            "id": completion_id,
            "created": BASE_EPOCH,
            "model": model,
            "system_fingerprint": "fp_demo0000",
        }
        if not payload.get("stream"):
            message = {"role": "assistant", "content": "".join(tokens)}
            body = {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": usage,
            }
            await send_body(writer, 200, json.dumps(body).encode())
            return

        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        await self._stream_llm(
            request,
            reader,
            writer,
            "openai-chat",
            tokens=tokens,
            model=model,
            include_usage=include_usage,
        )

    # -- the other LLM formats ----------------------------------------------------------

    async def _responses(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        payload = await self._llm_payload(request, writer, "input")
        if payload is not None:
            tokens = self._answer(payload.get("input"), payload.get("max_output_tokens"))
            model = str(payload.get("model") or "gpt-4.1-mini")
            background = bool(payload.get("background"))
            await self._stream_llm(
                request,
                reader,
                writer,
                "openai-responses",
                tokens=tokens,
                model=model,
                background=background,
            )

    async def _messages(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        payload = await self._llm_payload(request, writer, "messages")
        if payload is not None:
            tokens = self._answer(payload.get("messages"), payload.get("max_tokens"))
            model = str(payload.get("model") or "claude-sonnet-4-5")
            await self._stream_llm(request, reader, writer, "anthropic", tokens=tokens, model=model)

    async def _gemini(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        payload = await self._llm_payload(request, writer, "contents")
        if payload is not None:
            config = payload.get("generationConfig") or {}
            contents = [
                {"role": "user", "content": " ".join(p.get("text", "") for p in c.get("parts", []))}
                for c in payload.get("contents") or ()
                if isinstance(c, dict)
            ]
            tokens = self._answer(contents, config.get("maxOutputTokens"))
            model = request.path.rsplit("/", 1)[-1].split(":", 1)[0]
            await self._stream_llm(request, reader, writer, "gemini", tokens=tokens, model=model)

    async def _responses_resume(
        self, request: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A background response's events after ``starting_after`` (OpenAI's resume)."""
        query = parse_qs(request.query)
        events = self._background.get(request.path.rsplit("/", 1)[-1])
        if events is None or query.get("stream") != ["true"]:
            await send_body(writer, 404, openai_error("No response found with that id"))
            return
        after = int((query.get("starting_after") or ["-1"])[0])
        stream = EventStreamWriter(reader, writer, request.version)
        await stream.start()
        for kind, data in events[after + 1 :]:
            await asyncio.sleep(self.config.chat_chunk_delay)
            await stream.event(data, event=kind or None)
        await stream.finish()

    def _answer(self, messages: Any, limit: Any) -> list[str]:
        """The canned answer's words for a conversation (``limit``: most words)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        _, answer = chat_answer(self.config.seed, messages if isinstance(messages, list) else [])
        tokens = chat_tokens(answer)
        if isinstance(limit, int) and 0 < limit < len(tokens):
            tokens = tokens[:limit]
        return tokens

    async def _llm_payload(
        self, request: HttpRequest, writer: asyncio.StreamWriter, required: str
    ) -> dict[str, Any] | None:
        """The JSON body, or ``None`` after answering 401/400 as the APIs do."""
        query = parse_qs(request.query)
        key = (
            request.headers.get("authorization", "").partition(" ")[2]
            or request.headers.get("x-api-key", "")
            or request.headers.get("x-goog-api-key", "")
            or (query.get("key") or [""])[0]
        )
        if not key.strip():
            await send_body(writer, 401, openai_error(_MISSING_KEY_MESSAGE))
            return None
        try:
            payload = json.loads(request.body or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or required not in payload:
            await send_body(writer, 400, openai_error(f"'{required}' is a required property"))
            return None
        return payload

    async def _stream_llm(
        self,
        request: HttpRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fmt: str,
        *,
        tokens: list[str],
        model: str,
        include_usage: bool = True,
        background: bool = False,
    ) -> None:
        """Stream one completion in ``fmt``, the scenario the client asked for."""
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            payload = {}
        scenario = request.headers.get("x-demo-scenario") or payload.get("demo_scenario") or "text"
        if scenario == "drop_once":  # a flaky network: this body drops once, then streams
            first = request.body not in self._dropped_once
            if first and len(self._dropped_once) < 100_000:
                self._dropped_once.add(request.body)
            scenario = "drop" if first else "text"
        if scenario not in SCENARIOS:
            await send_body(writer, 400, openai_error(f"unknown scenario {scenario!r}"))
            return
        key = (
            request.headers.get("authorization")
            or request.headers.get("x-api-key")
            or request.headers.get("x-goog-api-key")
            or request.query
        )
        limit = self.config.llm_streams_per_key
        if limit and self.open_per_key.get(key, 0) >= limit:
            self.rejected_429 += 1
            await send_body(
                writer,
                429,
                openai_error("Too many concurrent requests for this key", "rate_limit_error"),
                extra_headers={
                    "retry-after-ms": str(self.config.llm_retry_after_ms),
                    "Retry-After": "1",
                },
            )
            return
        seed = f"{self.config.seed}:{fmt}:{request.body.decode('utf-8', 'replace')}"
        events = frames(
            fmt,
            tokens,
            scenario=scenario,
            model=model,
            seed=seed,
            include_usage=include_usage,
            background=background,
        )
        if background and scenario == "drop":
            # Generated whole, cut on this connection: the rest waits for a resume.
            cut = events.index(DROP)
            whole = frames(fmt, tokens, scenario="text", model=model, seed=seed, background=True)
            events = [*whole[:cut], DROP]
            self._background[json.loads(whole[0][1])["response"]["id"]] = whole
            while len(self._background) > 1000:
                del self._background[next(iter(self._background))]
        self.open_per_key[key] = self.open_per_key.get(key, 0) + 1
        self.most_open_per_key = max(self.most_open_per_key, self.open_per_key[key])
        try:
            stream = EventStreamWriter(reader, writer, request.version)
            await stream.start()
            for kind, data in events:  # bounded by the canned answer's length
                if stream.client_gone:
                    return
                if (kind, data) == DROP:
                    writer.transport.abort()  # no end of body: the connection breaks
                    return
                await asyncio.sleep(self.config.chat_chunk_delay)
                await stream.event(data, event=kind or None)
            await stream.finish()
        finally:
            self.open_per_key[key] -= 1


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def serve_in_thread(
    port: int = 0, *, host: str = "127.0.0.1", config: DemoConfig | None = None
) -> tuple[str, Callable[[], None]]:
    """Run the demo server on a background thread with its own event loop.

    Returns ``(base_url, stop)``; ``stop()`` closes every stream and joins the
    thread, and is safe to call more than once.  A separate loop keeps the
    server independent of whatever loop or reactor the caller (Scrapy) runs.
    """
    server = DemoServer(config)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    started: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["port"] = loop.run_until_complete(server.start(host, port))
        except BaseException as exc:
            started["error"] = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_until_complete(server.serve_until_stopped())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="sse-demo-server", daemon=True)
    thread.start()
    if not ready.wait(timeout=10.0):
        raise RuntimeError("demo server did not start within 10 s")
    if "error" in started:
        raise RuntimeError(f"demo server failed to start: {started['error']!r}")

    def stop() -> None:
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(server.request_stop)
            thread.join(timeout=SHUTDOWN_TIMEOUT + 5.0)

    display_host = f"[{host}]" if ":" in host else host
    return f"http://{display_host}:{started['port']}", stop


async def _main(args: argparse.Namespace) -> None:
    config = DemoConfig(
        seed=args.seed,
        max_stream_seconds=args.max_stream_seconds,
        wiki_malformed_every=args.malformed_every,
        chat_chunk_delay=args.chat_chunk_delay,
        llm_streams_per_key=args.llm_streams_per_key,
    )
    server = DemoServer(config)
    port = await server.start(args.host, args.port)
    base = f"http://{args.host}:{port}"
    print(f"SSE demo server on {base}  (seed {config.seed}; Ctrl-C to stop)", flush=True)
    print(f"  GET  {base}/v2/stream/recentchange", flush=True)
    print(f"  GET  {base}/prices", flush=True)
    print(f"  POST {base}/v1/chat/completions", flush=True)
    print(f"  POST {base}/v1/responses", flush=True)
    print(f"  POST {base}/v1/messages", flush=True)
    print(f"  POST {base}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", flush=True)
    await server.serve_until_stopped()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--max-stream-seconds", type=float, default=600.0, help="safety cap per stream"
    )
    parser.add_argument(
        "--malformed-every",
        type=int,
        default=0,
        help="make every Nth recentchange event unparsable (0: never)",
    )
    parser.add_argument(
        "--chat-chunk-delay", type=float, default=0.02, help="seconds between LLM chunks"
    )
    parser.add_argument(
        "--llm-streams-per-key",
        type=int,
        default=0,
        help="answer 429 (retry-after-ms) past this many open completions per key",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
