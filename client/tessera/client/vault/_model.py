"""The canonical customer-data model of the vault (DESIGN §2), beside the key tables.

* ``vault_customer``: one row per node-internal customer id (an integer that never leaves the node),
  with the canonical demographic columns and the churn label;
* ``vault_pii``: every core-sensitive value, one AES-256-GCM token per (customer, field). Its text
  primary key ``ref = "<customer id>:<field>"`` is the row key of the token's associated data, so a
  token copied to another customer or field does not decrypt;
* ``vault_identifier``: the keyed blind index (HMAC) of email, phone, national id and the partner's
  own customer id; how One ID finds a customer again and how erase/lookup find one;
* ``vault_attribute``: typed extra attributes (numeric, categorical, date, boolean) per customer;
* ``vault_transaction`` and ``vault_event``: per-customer facts; a ``fingerprint`` makes re-ingesting
  the same row a no-op;
* ``vault_merge`` and ``vault_tombstone``: what One ID merged and what was erased or purged — ids,
  kinds, counts and times only, never PII;
* ``vault_lookup_index``: blind indexes of identifiers that do not merge on their own (a phone a
  household shares): several customers may hold one, so lookups and facts use it only when it
  names exactly one customer;
* ``vault_merge_detail`` and ``vault_split``: what each merge moved (so ``node unmerge`` can undo
  it) and the customers an operator separated (never merged again);
* ``vault_erased_index``: the tombstone of an erased customer's match keys, keyed again (PII-free),
  so a later ingest refuses rows of a customer who asked to be forgotten;
* ``vault_ingest_run`` and ``vault_sequence``: resumable ingestion checkpoints and the id counter.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PII_TABLE = "vault_pii"
PII_COLUMN = "token"
PII_ROW_KEY = "ref"


class ModelBase(DeclarativeBase):
    """Declarative base of the canonical customer-data tables."""


_TS = sa.DateTime(timezone=True)
# SQLite autoincrements only an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Customer(ModelBase):
    __tablename__ = "vault_customer"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    region: Mapped[str | None] = mapped_column(sa.String(128))
    channel: Mapped[str | None] = mapped_column(sa.String(128))
    signup_date: Mapped[datetime | None] = mapped_column(_TS)
    churned: Mapped[bool | None] = mapped_column(sa.Boolean)
    created_at: Mapped[datetime] = mapped_column(_TS)
    updated_at: Mapped[datetime] = mapped_column(_TS)
    # Retention clock: refreshed whenever an ingest delivers this customer again.
    last_seen_at: Mapped[datetime] = mapped_column(_TS, index=True)


class PiiValue(ModelBase):
    __tablename__ = PII_TABLE

    ref: Mapped[str] = mapped_column(sa.String(160), primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    field: Mapped[str] = mapped_column(sa.String(128))
    token: Mapped[bytes] = mapped_column(sa.LargeBinary)


class Identifier(ModelBase):
    __tablename__ = "vault_identifier"

    # Per-kind subkeys make index values of different kinds unrelated, so the index alone is the key.
    index: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # HMAC-SHA256, hex
    kind: Mapped[str] = mapped_column(sa.String(16))
    customer_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class Attribute(ModelBase):
    __tablename__ = "vault_attribute"

    customer_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # numeric, categorical, date, boolean
    num_value: Mapped[float | None] = mapped_column(sa.Float(precision=53))
    text_value: Mapped[str | None] = mapped_column(sa.Text)
    date_value: Mapped[datetime | None] = mapped_column(_TS)


class Transaction(ModelBase):
    __tablename__ = "vault_transaction"

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    time: Mapped[datetime | None] = mapped_column(_TS)
    # Exact amount in 1/10,000 of the currency unit (portable: SQLite has no native decimal).
    amount_e4: Mapped[int | None] = mapped_column(sa.BigInteger)
    channel: Mapped[str | None] = mapped_column(sa.String(128))
    category: Mapped[str | None] = mapped_column(sa.String(128))
    fingerprint: Mapped[str] = mapped_column(sa.String(32), unique=True)  # 128-bit, hex
    seen_at: Mapped[datetime] = mapped_column(_TS)


class Event(ModelBase):
    __tablename__ = "vault_event"

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    customer_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    time: Mapped[datetime | None] = mapped_column(_TS)
    event_type: Mapped[str | None] = mapped_column(sa.String(128))
    fingerprint: Mapped[str] = mapped_column(sa.String(32), unique=True)
    seen_at: Mapped[datetime] = mapped_column(_TS)


class Merge(ModelBase):
    __tablename__ = "vault_merge"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(_TS)
    kept_id: Mapped[int] = mapped_column(sa.BigInteger)
    merged_id: Mapped[int] = mapped_column(sa.BigInteger)
    run_id: Mapped[str] = mapped_column(sa.String(64))


class Tombstone(ModelBase):
    __tablename__ = "vault_tombstone"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(_TS)
    customer_id: Mapped[int] = mapped_column(sa.BigInteger)
    reason: Mapped[str] = mapped_column(sa.String(32))  # "erasure" or "retention"
    matched_by: Mapped[str] = mapped_column(sa.String(32))  # identifier kind, or "retention"
    rows_removed: Mapped[int] = mapped_column(sa.Integer)


class IngestRun(ModelBase):
    __tablename__ = "vault_ingest_run"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # sha256(source, mapping)
    dataset: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16))  # "running" or "done"
    rows_done: Mapped[int] = mapped_column(sa.BigInteger)
    started_at: Mapped[datetime] = mapped_column(_TS)
    finished_at: Mapped[datetime | None] = mapped_column(_TS)
    report: Mapped[str | None] = mapped_column(sa.Text)  # JSON quality report, no values


class Sequence(ModelBase):
    __tablename__ = "vault_sequence"

    name: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger)


class LookupIndex(ModelBase):
    __tablename__ = "vault_lookup_index"

    index: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))


class MergeDetail(ModelBase):
    """One merge's particulars (JSON of ids, kinds, field names and blind indexes — never values)."""

    __tablename__ = "vault_merge_detail"

    merge_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(16))  # "customers" (two stored) or "rows" (a row joined)
    matched_by: Mapped[str] = mapped_column(sa.String(256))  # the match rules that linked them
    detail: Mapped[str] = mapped_column(sa.Text)
    undone_at: Mapped[datetime | None] = mapped_column(_TS)


class Split(ModelBase):
    """Two customers an operator separated with ``node unmerge``: a later ingest must not join them."""

    __tablename__ = "vault_split"

    low_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    high_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class ErasedIndex(ModelBase):
    __tablename__ = "vault_erased_index"

    digest: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # IdentityIndex.tombstone
    tombstone_id: Mapped[int] = mapped_column(sa.Integer)


DATA_TABLES = (Customer, PiiValue, Identifier, Attribute, Transaction, Event, Merge, Tombstone)


def create_model(engine: sa.Engine) -> None:
    """Create the canonical tables if missing (idempotent)."""
    ModelBase.metadata.create_all(engine)
