"""Writes one validated batch into the canonical tables, inside the caller's transaction.

Customers: every row's identifiers are blind-indexed; rows and stored customers sharing any index
form one group (union-find), which becomes one node-internal customer — the smallest existing id
survives, the others are merged into it and the merge is recorded (One ID). A value is rewritten
only when it differs from the stored one (decrypting to compare), so a re-delivered row changes
nothing but the retention clock. Transactions and events find their customer through the blind
index and are deduplicated by a fingerprint over the row's content and customer reference.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from tessera.client.vault._bulk import bulk_insert
from tessera.client.vault._model import (
    PII_COLUMN,
    PII_TABLE,
    Attribute,
    Customer,
    Event,
    Identifier,
    Merge,
    PiiValue,
    Sequence,
    Transaction,
)
from tessera.client.vault.crypto import FieldCipher, FieldContext
from tessera.client.vault.normalise import Value, text_of

CUSTOMER_COLUMNS = {
    "region": ("string", "category"),
    "channel": ("string", "category"),
    "signup_date": ("date", "datetime"),
    "churned": ("bool",),
}
_CHUNK = 4000  # bound parameters per IN (...) query (SQLite allows 32,766, PostgreSQL 65,535)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each mapped field is stored: encrypted, canonical column or typed attribute."""

    pii: frozenset[str]
    identifiers: tuple[tuple[str, str], ...]  # (field, kind)
    columns: frozenset[str]
    attributes: dict[str, str]  # field -> attribute kind


