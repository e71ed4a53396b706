"""Where ``overlap`` reads a node's normalised identifiers (and the one place it decrypts PII).

Analyses never see core-sensitive fields (``DataSource`` refuses them). ``overlap`` must: it
hashes each customer's normalised email, phone or national id into the PSI group. So it reads
them here, normalised exactly as the vault's blind index normalises them (``blind_index``), so
the same phone written two ways is one element; duplicates collapse (a set is matched). The
values stay in this process: only their blinded group elements leave (``psi.protocol``). The
vault's own blind index cannot be used across partners: it is keyed with each node's own key.

A filter keeps customers whose label (a ``non_sensitive`` field or a label derived at home,
never a ``core_sensitive`` one) equals a value.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from tessera.client.vault._model import Attribute, Customer, PiiValue
from tessera.client.vault._writer import pii_context
from tessera.client.vault.blind_index import BlindIndexer
from tessera.client.vault.crypto import FieldCipher
from tessera.core.analyses.overlap import DATASET, Label
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.policy import Policy
from tessera.core.types import Tier

_CUSTOMER_COLUMNS = {"region": Customer.region, "channel": Customer.channel}


class IdentifierSource(Protocol):
    def identifiers(self, kind: str, *, label: Label | None) -> list[str]:
        """Distinct normalised identifiers of ``kind`` of the customers ``label`` selects."""
        ...


def check_label(policy: Policy, label: Label | None) -> None:
    if label is None:
        return
    tier = policy.tier_of(DATASET, label.field)  # default deny: names the field and the file
    if tier is Tier.CORE_SENSITIVE:
        raise PolicyViolation(
            f"field {label.field!r} is core_sensitive and cannot select customers",
            code="policy.core_sensitive_field",
        )


def _normaliser(kind: str, region: str | None) -> BlindIndexer:
    # Normalisation only: the key is never used here (nothing is indexed with it).
    return BlindIndexer(b"\0" * 32, default_region=region)


def _distinct(kind: str, raw: list[str], region: str | None) -> list[str]:
    norm = _normaliser(kind, region)
    out: set[str] = set()
    for value in raw:
        try:
            out.add(norm.normalise(kind, value))
        except InvalidRequest:
            continue  # an unreadable identifier matches nothing; it is not an error of the job
    return sorted(out)


class CsvIdentifiers:
    """The customers CSV a node serves with ``--data``: identifier columns named by their kind."""

    def __init__(
        self, files: Mapping[str, Path], policy: Policy, *, default_region: str | None = None
    ) -> None:
        self.files = dict(files)
        self.policy = policy
        self.region = default_region

    def identifiers(self, kind: str, *, label: Label | None) -> list[str]:
        check_label(self.policy, label)
        path = self.files.get(DATASET)
        if path is None or self.policy.dataset(DATASET).field(kind) is None:
            raise PolicyViolation(
                f"this node holds no {kind} field of its customers", code="overlap.no_identifier"
            )
        raw: list[str] = []
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                value = (row.get(kind) or "").strip()
                if value and (label is None or (row.get(label.field) or "").strip() == label.value):
                    raw.append(value)
        return _distinct(kind, raw, self.region)


class VaultIdentifiers:
    """The vault: decrypts the customers' ``kind`` tokens (ingest stored them normalised)."""

    def __init__(self, engine: sa.Engine, cipher: FieldCipher, policy: Policy) -> None:
        self.engine = engine
        self.cipher = cipher
        self.policy = policy

    def identifiers(self, kind: str, *, label: Label | None) -> list[str]:
        check_label(self.policy, label)
        query = sa.select(PiiValue.customer_id, PiiValue.token).where(PiiValue.field == kind)
        with self.engine.connect() as conn:
            keep = self._selected(conn, label)
            raw = [
                self.cipher.decrypt_text(token, context=pii_context(cid, kind))
                for cid, token in conn.execute(query)
                if keep is None or cid in keep
            ]
        return _distinct(kind, raw, None)

    @staticmethod
    def _selected(conn: sa.Connection, label: Label | None) -> set[int] | None:
        if label is None:
            return None
        column = _CUSTOMER_COLUMNS.get(label.field)
        if column is not None:
            return set(conn.scalars(sa.select(Customer.id).where(column == label.value)))
        return set(
            conn.scalars(
                sa.select(Attribute.customer_id).where(
                    Attribute.name == label.field, Attribute.text_value == label.value
                )
            )
        )
