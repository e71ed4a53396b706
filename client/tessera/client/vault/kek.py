"""Key-encryption keys (KEK): the root of the vault's key hierarchy (DESIGN §2).

A KEK never encrypts customer data; it only wraps the data keys and the blind-index key stored in
the ``vault_keys`` table. It comes from a key file (mode 0600), from an environment variable
(base64) or from a key-management service: :class:`KekProvider` is the hook point, so a KMS
implementation wraps and unwraps remotely and never hands the KEK to the node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import ConfigError, CryptoError

KEK_BYTES = 32
DEFAULT_KEK_ENV = "TESSERA_VAULT_KEK"
_NONCE_BYTES = 12
WRONG_KEK = "the key does not open this vault"


@runtime_checkable
class KekProvider(Protocol):
    """Wraps and unwraps small secrets (data keys) under a key-encryption key.

    ``aad`` binds a wrapped blob to its row (key id, purpose); unwrapping with a different ``aad``
    or a different KEK must raise :class:`CryptoError`. ``kek_id`` is a public, non-secret label
    (e.g. a KMS key ARN or a fingerprint) recorded beside wrapped keys for operators.
    """

    @property
    def kek_id(self) -> str: ...

    def wrap(self, secret: bytes, *, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LocalKek:
    """A KEK held in memory (from a key file or an environment variable); AES-256-GCM wrapping.

    Wrapped blob: nonce (12 bytes) | ciphertext || tag; 28 bytes of overhead per wrapped key.
    """

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.material, bytes):
            raise TypeError("a KEK must be bytes")
        if len(self.material) != KEK_BYTES:
            raise ValueError(f"a KEK must be {KEK_BYTES} bytes")

    @classmethod
    def generate(cls) -> LocalKek:
        return cls(os.urandom(KEK_BYTES))

    @property
    def kek_id(self) -> str:
        # A one-way label so operators can tell KEKs apart; it reveals nothing usable about the key.
        digest = hashlib.sha256(b"tessera.vault.kek-id.v1\x00" + self.material).hexdigest()
        return f"local:{digest[:16]}"

    def wrap(self, secret: bytes, *, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(self.material).encrypt(nonce, secret, aad)

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        if len(blob) < _NONCE_BYTES + 16:
            raise CryptoError(WRONG_KEK)
        try:
            return AESGCM(self.material).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], aad)
        except InvalidTag:
            raise CryptoError(WRONG_KEK) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> LocalKek:
        """Read a key file made by :func:`create_key_file`; refuses files others may read."""
        return cls(_decode(_read_private_file(Path(path)), source="the key file"))

    @classmethod
    def from_env(cls, name: str = DEFAULT_KEK_ENV, *, environ: dict[str, str] | None = None) -> LocalKek:
        """Read a base64 KEK from environment variable ``name`` (``environ`` defaults to os.environ)."""
        env = os.environ if environ is None else environ
        value = env.get(name)
        if not value:
            raise ConfigError(f"environment variable {name} is not set; it must hold the vault key (base64)")
        return cls(_decode(value.encode("ascii", "replace"), source=f"environment variable {name}"))


def _decode(text: bytes, *, source: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} does not hold a base64 key") from None
    if len(raw) != KEK_BYTES:
        raise ConfigError(f"{source} must hold a {KEK_BYTES}-byte key in base64")
    return raw


def _read_private_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist; create it with `create_key_file`") from None
    except OSError:
        raise ConfigError(f"key file {path} cannot be opened") from None
    try:
        # fstat on the opened descriptor: no window between the mode check and the read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"key file {path} can be read or changed by group or others; run `chmod 600 {path}` and retry"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(4096)
    finally:
        os.close(fd)


def create_key_file(path: str | os.PathLike[str]) -> Path:
    """Create a new random KEK file with mode 0600 (base64, one line); never overwrites a file."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {target} already exists; refusing to overwrite a key") from None
    except OSError:
        raise ConfigError(f"key file {target} cannot be created") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have cleared bits, never added any; make it exact.
        os.write(fd, base64.b64encode(os.urandom(KEK_BYTES)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
