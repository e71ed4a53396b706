"""Keyed blind index over normalised identifiers (DESIGN §2: matching and One ID without plaintext).

Construction (version 1), for identifier kind ``k`` and 32-byte blind-index key ``K``::

    K_k   = HMAC-SHA256(K, "tessera.blind_index.v1/" || k)         (per-kind subkey)
    index = HMAC-SHA256(K_k, UTF-8(normalise_k(value)))           (32 bytes; hex in tables)

The per-kind subkey separates domains: the same string indexed as an email and as a national ID
gives unrelated values. ``K`` is its own key in ``vault_keys`` (purpose ``blind_index``), never a
data key, so leaking the index key does not expose encrypted fields and vice versa. The index is
deterministic by design (equal identifiers match); anyone holding ``K`` can test guesses, so the
key never leaves the node — PSI blinds the index again before anything is sent.

Normalisation: email trimmed and lower-cased; phone parsed by ``phonenumbers`` into E.164 (a
national number needs a default region, e.g. ``"GB"`` or ``"CN"``); national id upper-cased with
every character that is not a letter or digit removed. Invalid input raises
:class:`InvalidRequest` whose message names the kind, never the value.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import unicodedata
from dataclasses import dataclass, field

import phonenumbers

from tessera.core.errors import InvalidRequest

INDEX_KEY_BYTES = 32
_LABEL = b"tessera.blind_index.v1/"


class IdentifierKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    NATIONAL_ID = "national_id"


def normalise_email(value: str) -> str:
    text = unicodedata.normalize("NFC", value).strip().lower()
    local, sep, domain = text.partition("@")
    if not sep or not local or not domain or "@" in domain or any(c.isspace() for c in text):
        raise InvalidRequest("an email identifier is not of the form local@domain")
    return text


def normalise_phone(value: str, *, default_region: str | None = None) -> str:
    """E.164 (``+<country><number>``); a number without ``+`` needs ``default_region``."""
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidRequest("a phone identifier cannot be read as a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidRequest("a phone identifier has an impossible length for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_national_id(value: str) -> str:
    text = "".join(c for c in unicodedata.normalize("NFKC", value).upper() if c.isalnum())
    if not text:
        raise InvalidRequest("a national id identifier is empty after removing separators")
    return text


@dataclass(frozen=True, slots=True)
class BlindIndexer:
    """Computes blind indexes with one key; ``default_region`` serves national phone numbers."""

    key: bytes = field(repr=False)
    default_region: str | None = None
    _subkeys: dict[IdentifierKind, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError("a blind-index key must be bytes")
        if len(self.key) != INDEX_KEY_BYTES:
            raise ValueError(f"a blind-index key must be {INDEX_KEY_BYTES} bytes")
        if self.default_region is not None and self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("default_region must be a two-letter region code known to phonenumbers")
        subkeys = {
            kind: hmac.digest(self.key, _LABEL + kind.value.encode("ascii"), hashlib.sha256)
            for kind in IdentifierKind
        }
        object.__setattr__(self, "_subkeys", subkeys)

    def normalise(self, kind: IdentifierKind | str, value: str) -> str:
        if not isinstance(value, str):
            raise TypeError("an identifier must be a str")
        kind = IdentifierKind(kind)
        if kind is IdentifierKind.EMAIL:
            return normalise_email(value)
        if kind is IdentifierKind.PHONE:
            return normalise_phone(value, default_region=self.default_region)
        return normalise_national_id(value)

    def index(self, kind: IdentifierKind | str, value: str) -> bytes:
        """The 32-byte blind index of ``value`` read as ``kind``."""
        kind = IdentifierKind(kind)
        normalised = self.normalise(kind, value)
        return hmac.digest(self._subkeys[kind], normalised.encode("utf-8"), hashlib.sha256)

    def index_hex(self, kind: IdentifierKind | str, value: str) -> str:
        return self.index(kind, value).hex()
