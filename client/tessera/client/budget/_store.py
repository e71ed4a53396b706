"""SQL plumbing of the budget ledger: table creation, the per-dataset lock, window queries.

Every write runs through :func:`run_locked`, whose first statement UPDATEs the dataset's row in
``budget_datasets``: on SQLite that takes the database write lock at once (a transaction that read
first could not always be upgraded to a writer later), on PostgreSQL it takes a row lock that the
other writers of the same dataset queue behind. Only then are spent and reserved charges read, so
the check and the write that follows are atomic across threads and processes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.budget._accounting import as_charge
from tessera.client.budget._schema import BudgetBase, BudgetDatasetRow, BudgetEntryRow
from tessera.client.budget.records import Reservation, ReservationState
from tessera.core.dp import Charge
from tessera.core.errors import NotFound, StoreError

T = TypeVar("T")


def utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def create_tables(engine: sa.Engine) -> None:
    """Create the budget tables if missing; safe when several processes start at once.

    ``create_all`` checks, then creates, so a rival may create a table in between. Each such
    failure means one more table exists, so one attempt per table plus one always ends with every
    table in place (or raises the real error).
    """
    for _ in range(len(BudgetBase.metadata.sorted_tables)):
        try:
            BudgetBase.metadata.create_all(engine)
            return
        except DBAPIError:
            continue  # a rival created a table we had found missing: check again
    BudgetBase.metadata.create_all(engine)


def run_locked(
    sessions: sessionmaker[Session], dataset: str, moment: datetime, work: Callable[[Session], T]
) -> T:
    """Run ``work`` in one transaction that holds ``dataset``'s lock from its first statement.

    The dataset row is made on first use (in its own short transaction) and the lock retried.
    """
    for _ in range(2):
        with sessions.begin() as session:
            if lock_dataset(session, dataset):
                return work(session)
        _add_dataset(sessions, dataset, moment)
    raise StoreError("the budget ledger could not create its dataset row; its tables are damaged")


def lock_dataset(session: Session, dataset: str) -> bool:
    """Lock ``dataset``'s row (a no-op UPDATE); False if the row does not exist yet."""
    table = cast(sa.Table, BudgetDatasetRow.__table__)
    stmt = sa.update(table).where(table.c.dataset == dataset).values(writes=table.c.writes + 1)
    return cast(sa.CursorResult[Any], session.execute(stmt)).rowcount == 1


def _add_dataset(sessions: sessionmaker[Session], dataset: str, moment: datetime) -> None:
    try:
        with sessions.begin() as session:
            session.add(BudgetDatasetRow(dataset=dataset, created_at=moment, writes=0))
    except IntegrityError:
        pass  # another writer created it first: the same row we wanted.


def window_rows(
    session: Session, dataset: str, moment: datetime, period: timedelta, *, exclude: int | None = None
) -> list[BudgetEntryRow]:
    """Charges spent in the rolling period ``(moment - period, ...]`` and unexpired reservations."""
    e = BudgetEntryRow
    query = sa.select(e).where(
        e.dataset == dataset,
        sa.or_(
            sa.and_(e.state == ReservationState.SPENT.value, e.settled_at > moment - period),
            sa.and_(e.state == ReservationState.RESERVED.value, e.expires_at > moment),
        ),
    )
    if exclude is not None:
        query = query.where(e.id != exclude)
    return list(session.scalars(query))


def find_job(session: Session, dataset: str, job_id: str) -> BudgetEntryRow | None:
    query = sa.select(BudgetEntryRow).where(
        BudgetEntryRow.dataset == dataset, BudgetEntryRow.job_id == job_id
    )
    return session.scalars(query).one_or_none()


def row_of(session: Session, reservation: Reservation) -> BudgetEntryRow:
    """The stored row of ``reservation``, fresh from the database (call with the lock held)."""
    row = session.get(BudgetEntryRow, reservation.reservation_id, populate_existing=True)
    if row is None or (row.dataset, row.job_id) != (reservation.dataset, reservation.job_id):
        raise NotFound("this reservation is not in the budget ledger")
    return row


def charge_of(row: BudgetEntryRow) -> Charge:
    return as_charge(rho=row.rho, epsilon=row.epsilon, delta=row.delta)


def reservation_of(row: BudgetEntryRow, moment: datetime) -> Reservation:
    """The row as a frozen :class:`Reservation`, its state as of ``moment`` (expired is derived)."""
    state = ReservationState(row.state)
    if state is ReservationState.RESERVED and utc(row.expires_at) <= moment:
        state = ReservationState.EXPIRED
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
        egress_seq=row.egress_seq,
    )
