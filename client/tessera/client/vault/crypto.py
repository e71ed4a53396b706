"""Per-field AES-256-GCM encryption of core-sensitive (T1) values in the vault (DESIGN §2).

Token layout (all fixed-size except the tail), version 1::

    version (1 byte = 0x01) | key id (8 bytes) | nonce (12 bytes) | ciphertext || tag (16 bytes)

A token costs ``37`` bytes plus the plaintext length. Every value gets a fresh random 96-bit nonce
from the OS generator; with at most 2^32 values per data key the nonce-collision probability stays
below 2^-32 (NIST SP 800-38D §8.3), far more values than a node holds under one key.

The associated data binds the token to its place: (table, column, row key) and the header bytes.
A ciphertext copied to another row or column, or a header edited to point at another key, fails
the tag check. Every failure — bad tag, unknown key, truncated token, wrong place — raises the
same opaque :class:`CryptoError` so an attacker learns nothing from which check failed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import CryptoError

FORMAT_VERSION = 1
KEY_ID_BYTES = 8
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + KEY_ID_BYTES
OVERHEAD_BYTES = HEADER_BYTES + NONCE_BYTES + TAG_BYTES

_AAD_LABEL = b"tessera.vault.field.v1"
DECRYPT_FAILED = "a protected value could not be decrypted"


def new_key_id() -> bytes:
    """A random 64-bit key id; random (not a counter) so ids never collide across vault copies."""
    return os.urandom(KEY_ID_BYTES)


@dataclass(frozen=True, slots=True)
class DataKey:
    """A 256-bit data key and its id. ``repr`` never shows the key material."""

    key_id: bytes
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, bytes) or not isinstance(self.material, bytes):
            raise TypeError("a data key needs bytes for its id and material")
        if len(self.key_id) != KEY_ID_BYTES:
            raise ValueError(f"a data key id must be {KEY_ID_BYTES} bytes")
        if len(self.material) != KEY_BYTES:
            raise ValueError(f"a data key must be {KEY_BYTES} bytes")

    @classmethod
    def generate(cls) -> DataKey:
        return cls(key_id=new_key_id(), material=os.urandom(KEY_BYTES))

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()


@dataclass(frozen=True, slots=True)
class FieldContext:
    """Where a value lives: the associated data of its token. ``row_key`` is the row's stable id."""

    table: str
    column: str
    row_key: str

    def __post_init__(self) -> None:
        for name in ("table", "column", "row_key"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"FieldContext.{name} must be a str")
        if not self.table or not self.column or not self.row_key:
            raise ValueError("a field context needs a table, a column and a row key")


def _aad(header: bytes, context: FieldContext) -> bytes:
    # Length-prefixed parts: ("ab", "c") and ("a", "bc") must give different associated data.
    names = (context.table, context.column, context.row_key)
    parts = [_AAD_LABEL, header, *(p.encode("utf-8") for p in names)]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def encrypt_field(key: DataKey, plaintext: bytes, *, context: FieldContext) -> bytes:
    """Encrypt one value for one (table, column, row key); returns a version-1 token."""
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    header = bytes([FORMAT_VERSION]) + key.key_id
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key.material).encrypt(nonce, plaintext, _aad(header, context))
    return header + nonce + sealed


def token_key_id(token: bytes) -> bytes:
    """The key id named in a token's header (not authenticated until decryption succeeds)."""
    if len(token) < OVERHEAD_BYTES or token[0] != FORMAT_VERSION:
        raise CryptoError(DECRYPT_FAILED)
    return bytes(token[1:HEADER_BYTES])


class Keyring:
    """Data keys by id, plus the one *active* key that new values are encrypted with."""

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Iterable[DataKey], *, active: bytes) -> None:
        self._keys: dict[bytes, DataKey] = {k.key_id: k for k in keys}
        if active not in self._keys:
            raise ValueError("the active key id is not in the keyring")
        self._active = active

    def __repr__(self) -> str:
        return f"Keyring(keys={len(self._keys)}, active={self._active.hex()})"

    @property
    def active(self) -> DataKey:
        return self._keys[self._active]

    def key_ids(self) -> frozenset[bytes]:
        return frozenset(self._keys)

    def get(self, key_id: bytes) -> DataKey | None:
        return self._keys.get(key_id)


def decrypt_field(keys: Keyring | Mapping[bytes, DataKey], token: bytes, *, context: FieldContext) -> bytes:
    """Decrypt a token written for ``context``; any failure raises one opaque :class:`CryptoError`."""
    if not isinstance(token, bytes | bytearray | memoryview):
        raise TypeError("a token must be bytes")
    token = bytes(token)
    key = keys.get(token_key_id(token))
    if key is None:
        raise CryptoError(DECRYPT_FAILED)
    header, nonce, sealed = (
        token[:HEADER_BYTES],
        token[HEADER_BYTES : HEADER_BYTES + NONCE_BYTES],
        token[HEADER_BYTES + NONCE_BYTES :],
    )
    try:
        return AESGCM(key.material).decrypt(nonce, sealed, _aad(header, context))
    except InvalidTag:
        raise CryptoError(DECRYPT_FAILED) from None


class FieldCipher:
    """Convenience layer over a :class:`Keyring` for text values (UTF-8)."""

    __slots__ = ("_aead", "_keyring")

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._aead: tuple[bytes, AESGCM] | None = None  # the active key's expanded cipher

    def encrypt_texts(self, table: str, column: str, items: Iterable[tuple[str, str]]) -> list[bytes]:
        """Version-1 tokens for many ``(row key, text)`` pairs of one (table, column), exactly as
        :meth:`encrypt_text` makes them one by one (each a fresh random nonce). Ingest encrypts
        several values per customer: expanding the AES key once and building the constant part of
        the associated data once makes a token cost about a fifth of :meth:`encrypt_text`'s."""
        key = self._keyring.active
        if self._aead is None or self._aead[0] != key.key_id:
            self._aead = (key.key_id, AESGCM(key.material))
        aead = self._aead[1]
        header = bytes([FORMAT_VERSION]) + key.key_id
        fixed = b"".join(struct.pack(">I", len(p)) + p for p in (_AAD_LABEL, header))
        fixed += b"".join(struct.pack(">I", len(p)) + p for p in (table.encode(), column.encode()))
        out = []
        for row_key, text in items:
            if not row_key:
                raise ValueError("a field context needs a table, a column and a row key")
            encoded = row_key.encode("utf-8")
            nonce = os.urandom(NONCE_BYTES)
            aad = fixed + struct.pack(">I", len(encoded)) + encoded
            out.append(header + nonce + aead.encrypt(nonce, text.encode("utf-8"), aad))
        return out

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def encrypt(self, plaintext: bytes, *, context: FieldContext) -> bytes:
        return encrypt_field(self._keyring.active, plaintext, context=context)

    def decrypt(self, token: bytes, *, context: FieldContext) -> bytes:
        return decrypt_field(self._keyring, token, context=context)

    def encrypt_text(self, text: str, *, context: FieldContext) -> bytes:
        return self.encrypt(text.encode("utf-8"), context=context)

    def decrypt_text(self, token: bytes, *, context: FieldContext) -> str:
        try:
            return self.decrypt(token, context=context).decode("utf-8")
        except UnicodeDecodeError:
            raise CryptoError(DECRYPT_FAILED) from None
