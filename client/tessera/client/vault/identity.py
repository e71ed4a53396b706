"""One ID: the keyed blind index of every identifier kind the vault matches customers on.

Email, phone and national id use :class:`BlindIndexer` (normalise, then HMAC-SHA256 under a
per-kind subkey). The partner's own customer id gets a fourth subkey derived the same way from
the blind-index key, so re-delivered rows find their customer without the id being stored in
clear. Index values are 64 hex characters; they never leave the node (PSI blinds them again).
"""

from __future__ import annotations

import hashlib
import hmac

from tessera.client.vault.blind_index import BlindIndexer, IdentifierKind

KINDS = ("customer_id", "email", "phone", "national_id")
_SOURCE_LABEL = b"tessera.blind_index.v1/customer_id"


class IdentityIndex:
    """Blind indexes of identifiers that are *already standardised* (by ``normalise.parse_value``).

    Gives exactly :meth:`BlindIndexer.index` for email, phone and national id (same subkeys, same
    HMAC) without normalising a second time — parsing phone numbers is the costly part of ingest.
    """

    __slots__ = ("_subkeys",)

    def __init__(self, key: bytes, *, default_region: str | None = None) -> None:
        indexer = BlindIndexer(key, default_region=default_region)  # validates the key and region
        self._subkeys = {kind.value: indexer._subkeys[kind] for kind in IdentifierKind}
        self._subkeys["customer_id"] = hmac.digest(key, _SOURCE_LABEL, hashlib.sha256)

    def index(self, kind: str, value: str) -> str:
        """Hex blind index of the standardised ``value`` read as ``kind``."""
        subkey = self._subkeys.get(kind)
        if subkey is None:
            raise ValueError(f"unknown identifier kind; use one of {', '.join(KINDS)}")
        text = value.strip() if kind == "customer_id" else value
        return hmac.digest(subkey, text.encode("utf-8"), hashlib.sha256).hex()
