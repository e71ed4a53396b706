"""Operator actions on one node's vault: erase (right to be forgotten), lookup, retention purge,
and undoing a One ID merge (``unmerge``).

Erasure keeps a tombstone: each of the customer's match keys keyed again
(:meth:`IdentityIndex.tombstone`), so the next ingest refuses rows of that customer instead of
bringing them back — without keeping anything that reveals or joins on the identifiers.

Every action is written to the node's audit log with the internal customer id, the identifier
*kind* and counts — never the identifier or any other PII.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tessera.client.vault._model import (
    Attribute,
    Customer,
    ErasedIndex,
    Event,
    Identifier,
    LookupIndex,
    Merge,
    MergeDetail,
    PiiValue,
    Split,
    Tombstone,
    Transaction,
)
from tessera.client.vault._writer import CUSTOMER_COLUMNS, allocate_ids, pii_context, utc
from tessera.client.vault.identity import KINDS, IdentityIndex
from tessera.client.vault.mapping import ColumnMap
from tessera.client.vault.normalise import BadValue, parse_value
from tessera.core.errors import Conflict, InvalidRequest, NotFound

if TYPE_CHECKING:
    from tessera.client.vault.state import NodeState

_PER_CUSTOMER = (PiiValue, Identifier, LookupIndex, Attribute, Transaction, Event)


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """One customer decrypted for an authorised operator (shown on the node, never stored)."""

    customer_id: int
    pii: dict[str, str]
    attributes: dict[str, Any]
    transactions: int
    events: int


def _find(session: Session, identity: IdentityIndex, kind: str, value: str, region: str | None) -> int:
    if kind not in KINDS:
        raise InvalidRequest(f"an identifier kind must be one of {', '.join(KINDS)}")
    try:
        normalised = parse_value(
            ColumnMap("lookup", kind, "string", identifier=kind), value, zone=UTC, default_region=region
        )
    except BadValue as bad:
        raise InvalidRequest(f"the given {kind.replace('_', ' ')} cannot be read: {bad.reason}") from None
    if normalised is None:
        raise InvalidRequest(f"the given {kind.replace('_', ' ')} is empty")
    index = identity.index(kind, str(normalised))
    found = session.scalar(sa.select(Identifier.customer_id).where(Identifier.index == index))
    if found is not None:
        return int(found)
    # An identifier that does not merge on its own (a household phone) may name several customers.
    shared = sorted(
        set(session.scalars(sa.select(LookupIndex.customer_id).where(LookupIndex.index == index)))
    )
    if len(shared) > 1:
        raise Conflict(
            f"{len(shared)} customers share the given {kind.replace('_', ' ')}; "
            "name the one you mean by --id, --email or --national-id"
        )
    if not shared:
        raise NotFound(f"no customer in this vault matches the given {kind.replace('_', ' ')}")
    return int(shared[0])


def _remove(session: Session, customer_id: int) -> int:
    removed = 0
    for model in _PER_CUSTOMER:
        result = session.execute(sa.delete(model).where(model.customer_id == customer_id))
        removed += int(result.rowcount)  # type: ignore[attr-defined]
    gone = session.execute(sa.delete(Customer).where(Customer.id == customer_id))
    return removed + int(gone.rowcount)  # type: ignore[attr-defined]


def erase(state: NodeState, kind: str, value: str, *, default_region: str | None = None) -> int:
    """Remove one customer everywhere in the vault and leave a tombstone; returns the rows removed."""
    identity = state.handle(default_region=default_region).identity
    with Session(state.engine) as session, session.begin():
        customer_id = _find(session, identity, kind, value, default_region)
        keys = list(session.scalars(sa.select(Identifier.index).where(Identifier.customer_id == customer_id)))
        removed = _remove(session, customer_id)
        tomb = Tombstone(
            time=datetime.now(UTC),
            customer_id=customer_id,
            reason="erasure",
            matched_by=kind,
            rows_removed=removed,
        )
        session.add(tomb)
        session.flush()
        for digest in sorted({identity.tombstone(k) for k in keys}):
            if session.get(ErasedIndex, digest) is None:
                session.add(ErasedIndex(digest=digest, tombstone_id=tomb.id))
    state.audit("erase", customer=customer_id, matched_by=kind, rows_removed=removed)
    return removed


def lookup(state: NodeState, kind: str, value: str, *, default_region: str | None = None) -> CustomerRecord:
    """Decrypt one customer's record on the node; audited (who, when, which id — not the values)."""
    handle = state.handle(default_region=default_region)
    with Session(state.engine) as session:
        customer_id = _find(session, handle.identity, kind, value, default_region)
        pii = {
            row.field: handle.cipher.decrypt_text(row.token, context=pii_context(customer_id, row.field))
            for row in session.scalars(sa.select(PiiValue).where(PiiValue.customer_id == customer_id))
        }
        customer = session.get(Customer, customer_id)
        attributes: dict[str, Any] = {}
        if customer is not None:
            for name in ("region", "channel", "signup_date", "churned"):
                if getattr(customer, name) is not None:
                    attributes[name] = getattr(customer, name)
        for attr in session.scalars(sa.select(Attribute).where(Attribute.customer_id == customer_id)):
            value_of = attr.num_value if attr.num_value is not None else attr.text_value
            attributes[attr.name] = value_of if value_of is not None else utc(attr.date_value)
        if isinstance(attributes.get("signup_date"), datetime):
            attributes["signup_date"] = utc(attributes["signup_date"])
        counts = [
            session.scalar(sa.select(sa.func.count()).select_from(m).where(m.customer_id == customer_id)) or 0
            for m in (Transaction, Event)
        ]
    state.audit("lookup", customer=customer_id, matched_by=kind, fields=sorted(pii))
    return CustomerRecord(customer_id, pii, attributes, int(counts[0]), int(counts[1]))


