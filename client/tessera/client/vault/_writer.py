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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
    ErasedIndex,
    Event,
    Identifier,
    LookupIndex,
    Merge,
    MergeDetail,
    PiiValue,
    Sequence,
    Split,
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
    erased: int = 0  # rows refused: they name a customer who was erased
    merges: list[dict[str, Any]] = field(default_factory=list)  # one per merge recorded
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # refused merges, rows listed
    erased_rows: list[int] = field(default_factory=list)


STRONG_KINDS = ("customer_id", "national_id")  # one value per customer: two different ones never merge


def _record_merge(
    session: Session,
    *,
    kept: int,
    merged: int,
    kind: str,
    matched_by: list[str],
    detail: dict[str, Any],
    now: datetime,
    run_id: str,
) -> dict[str, Any]:
    merge = Merge(time=now, kept_id=kept, merged_id=merged, run_id=run_id)
    session.add(merge)
    session.flush()
    by = ", ".join(sorted(set(matched_by))) or "-"
    session.add(MergeDetail(merge_id=merge.id, kind=kind, matched_by=by[:256], detail=json.dumps(detail)))
    return {
        "merge": merge.id,
        "kind": kind,
        "kept": kept,
        "merged": merged,
        "matched_by": by,
        **{k: v for k, v in detail.items() if k in ("rows", "fields")},
    }


def merge_customer(
    session: Session,
    cipher: FieldCipher,
    keep: int,
    other: int,
    *,
    now: datetime,
    run_id: str,
    matched_by: list[str] | None = None,
    rows: list[int] | None = None,
) -> dict[str, Any]:
    """Fold customer ``other`` into ``keep``: facts, identifiers, missing values; then delete it.
    What moved is recorded (``vault_merge_detail``) so ``node unmerge`` can put it back."""
    detail: dict[str, Any] = {
        "rows": rows or [],
        "identifiers": list(
            session.scalars(sa.select(Identifier.index).where(Identifier.customer_id == other))
        ),
        "lookups": [
            [i, k]
            for i, k in session.execute(
                sa.select(LookupIndex.index, LookupIndex.kind).where(LookupIndex.customer_id == other)
            )
        ],
        "transactions": list(
            session.scalars(sa.select(Transaction.id).where(Transaction.customer_id == other))
        ),
        "events": list(session.scalars(sa.select(Event.id).where(Event.customer_id == other))),
    }
    kept_lookups = set(session.scalars(sa.select(LookupIndex.index).where(LookupIndex.customer_id == keep)))
    if kept_lookups:
        session.execute(
            sa.delete(LookupIndex).where(
                LookupIndex.customer_id == other, LookupIndex.index.in_(sorted(kept_lookups))
            )
        )
    for model in (Identifier, LookupIndex, Transaction, Event):
        session.execute(sa.update(model).where(model.customer_id == other).values(customer_id=keep))
    moved: list[str] = []
    shared: list[str] = []
    kept_attrs = set(session.scalars(sa.select(Attribute.name).where(Attribute.customer_id == keep)))
    for attr in session.scalars(sa.select(Attribute).where(Attribute.customer_id == other)).all():
        (shared if attr.name in kept_attrs else moved).append(attr.name)
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
        (shared if row.field in kept_pii else moved).append(row.field)
        if row.field not in kept_pii:
            plain = cipher.decrypt(row.token, context=pii_context(other, row.field))
            token = cipher.encrypt(plain, context=pii_context(keep, row.field))
            session.add(PiiValue(ref=f"{keep}:{row.field}", customer_id=keep, field=row.field, token=token))
    session.execute(sa.delete(PiiValue).where(PiiValue.customer_id == other))
    kept, gone = session.get(Customer, keep), session.get(Customer, other)
    if kept is not None and gone is not None:
        for name in CUSTOMER_COLUMNS:
            if getattr(gone, name) is None:
                continue
            (shared if getattr(kept, name) is not None else moved).append(name)
            if getattr(kept, name) is None:
                setattr(kept, name, getattr(gone, name))
        session.delete(gone)
    detail.update(fields=sorted(moved + shared), moved=sorted(moved), shared=sorted(shared))
    return _record_merge(
        session,
        kept=keep,
        merged=other,
        kind="customers",
        matched_by=matched_by or [],
        detail=detail,
        now=now,
        run_id=run_id,
    )


def _comparable(field_name: str, value: Value, layout: Layout) -> object:
    """A row's value in the form it would be stored in, so rows and stored customers compare."""
    if field_name in layout.columns:
        return utc(value) if isinstance(value, datetime) else value
    kind = layout.attributes.get(field_name)
    if kind is not None:
        doc = attribute_values(kind, value)
        return (doc["num_value"], doc["text_value"], utc(doc["date_value"]))
    return text_of(value)


