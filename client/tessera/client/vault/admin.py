"""Operator actions on one node's vault: erase (right to be forgotten), lookup, retention purge.

Every action is written to the node's audit log with the internal customer id, the identifier
*kind* and counts — never the identifier or any other PII.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tessera.client.vault._model import (
    Attribute,
    Customer,
    Event,
    Identifier,
    PiiValue,
    Tombstone,
    Transaction,
)
from tessera.client.vault._writer import pii_context, utc
from tessera.client.vault.identity import KINDS, IdentityIndex
from tessera.client.vault.mapping import ColumnMap
from tessera.client.vault.normalise import BadValue, parse_value
from tessera.core.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from tessera.client.vault.state import NodeState

_PER_CUSTOMER = (PiiValue, Identifier, Attribute, Transaction, Event)


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
    found = session.scalar(
        sa.select(Identifier.customer_id).where(Identifier.index == identity.index(kind, str(normalised)))
    )
    if found is None:
        raise NotFound(f"no customer in this vault matches the given {kind.replace('_', ' ')}")
    return int(found)


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
        removed = _remove(session, customer_id)
        session.add(
            Tombstone(
                time=datetime.now(UTC),
                customer_id=customer_id,
                reason="erasure",
                matched_by=kind,
                rows_removed=removed,
            )
        )
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
