"""Reading and writing PEM files: atomic writes, private modes, one-sentence failures."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import PkiError


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Readers (the coordinator re-reading ``crl.pem``) therefore never see a half-written file,
    and a private key never exists, even briefly, with a mode wider than ``mode``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM without a passphrase: gRPC reads the key file itself, so it cannot prompt."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"the {what} file {path} does not exist") from None
    except IsADirectoryError:
        raise PkiError(f"the {what} path {path} is a directory, not a file") from None
    except PermissionError:
        raise PkiError(f"the {what} file {path} cannot be read (permission denied)") from None


def parse_cert(data: bytes, path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PkiError(f"the {what} file {path} is not a PEM certificate") from None


def load_cert(path: Path, what: str = "certificate") -> x509.Certificate:
    return parse_cert(read_bytes(path, what), path, what)


def parse_key(data: bytes, path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted key; ValueError: not a key at all. Neither text is shown, as
        # OpenSSL's messages can quote parts of the input.
        raise PkiError(f"the {what} file {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"the {what} file {path} is not an ECDSA key")
    return key


def load_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    return parse_key(read_bytes(path, what), path, what)
