"""One ID: the keyed blind index of every identifier kind the vault matches customers on.

Email, phone and national id use :class:`BlindIndexer` (normalise, then HMAC-SHA256 under a
per-kind subkey). The partner's own customer id gets a fourth subkey derived the same way from
the blind-index key, so re-delivered rows find their customer without the id being stored in
clear. Index values are 64 hex characters; they never leave the node (PSI blinds them again).

A match rule of several fields (``phone + name``) has its own subkey per rule and indexes the
fields' standardised texts joined by U+001F; a field that is not an identifier (the name) is
compared after NFKC, case folding and collapsing white space. An erased customer's indexes are
kept only as :meth:`IdentityIndex.tombstone` values, keyed again under a subkey of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from tessera.client.vault.blind_index import BlindIndexer, IdentifierKind

KINDS = ("customer_id", "email", "phone", "national_id")
_SOURCE_LABEL = b"tessera.blind_index.v1/customer_id"
_MATCH_LABEL = b"tessera.blind_index.v1/match/"
_TOMBSTONE_LABEL = b"tessera.blind_index.v1/tombstone"


def fold_text(value: str) -> str:
    """Comparable form of a free-text field in a match rule (names): NFKC, case-folded, one space."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


class IdentityIndex:
    """Blind indexes of identifiers that are *already standardised* (by ``normalise.parse_value``).

    Gives exactly :meth:`BlindIndexer.index` for email, phone and national id (same subkeys, same
    HMAC) without normalising a second time — parsing phone numbers is the costly part of ingest.
    """

    __slots__ = ("_key", "_subkeys")

    def __init__(self, key: bytes, *, default_region: str | None = None) -> None:
        indexer = BlindIndexer(key, default_region=default_region)  # validates the key and region
        self._key = key
        self._subkeys = {kind.value: indexer._subkeys[kind] for kind in IdentifierKind}
        self._subkeys["customer_id"] = hmac.digest(key, _SOURCE_LABEL, hashlib.sha256)

    def index(self, kind: str, value: str) -> str:
        """Hex blind index of the standardised ``value`` read as ``kind``."""
        subkey = self._subkeys.get(kind)
        if subkey is None:
            raise ValueError(f"unknown identifier kind; use one of {', '.join(KINDS)}")
        text = value.strip() if kind == "customer_id" else value
        return hmac.digest(subkey, text.encode("utf-8"), hashlib.sha256).hex()

    def combined(self, fields: tuple[str, ...], texts: list[str]) -> str:
        """Hex index of one multi-field match rule over the fields' comparable texts."""
        subkey = hmac.digest(self._key, _MATCH_LABEL + "+".join(fields).encode("utf-8"), hashlib.sha256)
        return hmac.digest(subkey, "\x1f".join(texts).encode("utf-8"), hashlib.sha256).hex()

    def tombstone(self, index: str) -> str:
        """What an erased customer's index leaves behind: enough to recognise it, nothing to join on."""
        subkey = hmac.digest(self._key, _TOMBSTONE_LABEL, hashlib.sha256)
        return hmac.digest(subkey, index.encode("ascii"), hashlib.sha256).hex()
