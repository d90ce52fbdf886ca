"""Verified TLS for streams (``SSE_TLS_VERIFY``, on by default).

Scrapy does not verify certificates, which suits pages scraped anonymously; a stream
is long-lived and authenticated (an LLM API key, a trading-feed token), and every
standalone SSE client (httpx, urllib3, the OpenAI and Anthropic SDKs) verifies. So a
stream's certificate must chain to a trusted CA (the system's store, or certifi's where
the system has none, plus ``SSE_TLS_CA_FILE``) and name the host. Pages keep Scrapy's
behaviour; ``SSE_TLS_VERIFY = False`` (setting, or ``meta["sse_tls_verify"]``) turns it
off for streams too.

A failed verification is final: it gives up with :data:`~scrapy_sse.policy.TLS_ERROR`
and a sentence naming the host and the reason (an unknown issuer, an expired
certificate, the wrong host), not a reconnect loop. OpenSSL reports only "certificate
verify failed"; the Twisted policy here keeps the verification error of each host's
last handshake to say which.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .errors import SSEStreamError
from .policy import TLS_ERROR

logger = logging.getLogger(__name__)

#: OpenSSL's X509_V_ERR_* codes a verification most often fails with, in words.
VERIFY_ERRORS = {
    2: "the issuer's certificate is unknown",
    9: "the certificate is not valid yet",
    10: "the certificate has expired",
    18: "the certificate is self-signed",
    19: "a self-signed certificate is in the chain (an unknown CA)",
    20: "the issuer is not a trusted CA (unable to get local issuer certificate)",
    21: "the chain cannot be verified (unable to verify the first certificate)",
    23: "the certificate has been revoked",
    62: "the certificate is not for this host",
}


def system_ca_file() -> str | None:
    """A CA bundle to use when the system has no trust store (certifi's, if it is
    installed); ``None`` when the system has one."""
    paths = ssl.get_default_verify_paths()
    if (paths.cafile and os.path.exists(paths.cafile)) or (
        paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath)
    ):
        return None
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The verifying ``ssl`` context of the reactorless (aiohttp) transport."""
    context = ssl.create_default_context(cafile=system_ca_file())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _pem_certificates(path: str) -> list[Certificate]:
    """Every certificate of a PEM bundle."""
    marker = b"-----BEGIN CERTIFICATE-----"
    with open(path, "rb") as bundle:
        blocks = bundle.read().split(marker)[1:]
    return [Certificate.loadPEM(marker + block) for block in blocks]


def trust_root(ca_file: str | None) -> Any:
    """The system's CAs (or certifi's where it has none), plus ``ca_file``."""
    fallback = system_ca_file()
    if not ca_file and not fallback:
        return platformTrust()
    paths = ssl.get_default_verify_paths()
    base = fallback or paths.cafile
    certificates = _pem_certificates(base) if base and os.path.exists(base) else []
    if ca_file:
        certificates += _pem_certificates(ca_file)
    return trustRootFromCertificates(certificates)


@implementer(IOpenSSLClientConnectionCreator)
class _RecordingCreator:
    """Twisted's client TLS options for one host, which also keep the reason a
    verification failed (OpenSSL's error says only "certificate verify failed")."""

    def __init__(self, inner: Any, host: str, errors: dict[str, str]) -> None:
        self.inner = inner
        self.host = host
        self.errors = errors

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.inner.clientConnectionForTLS(tlsProtocol)
        errors, host = self.errors, self.host

        def verify(conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
            if not ok:
                errors[host] = VERIFY_ERRORS.get(errno, f"verification error {errno}")
            return bool(ok)

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


@implementer(IPolicyForHTTPS)
class VerifyingPolicy:
    """Twisted's browser-like policy (chain and host checked) with the trust above."""

    def __init__(self, ca_file: str | None) -> None:
        self._trust = trust_root(ca_file)
        #: The last verification failure's reason, by host.
        self.errors: dict[str, str] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> _RecordingCreator:
        host = hostname.decode("ascii")
        options = optionsForClientTLS(host, trustRoot=self._trust)
        return _RecordingCreator(options, host, self.errors)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and what it wraps: causes, contexts, Twisted's lists of failures,
    aiohttp's certificate error (bounded)."""
    seen: list[BaseException] = []
    todo: list[Any] = [error]
    while todo and len(seen) < 16:
        item = todo.pop()
        item = getattr(item, "value", item)  # (a Twisted Failure)
        if not isinstance(item, BaseException) or any(item is other for other in seen):
            continue
        seen.append(item)
        todo.extend(getattr(item, "reasons", None) or ())
        todo.extend(x for x in (item.__cause__, item.__context__) if x is not None)
        certificate_error = getattr(item, "certificate_error", None)
        if certificate_error is not None:
            todo.append(certificate_error)
    return seen


def _refused_certificate(item: BaseException) -> bool:
    name = type(item).__name__
    module = type(item).__module__
    return (
        isinstance(item, ssl.SSLCertVerificationError)
        or (name == "VerificationError" and module.startswith("service_identity"))
        or (module.startswith("OpenSSL") and "certificate verify failed" in str(item))
        or name == "ClientConnectorCertificateError"
    )


def is_verification_failure(error: BaseException) -> bool:
    """Whether a failed connection failed on the server's certificate (its chain, its
    dates, or its host name), as opposed to a network fault."""
    return any(_refused_certificate(item) for item in _chain(error))


def verification_reason(error: BaseException, host: str, policy: VerifyingPolicy | None) -> str:
    """Why the certificate of ``host`` was refused, in words."""
    if policy is not None and host in policy.errors:
        return policy.errors.pop(host)
    chain = _chain(error)
    for item in chain:
        message = getattr(item, "verify_message", None)
        if message:
            return str(message)
    if any(type(item).__name__ == "VerificationError" for item in chain):
        return f"the certificate is not for host {host}"
    return "certificate verify failed"


def tls_refused(
    request: Any, error: BaseException, policy: VerifyingPolicy | None
) -> SSEStreamError:
    """The error a stream gives up with when its server's certificate was refused."""
    host = urlsplit(request.url).hostname or ""
    reason = verification_reason(error, host, policy)
    return SSEStreamError(
        f"The TLS certificate of {host} was refused: {reason}. SSE_TLS_CA_FILE adds a CA "
        "to trust; SSE_TLS_VERIFY = False (or meta['sse_tls_verify']) turns verification off",
        TLS_ERROR,
    )


def check_ca_file(path: str | None) -> None:
    """Fail at start, in words, when ``SSE_TLS_CA_FILE`` cannot be used (else every
    stream would fail later, one by one, as a network fault)."""
    if not path:
        return
    try:
        certificates = _pem_certificates(path)
    except Exception as exc:
        raise ValueError(
            f"SSE_TLS_CA_FILE {path!r} cannot be read as PEM certificates: {exc}"
        ) from exc
    if not certificates:
        raise ValueError(f"SSE_TLS_CA_FILE {path!r} holds no PEM certificate")


def unverified(request: Any, warned: set[str]) -> None:
    """One WARNING per host whose streams a request's meta leaves unverified (the
    setting has its own, at start)."""
    host = urlsplit(request.url).hostname or ""
    if request.meta.get("sse_tls_verify") is not None and host not in warned:
        warned.add(host)
        logger.warning(
            "TLS certificates of streams to %s are not verified (meta['sse_tls_verify']): "
            "their credentials may be sent to any server that answers",
            host,
        )