def _stored_values(stored: _Stored, cid: int, cipher: FieldCipher) -> dict[str, object]:
    customer, attrs, tokens = stored
    out: dict[str, object] = {}
    for name in CUSTOMER_COLUMNS:
        current = getattr(customer, name)
        if current is not None:
            out[name] = utc(current) if isinstance(current, datetime) else current
    for name, attr in attrs.items():
        if (attr.num_value, attr.text_value, attr.date_value) != (None, None, None):
            out[name] = (attr.num_value, attr.text_value, utc(attr.date_value))
    for name, token in tokens.items():
        out[name] = cipher.decrypt_text(token, context=pii_context(cid, name))
    return out


def _conflict(
    members: list[int],
    cids: list[int],
    records: list[dict[str, Value]],
    keyed: list[list[tuple[str, str]]],
    existing: dict[str, int],
    *,
    stored: dict[int, _Stored],
    splits: set[tuple[int, int]],
    layout: Layout,
    cipher: FieldCipher,
) -> tuple[list[str], str] | None:
    """Why this group must not become one customer (fields in conflict, reason), or None.

    A merge (two stored customers, several rows, or a row bringing a new identifier to a stored
    customer) keeps every value it received only if no field has two different values; otherwise it
    is refused. A row that only re-delivers a stored customer is an update, not a merge, except
    that it may never change a strong identifier (customer id, national id)."""
    if len(cids) >= 2:
        apart = [(a, b) for a in cids for b in cids if a < b and (a, b) in splits]
        if apart:
            return [], "an operator separated these customers with `node unmerge`"
    joining = any(h not in existing for i in members for _, h in keyed[i])
    if len(cids) < 2 and len(members) < 2 and not (cids and joining):
        return None
    strong = {f for f, kind in layout.identifiers if kind in STRONG_KINDS}
    # One row joining one stored customer is an update of it, except for strong identifiers.
    checked = strong if len(members) == 1 and len(cids) == 1 else None
    values: dict[str, set[object]] = {}

    def note(name: str, value: object) -> None:
        if checked is None or name in checked:
            values.setdefault(name, set()).add(value)

    for i in members:
        for name, value in records[i].items():
            if value is not None:
                note(name, _comparable(name, value, layout))
    for cid in cids:
        for name, stored_value in _stored_values(stored[cid], cid, cipher).items():
            note(name, stored_value)
    differing = sorted(name for name, seen in values.items() if len(seen) > 1)
    if differing:
        return differing, "the records to merge hold different values"
    return None


