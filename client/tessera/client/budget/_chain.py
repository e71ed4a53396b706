"""The budget tables checked against the egress hash chain (see ``ledger`` on chaining).

A round's charge is committed with its release's egress entry (``egress_seq``); a reservation and
its release are chained as ``budget.reserve`` / ``budget.release`` entries. Whoever edits the budget
tables to free budget — deletes a charge or a reservation, lowers a ρ — leaves the chain pointing
at something that is no longer there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.budget._schema import BudgetChargeRow, BudgetReservationRow
from tessera.client.egress import EgressEntry


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def check(sessions: sessionmaker[Session], entries: Sequence[EgressEntry]) -> str | None:
    with sessions.begin() as session:
        reservations = {r.id: r for r in session.scalars(sa.select(BudgetReservationRow))}
        by_job = {r.job_id[:128]: r for r in reservations.values()}
        charges = list(session.scalars(sa.select(BudgetChargeRow)))
    by_seq = {e.seq: e for e in entries}
    charged: dict[str, list[float]] = {}
    for charge in charges:
        owner = reservations.get(charge.reservation_id)
        if owner is None:
            return f"budget charge {charge.id} belongs to no reservation"
        charged.setdefault(owner.job_id[:128], []).append(charge.rho)
        if charge.egress_seq is None:
            continue
        entry = by_seq.get(charge.egress_seq)
        if (
            entry is None
            or entry.record.job_id != owner.job_id[:128]
            or not _close(entry.record.rho, charge.rho)
        ):
            return (
                f"the budget charge of job {owner.job_id!r} round {charge.round_no} does not match "
                f"egress entry {charge.egress_seq}: the budget ledger was edited"
            )
    for entry in entries:
        record = entry.record
        if record.stage == "budget.reserve":
            row = by_job.get(record.job_id)
            if row is None or not _close(float(record.noise.get("rho_reserved", -1.0)), row.rho):
                return (
                    f"egress entry {entry.seq} reserved budget for job {record.job_id!r} but the budget "
                    "ledger holds no such reservation: it was removed or edited"
                )
        elif record.stage == "budget.release":
            row = by_job.get(record.job_id)
            if row is None or row.state == "reserved":
                return (
                    f"egress entry {entry.seq} released job {record.job_id!r} but its reservation is "
                    "missing or open again: the budget ledger was edited"
                )
        elif record.rho > 0 and not any(_close(record.rho, rho) for rho in charged.get(record.job_id, [])):
            return (
                f"egress entry {entry.seq} released data of job {record.job_id!r} at rho {record.rho:.3g} "
                "but the budget ledger holds no such charge: it was removed or edited"
            )
    return None


def check_engine(engine: sa.Engine, entries: Sequence[EgressEntry]) -> str | None:
    """:func:`check` on a node database; None when it holds no budget ledger yet."""
    if not sa.inspect(engine).has_table(BudgetReservationRow.__tablename__):
        return None
    return check(sessionmaker(engine, expire_on_commit=False), entries)