@dataclass(frozen=True, slots=True)
class PurgeResult:
    retention_days: int
    cutoff: datetime
    customers: int
    transactions: int
    events: int


def purge(state: NodeState, *, now: datetime | None = None) -> PurgeResult:
    """Apply the policy's ``retention_days``: remove customers not delivered by any ingest since the
    cutoff (with everything they own) and transactions and events ingested before it."""
    moment = now or datetime.now(UTC)
    days = state.policy.retention_days
    cutoff = moment - timedelta(days=days)
    with Session(state.engine) as session, session.begin():
        stale = list(session.scalars(sa.select(Customer.id).where(Customer.last_seen_at < cutoff)))
        for customer_id in stale:
            removed = _remove(session, customer_id)
            session.add(
                Tombstone(
                    time=moment,
                    customer_id=customer_id,
                    reason="retention",
                    matched_by="retention",
                    rows_removed=removed,
                )
            )
        facts = [
            session.execute(sa.delete(m).where(m.seen_at < cutoff)).rowcount  # type: ignore[attr-defined]
            for m in (Transaction, Event)
        ]
    result = PurgeResult(days, cutoff, len(stale), int(facts[0]), int(facts[1]))
    state.audit(
        "purge",
        retention_days=days,
        customers=result.customers,
        transactions=result.transactions,
        events=result.events,
    )
    return result


@dataclass(frozen=True, slots=True)
class MergeInfo:
    merge_id: int
    time: datetime
    kind: str
    kept: int
    merged: int
    matched_by: str
    rows: list[int]
    undone: bool


def merges(state: NodeState, *, customer: int | None = None) -> list[MergeInfo]:
    """The merges One ID recorded (optionally those that kept ``customer``), oldest first."""
    query = sa.select(Merge, MergeDetail).join(MergeDetail, MergeDetail.merge_id == Merge.id, isouter=True)
    if customer is not None:
        query = query.where(Merge.kept_id == customer)
    out = []
    with Session(state.engine) as session:
        for merge, detail in session.execute(query.order_by(Merge.id)).all():
            doc = json.loads(detail.detail) if detail is not None else {}
            out.append(
                MergeInfo(
                    merge.id,
                    utc(merge.time) or merge.time,
                    detail.kind if detail is not None else "customers",
                    merge.kept_id,
                    merge.merged_id,
                    detail.matched_by if detail is not None else "-",
                    list(doc.get("rows", [])),
                    detail is not None and detail.undone_at is not None,
                )
            )
    return out