def utc(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: every stored time is UTC, so re-attach it."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def pii_context(customer_id: int, field: str) -> FieldContext:
    return FieldContext(PII_TABLE, PII_COLUMN, f"{customer_id}:{field}")


def attribute_kind(value_type: str) -> str:
    if value_type in ("int", "float", "amount"):
        return "numeric"
    if value_type in ("date", "datetime"):
        return "date"
    if value_type == "bool":
        return "boolean"
    return "categorical"


def attribute_values(kind: str, value: Value) -> dict[str, Any]:
    if kind == "numeric":
        return {"num_value": None if value is None else float(value), "text_value": None, "date_value": None}  # type: ignore[arg-type]
    if kind == "boolean":
        return {
            "num_value": None if value is None else float(bool(value)),
            "text_value": None,
            "date_value": None,
        }
    if kind == "date":
        return {"num_value": None, "text_value": None, "date_value": value}
    return {"num_value": None, "text_value": None if value is None else str(value), "date_value": None}


def allocate_ids(session: Session, count: int) -> int:
    """Reserve ``count`` new customer ids; returns the first. The UPDATE takes the write/row lock."""
    table = cast(sa.Table, Sequence.__table__)
    updated = session.execute(
        sa.update(table).where(table.c.name == "customer").values(value=table.c.value + count)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        session.execute(sa.insert(table).values(name="customer", value=count))
        return 1
    return int(session.scalar(sa.select(table.c.value).where(table.c.name == "customer")) or 0) - count + 1


def lookup_indexes(session: Session, indexes: Iterable[str]) -> dict[str, int]:
    """Customer id per stored blind index among ``indexes`` (absent ones are left out)."""
    wanted = sorted(set(indexes))
    found: dict[str, int] = {}
    if not wanted:
        return found
    # One parameter instead of thousands of bound values: the query stays small to compile, send
    # and plan however large the batch (an ingest batch names three identifiers per customer).
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        column = sa.literal(wanted, postgresql.ARRAY(sa.String))
        query = sa.select(Identifier.index, Identifier.customer_id).where(Identifier.index == sa.any_(column))
        found.update(session.execute(query).all())  # type: ignore[arg-type]
        return found
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 38):  # JSON functions built in
        rows = session.connection().exec_driver_sql(
            'SELECT "index", customer_id FROM vault_identifier WHERE "index" IN '
            "(SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        )
        found.update((str(index), int(cid)) for index, cid in rows)
        return found
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        found.update(
            session.execute(
                sa.select(Identifier.index, Identifier.customer_id).where(Identifier.index.in_(part))
            ).all()
        )
    return found


def _group(
    keyed: list[list[tuple[str, str]]], existing: dict[str, int]
) -> tuple[dict[int, list[int]], dict[int, set[int]]]:
    """Rows that share a blind index, directly or through a stored customer, form one group
    (union-find over row numbers). Returns members per group and stored customer ids per group,
    both keyed by a root row; groups come in the order of their first row, members ascending."""
    parent = list(range(len(keyed)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_row: dict[object, int] = {}  # blind index or stored customer id -> first row naming it
    for i, idxs in enumerate(keyed):
        for _, h in idxs:
            for node in (h, existing.get(h)):
                if node is None:
                    continue
                j = first_row.setdefault(node, i)
                if j != i:
                    ri, rj = find(i), find(j)
                    if ri != rj:
                        parent[max(ri, rj)] = min(ri, rj)  # the smaller row stays root
    groups: dict[int, list[int]] = {}
    owners: dict[int, set[int]] = {}
    for i, idxs in enumerate(keyed):
        root = find(i)
        groups.setdefault(root, []).append(i)
        for _, h in idxs:
            cid = existing.get(h)
            if cid is not None:
                owners.setdefault(root, set()).add(cid)
    return groups, owners


@dataclass(slots=True)
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    merged: int = 0
    written: int = 0


def merge_customer(
    session: Session, cipher: FieldCipher, keep: int, other: int, *, now: datetime, run_id: str
) -> None:
    """Fold customer ``other`` into ``keep``: facts, identifiers, missing values; then delete it."""
    for model in (Identifier, Transaction, Event):
        session.execute(sa.update(model).where(model.customer_id == other).values(customer_id=keep))
    kept_attrs = set(session.scalars(sa.select(Attribute.name).where(Attribute.customer_id == keep)))
    for attr in session.scalars(sa.select(Attribute).where(Attribute.customer_id == other)).all():
        if attr.name not in kept_attrs:
            session.add(
                Attribute(
                    customer_id=keep,
                    name=attr.name,
                    kind=attr.kind,
                    num_value=attr.num_value,
                    text_value=attr.text_value,
                    date_value=attr.date_value,
                )
            )
    session.execute(sa.delete(Attribute).where(Attribute.customer_id == other))
    kept_pii = set(session.scalars(sa.select(PiiValue.field).where(PiiValue.customer_id == keep)))
    for row in session.scalars(sa.select(PiiValue).where(PiiValue.customer_id == other)).all():
        if row.field not in kept_pii:
            plain = cipher.decrypt(row.token, context=pii_context(other, row.field))
            token = cipher.encrypt(plain, context=pii_context(keep, row.field))
            session.add(PiiValue(ref=f"{keep}:{row.field}", customer_id=keep, field=row.field, token=token))
    session.execute(sa.delete(PiiValue).where(PiiValue.customer_id == other))
    kept, gone = session.get(Customer, keep), session.get(Customer, other)
    if kept is not None and gone is not None:
        for name in CUSTOMER_COLUMNS:
            if getattr(kept, name) is None:
                setattr(kept, name, getattr(gone, name))
        session.delete(gone)
    session.add(Merge(time=now, kept_id=keep, merged_id=other, run_id=run_id))
    session.flush()


def write_customers(
    session: Session,
    records: list[dict[str, Value]],
    keyed: list[list[tuple[str, str]]],
    *,
    layout: Layout,
    cipher: FieldCipher,
    now: datetime,
    run_id: str,
) -> Counts:
    """Write customers; ``keyed[i]`` holds the (kind, blind index) pairs of ``records[i]``."""
    counts = Counts(written=len(records))
    existing = lookup_indexes(session, (h for idxs in keyed for _, h in idxs))
    groups, owners = _group(keyed, existing)
    fresh = [root for root in groups if not owners.get(root)]
    next_id = allocate_ids(session, len(fresh)) if fresh else 0
    target: dict[int, int] = {}
    for root in groups:
        cids = sorted(owners.get(root, ()))
        if cids:
            target[root] = cids[0]
            for other in cids[1:]:
                merge_customer(session, cipher, cids[0], other, now=now, run_id=run_id)
                counts.merged += 1
        else:
            target[root], next_id = next_id, next_id + 1
    old_ids = sorted({target[r] for r in groups if owners.get(r)})
    stored = _load(session, old_ids)
    new_customers: list[dict[str, Any]] = []
    new_attrs: list[dict[str, Any]] = []
    new_pii: list[dict[str, Any]] = []
    plain: list[tuple[str, str]] = []  # (row key, text) of each new_pii row, encrypted below
    new_idents: dict[str, dict[str, Any]] = {}
    for root, members in groups.items():
        cid = target[root]
        # A duplicate is a row that joins a customer under an identifier not yet known for it;
        # a row re-delivered with only known identifiers is not one (re-ingesting stays at 0).
        joining = sum(1 for i in members if any(h not in existing for _, h in keyed[i]))
        counts.merged += max(0, joining - (0 if owners.get(root) else 1))
        desired: dict[str, Value] = {}
        for i in sorted(members):
            desired.update({k: v for k, v in records[i].items() if v is not None})
            for kind, h in keyed[i]:
                if existing.get(h) is None and h not in new_idents:
                    new_idents[h] = {"kind": kind, "index": h, "customer_id": cid}
        if cid not in stored:
            counts.created += 1
            row = {"id": cid, "created_at": now, "updated_at": now, "last_seen_at": now}
            # Only fields stored in clear reach these columns; a core-sensitive one stays encrypted.
            row.update({c: desired.get(c) if c in layout.columns else None for c in CUSTOMER_COLUMNS})
            new_customers.append(row)
            changed = False
        else:
            changed = _update_existing(
                session, cid, desired, stored[cid], layout=layout, cipher=cipher, now=now
            )
        for name, kind in layout.attributes.items():
            if name in desired and (cid not in stored or name not in stored[cid][1]):
                new_attrs.append(
                    {"customer_id": cid, "name": name, "kind": kind, **attribute_values(kind, desired[name])}
                )
                changed = changed or cid in stored
        for name in layout.pii:
            if name in desired and (cid not in stored or name not in stored[cid][2]):
                ref = f"{cid}:{name}"
                new_pii.append({"ref": ref, "customer_id": cid, "field": name})
                plain.append((ref, text_of(desired[name])))
                changed = changed or cid in stored
        if cid in stored:
            if changed:
                counts.updated += 1
            else:
                counts.unchanged += len(members)
    # Sealed together: one key expansion per batch (the row key is each token's own "cid:field").
    for row, token in zip(new_pii, cipher.encrypt_texts(PII_TABLE, PII_COLUMN, plain), strict=True):
        row["token"] = token
    for model, rows in (
        (Customer, new_customers),
        (Attribute, new_attrs),
        (PiiValue, new_pii),
        (Identifier, list(new_idents.values())),
    ):
        if rows:
            bulk_insert(session, cast(sa.Table, model.__table__), rows)
    if old_ids:
        for start in range(0, len(old_ids), _CHUNK):
            session.execute(
                sa.update(Customer)
                .where(Customer.id.in_(old_ids[start : start + _CHUNK]))
                .values(last_seen_at=now)
            )
    return counts


_Stored = tuple[Customer, dict[str, Attribute], dict[str, bytes]]


def _load(session: Session, ids: list[int]) -> dict[int, _Stored]:
    out: dict[int, _Stored] = {}
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        for c in session.scalars(sa.select(Customer).where(Customer.id.in_(part))):
            out[c.id] = (c, {}, {})
        for a in session.scalars(sa.select(Attribute).where(Attribute.customer_id.in_(part))):
            out[a.customer_id][1][a.name] = a
        for p in session.scalars(sa.select(PiiValue).where(PiiValue.customer_id.in_(part))):
            out[p.customer_id][2][p.field] = p.token
    return out


def _update_existing(
    session: Session,
    cid: int,
    desired: dict[str, Value],
    stored: _Stored,
    *,
    layout: Layout,
    cipher: FieldCipher,
    now: datetime,
) -> bool:
    customer, attrs, tokens = stored
    changed = False
    for name in CUSTOMER_COLUMNS:
        if name in desired and name in layout.columns:
            current = getattr(customer, name)
            current = utc(current) if isinstance(current, datetime) else current
            if current != desired[name]:
                setattr(customer, name, desired[name])
                changed = True
    for name, attr in attrs.items():
        if name in desired:
            values = attribute_values(attr.kind, desired[name])
            current = {
                "num_value": attr.num_value,
                "text_value": attr.text_value,
                "date_value": utc(attr.date_value),
            }
            if current != values:
                for key, val in values.items():
                    setattr(attr, key, val)
                changed = True
    for name, token in tokens.items():
        if name in desired and name in layout.pii:
            context = pii_context(cid, name)
            wanted = text_of(desired[name])
            if cipher.decrypt_text(token, context=context) != wanted:
                session.execute(
                    sa.update(PiiValue)
                    .where(PiiValue.ref == f"{cid}:{name}")
                    .values(token=cipher.encrypt_text(wanted, context=context))
                )
                changed = True
    if changed:
        customer.updated_at = now
    return changed


def write_facts(
    session: Session, dataset: str, rows: list[tuple[int, str, dict[str, Any]]], *, now: datetime
) -> Counts:
    """Insert transactions or events: ``rows`` are (customer id, fingerprint, columns) as made by
    ``_prepare.fact_row``."""
    counts = Counts()
    model = Transaction if dataset == "transactions" else Event
    staged: dict[str, dict[str, Any]] = {}
    for cid, key, record in rows:
        if key in staged:
            counts.merged += 1  # an identical row twice in one batch
            continue
        staged[key] = {"customer_id": cid, "fingerprint": key, "seen_at": now, **record}
    # A fingerprint already stored is the same fact delivered again: the database skips it.
    written = bulk_insert(
        session, cast(sa.Table, model.__table__), list(staged.values()), skip_conflicts="fingerprint"
    )
    counts.written = written
    counts.unchanged += len(staged) - written
    return counts