def write_customers(
    session: Session,
    records: list[dict[str, Value]],
    keyed: list[list[tuple[str, str]]],
    *,
    layout: Layout,
    cipher: FieldCipher,
    now: datetime,
    run_id: str,
    numbers: list[int] | None = None,
    lookups: list[list[tuple[str, str]]] | None = None,
    tombstone: Callable[[str], str] | None = None,
) -> Counts:
    """Write customers; ``keyed[i]`` holds the (kind, blind index) match keys of ``records[i]``,
    ``lookups[i]`` its lookup-only indexes, ``numbers[i]`` its source row number. Rows naming an
    erased customer (``tombstone``) and merges whose records disagree are refused and counted."""
    numbers = numbers if numbers is not None else list(range(1, len(records) + 1))
    lookups = lookups if lookups else [[] for _ in records]
    counts = Counts()
    if tombstone is not None:
        hit = _erased(session, {tombstone(h) for idxs in keyed for _, h in idxs})
        if hit:
            refused = {i for i, idxs in enumerate(keyed) if any(tombstone(h) in hit for _, h in idxs)}
            counts.erased = len(refused)
            counts.erased_rows = [numbers[i] for i in sorted(refused)]
            keep_rows = [i for i in range(len(records)) if i not in refused]
            records = [records[i] for i in keep_rows]
            keyed = [keyed[i] for i in keep_rows]
            lookups = [lookups[i] for i in keep_rows]
            numbers = [numbers[i] for i in keep_rows]
    existing = lookup_indexes(session, (h for idxs in keyed for _, h in idxs))
    groups, owners = _group(keyed, existing)
    stored = _load(session, sorted({c for cids in owners.values() for c in cids}))
    splits = _splits(session, {c for cids in owners.values() if len(cids) > 1 for c in cids})
    for root in list(groups):
        problem = _conflict(
            groups[root],
            sorted(owners.get(root, ())),
            records,
            keyed,
            existing,
            stored=stored,
            splits=splits,
            layout=layout,
            cipher=cipher,
        )
        if problem is not None:
            counts.conflicts.append(
                {
                    "rows": [numbers[i] for i in groups[root]],
                    "customers": sorted(owners.get(root, ())),
                    "fields": problem[0],
                    "reason": problem[1],
                }
            )
            del groups[root]
    counts.written = sum(len(m) for m in groups.values())
    fresh = [root for root in groups if not owners.get(root)]
    next_id = allocate_ids(session, len(fresh)) if fresh else 0
    target: dict[int, int] = {}
    for root in groups:
        cids = sorted(owners.get(root, ()))
        if cids:
            target[root] = cids[0]
            linking = [k for i in groups[root] for k, h in keyed[i] if h in existing]
            for other in cids[1:]:
                counts.merges.append(
                    merge_customer(
                        session,
                        cipher,
                        cids[0],
                        other,
                        now=now,
                        run_id=run_id,
                        matched_by=linking,
                        rows=[numbers[i] for i in groups[root]],
                    )
                )
                counts.merged += 1
                stored.pop(other, None)
        else:
            target[root], next_id = next_id, next_id + 1
    if any(len(owners.get(r, ())) > 1 for r in groups):
        stored = _load(session, sorted({target[r] for r in groups if owners.get(r)}))  # after the folds
    old_ids = sorted({target[r] for r in groups if owners.get(r)})
    new_customers: list[dict[str, Any]] = []
    new_attrs: list[dict[str, Any]] = []
    new_pii: list[dict[str, Any]] = []
    plain: list[tuple[str, str]] = []  # (row key, text) of each new_pii row, encrypted below
    new_idents: dict[str, dict[str, Any]] = {}
    new_lookups: dict[tuple[str, int], dict[str, Any]] = {}
    for root, members in groups.items():
        cid = target[root]
        # A duplicate is a row that joins a customer under an identifier not yet known for it;
        # a row re-delivered with only known identifiers is not one (re-ingesting stays at 0).
        seen: dict[str, str] = {
            h: k for h, k in ((h, k) for i in members for k, h in keyed[i]) if h in existing
        }
        joined = 0
        desired: dict[str, Value] = {}
        for i in sorted(members):
            desired.update({k: v for k, v in records[i].items() if v is not None})
            brought = [h for _, h in keyed[i] if h not in seen]
            if brought and (owners.get(root) or joined):
                linked = [k for k, h in keyed[i] if h in seen]
                counts.merges.append(
                    _record_merge(
                        session,
                        kept=cid,
                        merged=0,
                        kind="rows",
                        matched_by=linked,
                        detail={
                            "rows": [numbers[i]],
                            "identifiers": brought,
                            "lookups": [[h, k] for k, h in lookups[i]],
                            "fields": sorted(f for f, v in records[i].items() if v is not None),
                        },
                        now=now,
                        run_id=run_id,
                    )
                )
                counts.merged += 1
            elif not brought and not owners.get(root) and joined:
                # The same identifiers twice in one file: a duplicate row, nothing to separate later.
                counts.merges.append(
                    _record_merge(
                        session,
                        kept=cid,
                        merged=0,
                        kind="rows",
                        matched_by=[k for k, _ in keyed[i]],
                        detail={"rows": [numbers[i]], "identifiers": [], "lookups": [], "fields": []},
                        now=now,
                        run_id=run_id,
                    )
                )
                counts.merged += 1
            if brought or not owners.get(root):
                joined += 1
            for kind, h in keyed[i]:
                seen.setdefault(h, kind)
                if existing.get(h) is None and h not in new_idents:
                    new_idents[h] = {"kind": kind, "index": h, "customer_id": cid}
            for kind, h in lookups[i]:
                new_lookups.setdefault((h, cid), {"index": h, "customer_id": cid, "kind": kind})
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
    if new_lookups:
        known = _known_lookups(session, {h for h, _ in new_lookups})
        for key in known:
            new_lookups.pop(key, None)
    for model, rows in (
        (Customer, new_customers),
        (Attribute, new_attrs),
        (PiiValue, new_pii),
        (Identifier, list(new_idents.values())),
        (LookupIndex, list(new_lookups.values())),
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
    counts.written -= counts.unchanged  # a row that changed nothing was not written
    return counts


def _erased(session: Session, digests: set[str]) -> set[str]:
    wanted = sorted(digests)
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        found.update(session.scalars(sa.select(ErasedIndex.digest).where(ErasedIndex.digest.in_(part))))
    return found


def _splits(session: Session, ids: set[int]) -> set[tuple[int, int]]:
    if not ids:
        return set()
    rows = session.execute(sa.select(Split.low_id, Split.high_id).where(Split.low_id.in_(sorted(ids))))
    return {(int(a), int(b)) for a, b in rows}


def _known_lookups(session: Session, indexes: set[str]) -> set[tuple[str, int]]:
    wanted = sorted(indexes)
    found: set[tuple[str, int]] = set()
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        rows = session.execute(
            sa.select(LookupIndex.index, LookupIndex.customer_id).where(LookupIndex.index.in_(part))
        )
        found.update((str(i), int(c)) for i, c in rows)
    return found


def lookup_unique(session: Session, indexes: Iterable[str]) -> dict[str, int]:
    """Customer id per lookup-only index that names exactly one customer (a shared phone names none)."""
    wanted = sorted(set(indexes))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        rows = session.execute(
            sa.select(LookupIndex.index, sa.func.min(LookupIndex.customer_id))
            .where(LookupIndex.index.in_(part))
            .group_by(LookupIndex.index)
            .having(sa.func.count() == 1)
        )
        found.update((str(i), int(c)) for i, c in rows)
    return found


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
