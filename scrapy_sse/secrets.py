"""Keeping a crawl's credentials out of every record it writes.

Streams carry the most valuable credentials a crawl holds (LLM API keys, feed tokens,
session cookies, proxy passwords), and a record outlives the crawl: a log shipped to a
log service, a row in a table, a dead letter. Two measures, standard library only:

* :func:`mask_url`: a URL with its user info dropped and the values of
  credential-looking query parameters (``SSE_SECRET_PARAMS``: ``key``, ``token``,
  ``api_key``, ``signature``...) replaced by ``***``. Items store it, errors say it.
* :class:`Secrets`: the credentials the crawl's stream requests actually carry
  (``Authorization`` and other key headers, cookie values, a proxy's password, secret
  query values), collected as requests go out, and :meth:`Secrets.redact`, which
  replaces them (and anything shaped like them) in a text. :class:`RedactingFilter`
  applies it to every log record the process's log handlers see, Scrapy's own
  included, at any level, tracebacks included.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

#: Query parameters whose values are credentials (``SSE_SECRET_PARAMS``), lower case.
DEFAULT_SECRET_PARAMS = (
    "key",
    "api_key",
    "apikey",
    "api-key",
    "access_token",
    "refresh_token",
    "id_token",
    "token",
    "auth",
    "authorization",
    "signature",
    "sig",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "session",
    "sessionid",
    "x-api-key",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
)

#: Request headers whose values are credentials, lower case.
SECRET_HEADERS = (
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"x-api-key",
    b"x-goog-api-key",
    b"api-key",
    b"x-auth-token",
)

MASK = "***"
#: Shorter values are not replaced as literals (they would match ordinary words).
MIN_SECRET = 6


def mask_url(url: str, params: Iterable[str] = DEFAULT_SECRET_PARAMS) -> str:
    """``url`` without user info, the values of credential parameters masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    names = {name.lower() for name in params}
    query = parts.query
    if query and names:
        pieces = []
        for piece in query.split("&"):
            name, sep, _ = piece.partition("=")
            pieces.append(f"{name}={MASK}" if sep and unquote(name).lower() in names else piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Secrets:
    """The credentials seen on a crawl's stream requests, and how to redact them."""

    def __init__(self, params: Iterable[str] = DEFAULT_SECRET_PARAMS) -> None:
        self.params = tuple(name.lower() for name in params)
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        names = "|".join(re.escape(name) for name in sorted(self.params, key=len, reverse=True))
        # ``name=value`` in a query string or a form, ``name: value`` in a header dump,
        # ``user:password@`` in a URL: each with what replaces it.
        self._shapes: list[tuple[re.Pattern[str], str]] = [
            (
                re.compile(
                    r"(?i)((?:proxy-)?authorization|cookie|x-api-key|x-goog-api-key|api-key)"
                    r"(['\"]?\s*[:=]\s*\[?b?['\"]?)[^'\"\]\r\n]+"
                ),
                rf"\1\2{MASK}",
            ),
            (re.compile(r"(?i)(\w+://)[^/@\s:]+:[^/@\s]+@"), rf"\1{MASK}@"),
        ]
        if names:
            self._shapes.append(
                (re.compile(rf"(?i)([?&;](?:{names})=)[^&\s'\"#<>]+"), rf"\1{MASK}")
            )

    def add(self, value: str | bytes | None) -> None:
        """Remember one credential (and its parts after a scheme word, URL-quoted)."""
        if value is None:
            return
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        candidates = {text, text.partition(" ")[2], quote(text, safe=""), unquote(text)}
        for candidate in candidates:
            if len(candidate) >= MIN_SECRET and candidate not in self._values:
                self._values.add(candidate)
                self._pattern = None

    def add_request(self, url: str, headers: dict[bytes, list[bytes]], proxy: str | None) -> None:
        """Remember what one request carries: its key headers, cookie values, secret
        query values and proxy password."""
        for name, values in headers.items():
            if name.lower() in SECRET_HEADERS:
                for value in values:
                    self.add(value)
                    if name.lower() == b"cookie":
                        for pair in value.split(b";"):
                            self.add(pair.partition(b"=")[2].strip())
                    scheme, _, credentials = value.partition(b" ")
                    if scheme.lower() == b"basic":  # (user:password, base64-encoded)
                        with contextlib.suppress(ValueError):
                            self.add(base64.b64decode(credentials).partition(b":")[2])
        for param, text in parse_qsl(urlsplit(url).query, keep_blank_values=False):
            if param.lower() in self.params:
                self.add(text)
        for address in (url, proxy or ""):
            password = urlsplit(address).password
            if password:
                self.add(password)

    def redact(self, text: str) -> str:
        """``text`` with every known credential, and anything shaped like one, masked."""
        if self._values:
            if self._pattern is None:
                ordered = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(value) for value in ordered))
            text = self._pattern.sub(MASK, text)
        for shape, replacement in self._shapes:
            text = shape.sub(replacement, text)
        return text


class RedactingFilter(logging.Filter):
    """A log filter that redacts a crawl's credentials from each record's message and
    traceback before any handler formats it."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # (a record whose arguments do not format: left as it is)
            return True
        redacted = self.secrets.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.secrets.redact(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.secrets.redact(record.exc_text)
        return True
