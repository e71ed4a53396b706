"""SQL plumbing of the budget ledger: the node lock, window queries, rows to records.

Every write runs through :func:`run_locked`, whose first statement UPDATEs the node's one row in
``budget_node``: on SQLite that takes the database write lock at once (a transaction that read
first could not always be upgraded to a writer later), on PostgreSQL it takes a row lock that every
other budget writer of the node queues behind, whatever dataset its job reads. Only then are spent
and reserved charges read, so the check and the write that follows are atomic across threads and
processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.budget._accounting import as_charge
from tessera.client.budget._schema import NODE_ROW_ID, BudgetChargeRow, BudgetNodeRow, BudgetReservationRow
from tessera.client.budget.records import Reservation, ReservationState, RoundCharge
from tessera.core.dp import Charge
from tessera.core.errors import NotFound, StoreError

T = TypeVar("T")
_R, _C = BudgetReservationRow, BudgetChargeRow


def utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_locked(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction that holds the node's budget lock from its first statement."""
    with sessions.begin() as session:
        table = cast(sa.Table, BudgetNodeRow.__table__)
        lock = sa.update(table).where(table.c.id == NODE_ROW_ID).values(writes=table.c.writes + 1)
        if cast(sa.CursorResult[Any], session.execute(lock)).rowcount != 1:
            raise StoreError("the budget ledger has no node row; its tables are damaged")
        return work(session)


def is_open(row: BudgetReservationRow) -> bool:
    return row.state == ReservationState.RESERVED.value


def spent_of(session: Session, reservation_id: int) -> float:
    """ρ charged so far to one reservation (every round, whenever charged)."""
    total = session.scalar(sa.select(sa.func.sum(_C.rho)).where(_C.reservation_id == reservation_id))
    return float(total or 0.0)


def hold_of(row: BudgetReservationRow, spent: float, charged_rounds: int) -> Charge:
    """The unspent remainder an open reservation holds, as a charge (ε for pure jobs only matters)."""
    left = max(0.0, row.rho - spent)
    # A pure job's remainder after a partial charge is a pure release of ρ = ε²/2.
    epsilon = math.sqrt(2 * left) if row.delta == 0 and charged_rounds else row.epsilon
    return as_charge(rho=left, epsilon=epsilon, delta=row.delta)


def window(
    session: Session, moment: datetime, period: timedelta, *, exclude: int | None = None
) -> tuple[list[Charge], list[Charge]]:
    """(round charges made in ``(moment - period, moment]``, holds of open unexpired reservations).

    ``exclude`` leaves out one reservation's hold (never its charges: those are spent).
    """
    spent_q = (
        sa.select(_C.rho, _C.epsilon, _R.delta)
        .join(_R, _R.id == _C.reservation_id)
        # No upper bound: a charge made "after" an explicit ``now`` still counts (fail closed).
        .where(_C.charged_at > moment - period)
    )
    spent = [as_charge(rho=rho, epsilon=eps, delta=delta) for rho, eps, delta in session.execute(spent_q)]
    open_q = (
        sa.select(_R, sa.func.coalesce(sa.func.sum(_C.rho), 0.0), sa.func.count(_C.id))
        .outerjoin(_C, _C.reservation_id == _R.id)
        .where(_R.state == ReservationState.RESERVED.value, _R.expires_at > moment)
        .group_by(_R.id)
    )
    if exclude is not None:
        open_q = open_q.where(_R.id != exclude)
    held = []
    for row, charged, rounds in session.execute(open_q):
        hold = hold_of(row, float(charged), int(rounds))
        if hold.rho > 0:
            held.append(hold)
    return spent, held


def find_job(session: Session, job_id: str) -> BudgetReservationRow | None:
    return session.scalars(sa.select(_R).where(_R.job_id == job_id)).one_or_none()


def row_of(session: Session, reservation: Reservation) -> BudgetReservationRow:
    """The stored row of ``reservation``, fresh from the database (call with the lock held)."""
    row = session.get(_R, reservation.reservation_id, populate_existing=True)
    if row is None or row.job_id != reservation.job_id:
        raise NotFound("this reservation is not in the budget ledger")
    return row


def charge_row(session: Session, reservation_id: int, round_no: int) -> BudgetChargeRow | None:
    query = sa.select(_C).where(_C.reservation_id == reservation_id, _C.round_no == round_no)
    return session.scalars(query).one_or_none()


def charges_of(session: Session, reservation_ids: list[int]) -> dict[int, list[BudgetChargeRow]]:
    found: dict[int, list[BudgetChargeRow]] = {i: [] for i in reservation_ids}
    if reservation_ids:
        query = sa.select(_C).where(_C.reservation_id.in_(reservation_ids)).order_by(_C.charged_at, _C.id)
        for charge in session.scalars(query):
            found[charge.reservation_id].append(charge)
    return found


def reservation_of(
    row: BudgetReservationRow, charges: list[BudgetChargeRow], moment: datetime
) -> Reservation:
    """The row as a frozen :class:`Reservation`, its state as of ``moment`` (expired is derived)."""
    state = ReservationState(row.state)
    if state is ReservationState.RESERVED and utc(row.expires_at) <= moment:
        state = ReservationState.EXPIRED
    rounds = tuple(
        RoundCharge(
            round_no=c.round_no,
            rho=c.rho,
            epsilon=c.epsilon,
            charged_at=utc(c.charged_at),
            egress_seq=c.egress_seq,
            attempts=c.attempts,
        )
        for c in charges
    )
    latest = max(charges, key=lambda c: (utc(c.charged_at), c.id), default=None)
    return Reservation(
        reservation_id=row.id,
        job_id=row.job_id,
        dataset=row.dataset,
        epsilon=row.epsilon,
        delta=row.delta,
        rho=row.rho,
        state=state,
        policy_hash=row.policy_hash,
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        settled_at=None if row.settled_at is None else utc(row.settled_at),
        egress_seq=None if latest is None else latest.egress_seq,
        rounds=row.rounds,
        charges=rounds,
    )


def load(session: Session, row: BudgetReservationRow, moment: datetime) -> Reservation:
    session.flush()
    return reservation_of(row, charges_of(session, [row.id])[row.id], moment)
