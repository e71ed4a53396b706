"""gRPC mTLS credentials from PKI files, checked when loaded so mistakes surface as one sentence.

gRPC's own errors for a bad key or a foreign certificate appear only at the first handshake, as a
terse ``UNAVAILABLE`` on the other side; :func:`load_tls` catches the common mistakes first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature

from tessera.core.errors import PkiError
from tessera.core.pki._io import cert_pem, parse_cert, parse_key, read_bytes
from tessera.core.pki._model import ca_paths, cert_paths, identity_of
from tessera.core.pki.crl import load_revoked_serials
from tessera.core.types import PeerIdentity


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of one party's TLS material: the consortium CA, its own certificate and key, the CRL."""

    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None

    @classmethod
    def for_identity(cls, pki_dir: Path, kind: str, name: str) -> TlsFiles:
        """The files :func:`tessera.core.pki.issue` wrote; ``crl`` only if ``crl.pem`` exists."""
        ca, _, crl = ca_paths(pki_dir)
        cert, key = cert_paths(pki_dir, kind, name)
        return cls(ca=ca, cert=cert, key=key, crl=crl if crl.exists() else None)


@dataclass(frozen=True, slots=True)
class LoadedTls:
    """Checked PEM bytes ready for gRPC, and whom the certificate names. Holds a private key:
    never log or print it."""

    files: TlsFiles
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: PeerIdentity
    not_after: dt.datetime

    def __repr__(self) -> str:  # the default repr would print the key
        return f"LoadedTls(identity={self.identity!r}, not_after={self.not_after.isoformat()})"


def load_tls(files: TlsFiles, *, now: dt.datetime | None = None) -> LoadedTls:
    """Read and check ``files``; raise ``PkiError`` with one plain sentence on the first problem.

    Checked: every file exists and holds PEM of the right type; the key matches the certificate;
    the CA signed the certificate; the certificate is valid at ``now`` (default: the current time)
    and follows Tessera's subject encoding; if ``files.crl`` is set, the CA signed the CRL and
    the certificate is not on it.
    """
    moment = dt.datetime.now(dt.UTC) if now is None else now
    ca_bytes = read_bytes(files.ca, "CA certificate")
    ca = parse_cert(ca_bytes, files.ca, "CA certificate")
    cert = parse_cert(read_bytes(files.cert, "certificate"), files.cert, "certificate")
    key_bytes = read_bytes(files.key, "private key")
    key = parse_key(key_bytes, files.key)
    if key.public_key() != cert.public_key():
        raise PkiError(f"the private key {files.key} does not match the certificate {files.cert}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"certificate {files.cert} was not issued by this consortium's CA") from None
    if moment >= ca.not_valid_after_utc:
        raise PkiError(f"the consortium CA certificate {files.ca} has expired")
    if moment >= cert.not_valid_after_utc:
        raise PkiError(f"certificate {files.cert} has expired; issue a new one")
    if moment < cert.not_valid_before_utc:
        raise PkiError(f"certificate {files.cert} is not valid yet; check this machine's clock")
    try:
        identity = identity_of(cert)
    except PkiError:
        raise PkiError(f"certificate {files.cert} does not name a Tessera kind and name") from None
    if files.crl is not None and identity.serial in load_revoked_serials(files.crl, files.ca):
        raise PkiError(f"certificate {files.cert} has been revoked; ask for a new one")
    return LoadedTls(
        files=files,
        ca_pem=ca_bytes,
        # Re-encode so gRPC gets exactly one certificate even if the file carried extra text.
        cert_pem=cert_pem(cert),
        key_pem=key_bytes,
        identity=identity,
        not_after=cert.not_valid_after_utc,
    )


def _loaded(files: TlsFiles | LoadedTls) -> LoadedTls:
    return files if isinstance(files, LoadedTls) else load_tls(files)


def server_credentials(files: TlsFiles | LoadedTls) -> grpc.ServerCredentials:
    """Server credentials that demand and verify a client certificate from the same CA."""
    tls = _loaded(files)
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
    )


def channel_credentials(files: TlsFiles | LoadedTls) -> grpc.ChannelCredentials:
    """Channel credentials presenting this party's certificate and trusting only the consortium CA."""
    tls = _loaded(files)
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )
