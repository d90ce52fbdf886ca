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
  replaces them (and anything shaped like them) in a text. :func:`redact_logs` applies
  it to every log record of the process as it is made, Scrapy's own included, at any
  level, tracebacks included.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any
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

#: Words that make any parameter name a credential's, once lower-cased with ``-`` and
#: ``_`` removed (``auth_token``, ``private-token``, ``accessToken``, ``client_secret``).
SECRET_WORDS = ("token", "secret", "password", "passwd", "signature", "credential", "jwt")

MASK = "***"
#: Shorter values are not replaced as literals (they would match ordinary words).
MIN_SECRET = 6
#: Literal credentials remembered at most (each rotation of a token adds one).
MAX_SECRETS = 512


def is_secret_param(name: str, params: Iterable[str] = DEFAULT_SECRET_PARAMS) -> bool:
    """Whether a query parameter's value is a credential: its name is one of ``params``,
    or, lower-cased without ``-`` and ``_``, holds one of :data:`SECRET_WORDS` or ends
    in ``key`` (``api-key``, ``accessKey``; not ``keyword``)."""
    lowered = name.lower()
    if lowered in params:
        return True
    plain = lowered.replace("-", "").replace("_", "")
    # (``key`` itself only when listed: it is Gemini's, and also a common word.)
    return (plain.endswith("key") and plain != "key") or any(w in plain for w in SECRET_WORDS)


def mask_url(url: str, params: Iterable[str] = DEFAULT_SECRET_PARAMS) -> str:
    """``url`` without user info, the values of credential parameters masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    names = tuple(name.lower() for name in params)
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, sep, _ = piece.partition("=")
            secret = sep and is_secret_param(unquote(name), names)
            pieces.append(f"{name}={MASK}" if secret else piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Secrets:
    """The credentials seen on a crawl's stream requests, and how to redact them."""

    def __init__(self, params: Iterable[str] = DEFAULT_SECRET_PARAMS) -> None:
        self.params = tuple(name.lower() for name in params)
        self._values: dict[str, None] = {}  # (ordered: the oldest first)
        self._pattern: re.Pattern[str] | None = None
        # ``name=value`` in a query string or a form, ``name: value`` in a header dump,
        # ``user:password@`` in a URL: each with what replaces it.
        self._shapes: list[tuple[re.Pattern[str], str]] = [
            (
                re.compile(
                    r"(?i)((?:proxy-)?authorization|cookie|x-api-key|x-goog-api-key|api-key)"
                    r"(['\"]?\s*[:=]\s*\[?(?:b(?=['\"]))?['\"]?)[^'\"\]\r\n]+"
                ),
                rf"\1\2{MASK}",
            ),
            (re.compile(r"(?i)(\w+://)[^/@\s:]+:[^/@\s]+@"), rf"\1{MASK}@"),
        ]
        # ``name=value`` in a query string or a form, for every name that is a
        # credential's (see is_secret_param).
        self._query = re.compile(r"([?&;])([^=&\s'\"#<>]+)=([^&\s'\"#<>]+)")

    def add(self, value: str | bytes | None) -> None:
        """Remember one credential (and its parts after a scheme word, URL-quoted)."""
        if value is None:
            return
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        candidates = {text, text.partition(" ")[2], quote(text, safe=""), unquote(text)}
        for candidate in candidates:
            if len(candidate) >= MIN_SECRET and candidate not in self._values:
                if len(self._values) >= MAX_SECRETS:  # (rotating tokens: the oldest go)
                    self._values.pop(next(iter(self._values)))
                self._values[candidate] = None
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
            if is_secret_param(param, self.params):
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
        return self._query.sub(self._mask_param, text)

    def redact_record(self, record: logging.LogRecord) -> None:
        """Redact one log record's message and traceback in place."""
        try:
            message = record.getMessage()
        except Exception:  # (arguments that do not format: left as they are)
            return
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            redacted = self.redact(text)
            if redacted != text:  # (a traceback only in its redacted form)
                record.exc_text, record.exc_info = redacted, None

    def _mask_param(self, match: re.Match[str]) -> str:
        if is_secret_param(unquote(match.group(2)), self.params):
            return f"{match.group(1)}{match.group(2)}={MASK}"
        return match.group(0)


class _Redaction:
    """Every crawl's :class:`Secrets`, applied to each log record as it is made.

    A log record factory sees every record of the process, whichever handlers, hooks
    or formatters take it later (Scrapy's root handler, a handler on ``scrapy`` alone,
    a JSON formatter reading ``exc_info``): redacting there leaves nothing to miss.
    Each crawl registers its secrets while it runs (see the extension).
    """

    def __init__(self) -> None:
        self.active: list[Secrets] = []
        self.previous: Callable[..., logging.LogRecord] | None = None

    def make(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        assert self.previous is not None
        record = self.previous(*args, **kwargs)
        for secrets in self.active:
            secrets.redact_record(record)
        return record


_REDACTION = _Redaction()


def redact_logs(secrets: Secrets) -> None:
    """Redact ``secrets`` from every log record of the process from now on."""
    if not _REDACTION.active:
        _REDACTION.previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_REDACTION.make)
    _REDACTION.active.append(secrets)


def stop_redacting(secrets: Secrets) -> None:
    """The crawl of ``secrets`` is over (the factory goes once no crawl needs it)."""
    if secrets in _REDACTION.active:
        _REDACTION.active.remove(secrets)
    if not _REDACTION.active and _REDACTION.previous is not None:
        if logging.getLogRecordFactory() == _REDACTION.make:
            logging.setLogRecordFactory(_REDACTION.previous)
        _REDACTION.previous = None