def unmerge(state: NodeState, merge_id: int, *, now: datetime | None = None) -> int:
    """Undo one merge: the identifiers it brought (and, for two stored customers, the facts and the
    values that came with the merged one) go to a customer of their own, which a later ingest
    never joins to the kept one again. Returns that customer's id."""
    moment = now or datetime.now(UTC)
    cipher = state.keys.cipher()
    with Session(state.engine) as session, session.begin():
        merge = session.get(Merge, merge_id)
        detail = session.get(MergeDetail, merge_id)
        if merge is None:
            raise NotFound(f"no merge {merge_id} in this vault; `tessera node merges` lists them")
        if detail is None:
            raise InvalidRequest(f"merge {merge_id} was recorded before merges could be undone")
        if detail.undone_at is not None:
            raise Conflict(f"merge {merge_id} was already undone")
        doc = json.loads(detail.detail)
        keep = merge.kept_id
        if session.get(Customer, keep) is None:
            raise Conflict(f"customer {keep} of merge {merge_id} no longer exists (erased or purged)")
        if not doc.get("identifiers"):
            raise InvalidRequest(
                f"merge {merge_id} joined rows with the same identifiers; there is nothing to separate"
            )
        if merge.merged_id and session.get(Customer, merge.merged_id) is None:
            new_id = merge.merged_id
        else:
            new_id = allocate_ids(session, 1)
        kept = session.get(Customer, keep)
        assert kept is not None
        moved = set(doc.get("moved", [])) if detail.kind == "customers" else set()
        copied = set(doc.get("fields", [])) - moved
        session.add(
            Customer(
                id=new_id,
                created_at=moment,
                updated_at=moment,
                last_seen_at=kept.last_seen_at,
                **{c: getattr(kept, c) for c in CUSTOMER_COLUMNS if c in moved | copied},
            )
        )
        for c in CUSTOMER_COLUMNS:
            if c in moved:
                setattr(kept, c, None)
        for attr in session.scalars(sa.select(Attribute).where(Attribute.customer_id == keep)).all():
            if attr.name in moved | copied:
                session.add(
                    Attribute(
                        customer_id=new_id,
                        name=attr.name,
                        kind=attr.kind,
                        num_value=attr.num_value,
                        text_value=attr.text_value,
                        date_value=attr.date_value,
                    )
                )
                if attr.name in moved:
                    session.delete(attr)
        for row in session.scalars(sa.select(PiiValue).where(PiiValue.customer_id == keep)).all():
            if row.field in moved | copied:
                plain = cipher.decrypt(row.token, context=pii_context(keep, row.field))
                token = cipher.encrypt(plain, context=pii_context(new_id, row.field))
                session.add(
                    PiiValue(ref=f"{new_id}:{row.field}", customer_id=new_id, field=row.field, token=token)
                )
                if row.field in moved:
                    session.delete(row)
        idents = list(doc.get("identifiers", []))
        session.execute(
            sa.update(Identifier)
            .where(Identifier.customer_id == keep, Identifier.index.in_(idents))
            .values(customer_id=new_id)
        )
        for index, kind in doc.get("lookups", []):
            session.merge(LookupIndex(index=index, customer_id=new_id, kind=kind))
        for model, ids in ((Transaction, doc.get("transactions", [])), (Event, doc.get("events", []))):
            if ids:
                session.execute(
                    sa.update(model)
                    .where(model.customer_id == keep, model.id.in_(ids))
                    .values(customer_id=new_id)
                )
        low, high = sorted((keep, new_id))
        if session.get(Split, (low, high)) is None:
            session.add(Split(low_id=low, high_id=high))
        detail.undone_at = moment
    state.audit("unmerge", merge=merge_id, kept=keep, restored=new_id)
    return new_id
