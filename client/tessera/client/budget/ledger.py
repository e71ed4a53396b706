"""The node's privacy-budget ledger: reserve before reading data, charge with the egress record.

Lifecycle of a DP task on one dataset (DESIGN §4):

1. ``reserve`` when the task arrives, before any data is read: the job's (ε, δ) becomes ρ, the
   per-job and rolling-period limits are checked and a reservation row is written, atomically. A
   refusal raises :class:`BudgetRefused` (a ``PolicyViolation``) — the node's veto.
2. ``commit`` (or ``commit_and_send``) when the noisy, masked payload is ready: the reservation
   becomes a spent charge and the payload is appended to the egress ledger in ONE transaction; only
   then may the payload leave.
3. ``release`` if the job is vetoed, fails or times out. A reservation nobody settles stops
   counting after ``reservation_ttl`` (default one hour); committing it later re-checks the budget.

Concurrency: every writer first locks the dataset's row in ``budget_datasets`` (SQLite: the
database write lock; PostgreSQL: a row lock; see ``_store``) and only then reads what is spent and
reserved, so writers of one dataset queue across threads and processes and two reservations can
never both take the last of a budget. ``commit`` then locks the egress head (the egress ledger's
own lock), always in this order, so the two locks cannot deadlock each other.
The egress ledger passed to ``commit`` must use the same database as this ledger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.budget import _store
from tessera.client.budget._accounting import (
    Capacity,
    as_charge,
    check_request,
    composed_epsilon,
    fits,
    job_rho,
    largest_job,
)
from tessera.client.budget._schema import BudgetEntryRow
from tessera.client.budget.records import (
    DELTA_EXCEEDED,
    EPSILON_PER_JOB_EXCEEDED,
    PERIOD_EXHAUSTED,
    BudgetRefused,
    BudgetStatus,
    Reservation,
    ReservationState,
)
from tessera.client.egress import EgressEntry, EgressLedger, EgressRecord
from tessera.core.dp import Charge
from tessera.core.errors import Conflict, InvalidRequest
from tessera.core.policy.model import PrivacyLimits

T = TypeVar("T")
Clock = Callable[[], datetime]
_MAX_NAME = 128
# A release may cost a hair more than its reservation through float rounding of the same maths.
_RHO_SLACK = 1e-9


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME:
        raise InvalidRequest(f"a budget {what} must be text of 1 to {_MAX_NAME} characters")
    return value


class BudgetLedger:
    """Reserve, charge, release and report one node's privacy budget per dataset."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        limits: PrivacyLimits,
        policy_hash: str,
        clock: Clock = _utcnow,
        reservation_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        if not isinstance(policy_hash, str) or not policy_hash:
            raise InvalidRequest("the budget ledger needs the policy hash of the policy it enforces")
        if reservation_ttl <= timedelta(0):
            raise InvalidRequest("the reservation time-to-live must be positive")
        self._engine = engine
        self._capacity = Capacity.of(limits)
        self._policy_hash = policy_hash
        self._clock = clock
        self._ttl = reservation_ttl
        self._period = timedelta(days=limits.period_days)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.create_tables(engine)

    @staticmethod
    def create_tables(engine: sa.Engine) -> None:
        """Create the budget tables if missing (idempotent, safe for processes starting together).

        ``tessera.client.budget.metadata`` holds them for migrations.
        """
        _store.create_tables(engine)

    @property
    def limits(self) -> PrivacyLimits:
        return self._capacity.limits

    # -- writing -----------------------------------------------------------------------------------

    def reserve(
        self, *, job_id: str, dataset: str, epsilon: float, delta: float, now: datetime | None = None
    ) -> Reservation:
        """Hold (ε, δ) of ``dataset``'s budget for ``job_id``; call BEFORE reading any data.

        ``delta = 0`` asks for pure ε-DP (charged ρ = ε²/2). Raises :class:`BudgetRefused` with
        code ``budget.epsilon_per_job_exceeded``, ``budget.delta_exceeded`` or
        ``budget.period_exhausted`` and changes nothing. Repeating a reserve with the same (ε, δ)
        returns the same reservation (a released or expired one is taken up again if it still
        fits); a repeat with other (ε, δ) raises ``Conflict``. Cost: one short write transaction.
        """
        _check_name("job id", job_id)
        _check_name("dataset name", dataset)
        check_request(epsilon, delta)
        limits = self._capacity.limits
        if epsilon > limits.epsilon_per_job:
            raise BudgetRefused(
                f"The job asks for epsilon {epsilon:g} but this node allows at most "
                f"{limits.epsilon_per_job:g} per job, so nothing was reserved.",
                code=EPSILON_PER_JOB_EXCEEDED,
            )
        if delta > limits.delta:
            raise BudgetRefused(
                f"The job asks for delta {delta:g} but this node allows at most {limits.delta:g}, "
                "so nothing was reserved.",
                code=DELTA_EXCEEDED,
            )
        # The bisection runs before the lock is taken, so other writers never wait for it.
        new = as_charge(rho=job_rho(epsilon=epsilon, delta=delta), epsilon=epsilon, delta=delta)
        moment = self._now(now)

        def work(session: Session) -> Reservation:
            row = _store.find_job(session, dataset, job_id)
            if row is not None:
                if (row.epsilon, row.delta) != (epsilon, delta):
                    raise Conflict("this job already holds a reservation of a different size")
                current = _store.reservation_of(row, moment)
                if current.state in (ReservationState.RESERVED, ReservationState.SPENT):
                    return current
            used = self._used(session, dataset, moment, exclude=None if row is None else row.id)
            if not fits(used, new, self._capacity):
                raise self._exhausted(dataset, epsilon, used)
            if row is None:
                row = BudgetEntryRow(dataset=dataset, job_id=job_id, epsilon=epsilon, delta=delta)
                session.add(row)
            row.state = ReservationState.RESERVED.value
            row.rho = new.rho
            row.policy_hash = self._policy_hash
            row.created_at = moment
            row.expires_at = moment + self._ttl
            row.settled_at = None
            session.flush()
            return _store.reservation_of(row, moment)

        return _store.run_locked(self._sessions, dataset, moment, work)

    def commit(
        self,
        reservation: Reservation,
        *,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        now: datetime | None = None,
    ) -> EgressEntry:
        """Spend ``reservation`` and append ``record`` for ``payload`` in ONE transaction.

        If either fails, neither happens. ``record`` must belong to the reservation's job and cost
        at most the reserved ρ; the full reserved ρ is charged. A reservation that expired is
        charged only if the period can still take it. Send the payload only after this returns
        (see :meth:`commit_and_send`). Raises ``Conflict`` if already spent or released.
        """
        if not isinstance(reservation, Reservation):
            raise TypeError("reservation must be a Reservation")
        if not isinstance(record, EgressRecord):
            raise TypeError("record must be an EgressRecord")
        if record.job_id != reservation.job_id:
            raise InvalidRequest("the egress record belongs to another job than the reservation")
        if record.rho > reservation.rho * (1 + _RHO_SLACK):
            raise InvalidRequest("the release costs more privacy budget than its reservation holds")
        moment = self._now(now)

        def work(session: Session) -> EgressEntry:
            row = _store.row_of(session, reservation)
            current = _store.reservation_of(row, moment)
            if current.state in (ReservationState.SPENT, ReservationState.RELEASED):
                raise Conflict(f"this reservation is already {current.state.value}")
            if current.state is ReservationState.EXPIRED:
                used = self._used(session, row.dataset, moment, exclude=row.id)
                if not fits(used, _store.charge_of(row), self._capacity):
                    raise self._exhausted(row.dataset, row.epsilon, used)
            row.state = ReservationState.SPENT.value
            row.settled_at = moment
            session.flush()
            entry = egress.record(record, payload, session=session)
            row.egress_seq = entry.seq
            session.flush()
            return entry

        return _store.run_locked(self._sessions, reservation.dataset, moment, work)

    def commit_and_send(
        self,
        reservation: Reservation,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        send: Callable[[bytes], T],
    ) -> T:
        """:meth:`commit`, then ``send(payload)``; nothing is sent if the commit fails.

        If ``send`` fails the charge and the entry stay: a release that may have left is paid for.
        """
        self.commit(reservation, egress=egress, record=record, payload=payload)
        return send(payload)

    def release(self, reservation: Reservation, *, now: datetime | None = None) -> Reservation:
        """Give back a reservation that will not be used (vetoed, failed, timed out).

        Idempotent for released ones; raises ``Conflict`` for a spent one (a charge is final).
        """
        if not isinstance(reservation, Reservation):
            raise TypeError("reservation must be a Reservation")
        moment = self._now(now)

        def work(session: Session) -> Reservation:
            row = _store.row_of(session, reservation)
            if row.state == ReservationState.SPENT.value:
                raise Conflict("a spent reservation cannot be released")
            if row.state == ReservationState.RESERVED.value:
                row.state = ReservationState.RELEASED.value
                row.settled_at = moment
                session.flush()
            return _store.reservation_of(row, moment)

        return _store.run_locked(self._sessions, reservation.dataset, moment, work)

    # -- reading -----------------------------------------------------------------------------------

    def remaining(self, dataset: str, *, now: datetime | None = None) -> BudgetStatus:
        """The budget of ``dataset`` over the rolling period ending now (see :class:`BudgetStatus`)."""
        _check_name("dataset name", dataset)
        moment = self._now(now)
        with self._sessions.begin() as session:
            rows = _store.window_rows(session, dataset, moment, self._period)
        spent = [_store.charge_of(r) for r in rows if r.state == ReservationState.SPENT.value]
        held = [_store.charge_of(r) for r in rows if r.state == ReservationState.RESERVED.value]
        limits = self._capacity.limits
        return BudgetStatus(
            dataset=dataset,
            rho_spent=math.fsum(c.rho for c in spent),
            rho_reserved=math.fsum(c.rho for c in held),
            rho_limit=self._capacity.rho_limit,
            epsilon_spent=composed_epsilon(spent, delta=limits.delta),
            epsilon_left=max(
                0.0, limits.epsilon_per_period - composed_epsilon(spent + held, delta=limits.delta)
            ),
            largest_job_epsilon=largest_job(spent + held, self._capacity),
            epsilon_limit=limits.epsilon_per_period,
            delta=limits.delta,
            period_start=moment - self._period,
            period_end=moment,
            releases=len(spent),
            reservations=len(held),
        )

    def history(self, dataset: str, *, now: datetime | None = None) -> list[Reservation]:
        """Every reservation and charge of ``dataset`` ever made, oldest first."""
        _check_name("dataset name", dataset)
        moment = self._now(now)
        query = sa.select(BudgetEntryRow).where(BudgetEntryRow.dataset == dataset).order_by(BudgetEntryRow.id)
        with self._sessions.begin() as session:
            return [_store.reservation_of(row, moment) for row in session.scalars(query)]

    # -- internals ---------------------------------------------------------------------------------

    def _now(self, now: datetime | None) -> datetime:
        moment = self._clock() if now is None else now
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise InvalidRequest("budget times need a time zone")
        return moment.astimezone(UTC)

    def _used(self, session: Session, dataset: str, moment: datetime, *, exclude: int | None) -> list[Charge]:
        rows = _store.window_rows(session, dataset, moment, self._period, exclude=exclude)
        return [_store.charge_of(r) for r in rows]

    def _exhausted(self, dataset: str, epsilon: float, used: list[Charge]) -> BudgetRefused:
        limits = self._capacity.limits
        return BudgetRefused(
            f"The {limits.period_days}-day privacy budget of dataset {dataset!r} cannot cover epsilon "
            f"{epsilon:g}: the largest job it can take now is epsilon "
            f"{largest_job(used, self._capacity):.3g} of {limits.epsilon_per_period:g} per period.",
            code=PERIOD_EXHAUSTED,
        )
