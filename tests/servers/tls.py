"""Throw-away TLS certificates for 127.0.0.1 / localhost, made with ``cryptography``.

Tests need HTTPS (and CONNECT tunnels through a proxy) without network access or
checked-in keys.  A tiny self-signed root CA signs a leaf certificate for
``localhost``, ``127.0.0.1`` and ``::1``: clients that verify can trust ``ca_path``,
and strict verifiers (Python 3.13's ``VERIFY_X509_STRICT``, browsers, Go) accept the
chain, which they would not all do for one self-signed certificate doubling as CA and
server.  EC P-256 keys keep generation in the milliseconds.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOSTNAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one certificate set, plus ``ssl`` contexts built from them.

    ``cert_path`` holds the leaf followed by the CA (the chain a server sends),
    ``key_path`` the leaf's private key, ``ca_path`` the CA certificate to trust.
    """

    directory: Path
    cert_path: Path
    key_path: Path
    ca_path: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context serving the leaf certificate (HTTP/1.1 via ALPN)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this set's CA."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.set_alpn_protocols(["http/1.1"])
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "scrapy-sse tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_tls_files(directory: Path | str | None = None, days: int = 7) -> TLSFiles:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` into ``directory``.

    Without a directory a new temporary one is made; removing it is the caller's job
    (:class:`TemporaryTLS` does it).
    """
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp("-sse-tls"))
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name("scrapy-sse test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTNAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files = TLSFiles(folder, folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    files.ca_path.write_bytes(ca_pem)
    files.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    files.key_path.write_bytes(_pem_key(key))
    files.key_path.chmod(0o600)
    return files


class TemporaryTLS:
    """``with TemporaryTLS() as tls: SSEServer(ssl_context=tls.server_context())``.

    The temporary directory, keys included, is removed on exit.
    """

    def __init__(self) -> None:
        self._files: TLSFiles | None = None

    def __enter__(self) -> TLSFiles:
        self._files = make_tls_files()
        return self._files

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._files is not None:
            shutil.rmtree(self._files.directory, ignore_errors=True)
            self._files = None


def self_signed_server_context() -> tuple[ssl.SSLContext, TLSFiles]:
    """One-call helper: a server context plus the files (delete ``files.directory``)."""
    files = make_tls_files()
    return files.server_context(), files
