"""The node's privacy-budget ledger: reserve before reading data, charge each round with its egress record.

The unit of privacy is one customer of the node, across all its datasets (DESIGN §4), so the node
has ONE budget: every release of any dataset is charged to it; the dataset a job reads is recorded
on its reservation for the history, nothing more.

Lifecycle of a DP job (one round or many):

1. ``reserve`` when the job arrives, before any data is read: the job's total ρ — every round
   composed (ρ adds in zCDP), given as ``rho`` or derived from the job's (ε, δ) — is checked
   against the per-job and rolling-period limits and held, atomically. A refusal raises
   :class:`BudgetRefused` (a ``PolicyViolation``): the node's veto.
2. ``charge`` (or ``charge_and_send``) each round when its noisy, masked payload is ready: the
   round's ρ is spent from the reservation and the payload appended to the egress ledger in ONE
   transaction; only then may the payload leave. A round charged again (re-sent after a
   coordinator restart) is not charged twice. ``commit`` charges a one-round job in one piece.
3. ``release`` (or its alias ``finish``) when the job ends, successfully or not: what was charged
   stays spent, the unspent rest is given back.

Expiry: an open reservation nobody charges or releases stops holding its remainder after
``reservation_ttl`` (default one hour). Every charge (and a repeated ``reserve``) renews the
time-to-live, so a job of many rounds stays covered as long as no gap between its rounds is longer
than the TTL; charging after it expired re-checks that the whole remainder still fits the period.

Concurrency: every writer first locks the node's row in ``budget_node`` (SQLite: the database
write lock; PostgreSQL: a row lock; see ``_store``) and only then reads what is spent and reserved,
so writers queue across threads and processes and two reservations can never both take the last of
the budget. A charge then locks the egress head (the egress ledger's own lock), always in this
order, so the two locks cannot deadlock. The egress ledger passed in must use this ledger's database.

Chained: given ``egress=`` (the node does), a reservation and a release are appended to the egress
hash chain too (stage ``budget.reserve`` / ``budget.release``, nothing sent, ρ 0 — the rounds'
charges are already chained with their releases), in the same transaction. :meth:`verify_against`
then checks the budget tables against the chain: a deleted or edited reservation or charge is
named, however the tables were rewritten, as long as the chain itself verifies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.budget import _chain, _migrate, _store
from tessera.client.budget._accounting import (
    RHO_SLACK,
    Capacity,
    as_charge,
    check_plan,
    composed_epsilon,
    fits,
    largest_job,
    round_epsilon,
)
from tessera.client.budget._requests import check_job_limits, check_name, check_release, check_round
from tessera.client.budget._schema import BudgetChargeRow, BudgetReservationRow
from tessera.client.budget.records import (
    PERIOD_EXHAUSTED,
    RESERVATION_EXCEEDED,
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


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BudgetLedger:
    """Reserve, charge, release and report the node's one privacy budget (all datasets together)."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        limits: PrivacyLimits,
        policy_hash: str,
        clock: Clock = _utcnow,
        reservation_ttl: timedelta = timedelta(hours=1),
        egress: EgressLedger | None = None,
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
        self._egress = egress
        _migrate.ensure_schema(engine, now=self._now(None))

    @staticmethod
    def create_tables(engine: sa.Engine) -> None:
        """Create the budget tables, or upgrade a per-dataset (version 1) ledger to one budget per
        node, keeping every reservation and charge (see ``_migrate``). Idempotent, transactional,
        safe for processes starting together. ``tessera.client.budget.metadata`` holds the tables."""
        _migrate.ensure_schema(engine, now=_utcnow())

    @property
    def limits(self) -> PrivacyLimits:
        return self._capacity.limits

    # -- writing -----------------------------------------------------------------------------------

    def reserve(
        self,
        *,
        job_id: str,
        epsilon: float,
        delta: float,
        rho: float | None = None,
        rounds: int = 1,
        dataset: str | None = None,
        analyst: str = "",
        now: datetime | None = None,
    ) -> Reservation:
        """Hold a job's total cost of the node's budget; call BEFORE reading any data.

        ``epsilon``/``delta`` are what the job states (``delta = 0``: pure ε-DP, one round, charged
        ρ = ε²/2). ``rho`` is the job's priced total over its ``rounds`` rounds (zCDP: the rounds'
        ρ add); without it the largest ρ meeting (ε, δ) is held. ``dataset`` is recorded only.
        The per-job and rolling-period limits are checked against the job's TOTAL. Raises
        :class:`BudgetRefused` (``budget.epsilon_per_job_exceeded``, ``budget.delta_exceeded``,
        ``budget.period_exhausted``) and changes nothing. Idempotent per job: repeating it with the
        same arguments returns the same reservation (renewing its time-to-live while open; an
        expired one, or a released one nothing was charged to, is taken up again if it still
        fits); other arguments raise ``Conflict``, as does a job that was released after spending.
        """
        check_name("job id", job_id)
        if dataset is not None:
            check_name("dataset name", dataset)
        total = check_plan(epsilon=epsilon, delta=delta, rho=rho, rounds=rounds)  # bisection: no lock held
        check_job_limits(self._capacity.limits, epsilon=epsilon, delta=delta)
        moment = self._now(now)

        def work(session: Session) -> Reservation:
            row = _store.find_job(session, job_id)
            if row is not None:
                same = (row.epsilon, row.delta, row.rounds, row.dataset) == (epsilon, delta, rounds, dataset)
                if not same or not math.isclose(row.rho, total, rel_tol=RHO_SLACK):
                    raise Conflict("this job already holds a reservation of a different size or dataset")
                current = _store.load(session, row, moment)
                if current.state is ReservationState.RESERVED:
                    row.expires_at = moment + self._ttl
                    return _store.load(session, row, moment)
                if current.state is ReservationState.SPENT:
                    return current
                if current.state is ReservationState.RELEASED and current.charges:
                    raise Conflict("this job already ended on this node; its unspent budget was given back")
                need = _store.hold_of(row, current.rho_spent, len(current.charges))
            else:
                need = as_charge(rho=total, epsilon=epsilon, delta=delta)
            used = self._used(session, moment, exclude=None if row is None else row.id)
            if not fits(used, need, self._capacity):
                raise self._exhausted(epsilon, used)
            if row is None:
                row = BudgetReservationRow(
                    job_id=job_id, dataset=dataset, epsilon=epsilon, delta=delta, rho=total, rounds=rounds
                )
                row.created_at = moment
                session.add(row)
            row.state = ReservationState.RESERVED.value
            row.policy_hash = self._policy_hash
            row.expires_at = moment + self._ttl
            row.settled_at = None
            self._chain(
                session,
                "budget.reserve",
                row,
                {"rho_reserved": float(row.rho), "rounds": row.rounds},
                analyst=analyst,
            )
            return _store.load(session, row, moment)

        return _store.run_locked(self._sessions, work)

    def charge(
        self,
        reservation: Reservation,
        *,
        round_no: int,
        rho: float,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        now: datetime | None = None,
    ) -> EgressEntry:
        """Spend ``rho`` of ``reservation`` for round ``round_no`` and append ``record`` for
        ``payload``, in ONE transaction: if either fails, neither happens. Send only after this returns.

        ``record`` must be of the reservation's job and of round ``round_no``, and cost at most
        ``rho``. Refuses with ``BudgetRefused`` (``budget.reservation_exceeded``), writing nothing,
        if ``rho`` exceeds what the job still holds or every priced round was already charged; an
        expired reservation is charged only if its whole remainder still fits the period
        (``budget.period_exhausted``). Renews the reservation's time-to-live. When nothing is left
        the reservation closes as spent.

        Idempotent per (job, round): charging a round again with the same ``rho`` charges nothing
        more but still appends the egress record of the new payload (a round re-run with fresh
        keys, e.g. after a coordinator restart). This is sound only because the earlier attempt
        can never be unmasked: the caller must have dropped that attempt's secrets. Another ``rho``
        for a charged round raises ``Conflict``, as does any charge of a released reservation.
        """
        check_release(reservation, record, rho=rho)
        check_round(round_no, record)
        return self._charge(
            reservation, round_no, rho, egress=egress, record=record, payload=payload, now=now
        )

    def commit(
        self,
        reservation: Reservation,
        *,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        now: datetime | None = None,
    ) -> EgressEntry:
        """Charge a one-round job's whole reservation (as round 1) with ``record``, in ONE transaction.

        The same as :meth:`charge` with ``round_no=1`` and ``rho=reservation.rho`` (the record may
        carry any round number): committing again appends the record but charges nothing more.
        """
        check_release(reservation, record, rho=reservation.rho)
        if reservation.rounds != 1:
            raise InvalidRequest("a job of several rounds is charged round by round (charge), not committed")
        return self._charge(
            reservation, 1, reservation.rho, egress=egress, record=record, payload=payload, now=now
        )

    def charge_and_send(
        self,
        reservation: Reservation,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        send: Callable[[bytes], T],
        *,
        round_no: int,
        rho: float,
    ) -> T:
        """:meth:`charge`, then ``send(payload)``; nothing is sent if the charge fails.

        If ``send`` fails the charge and the entry stay: a release that may have left is paid for.
        """
        self.charge(reservation, round_no=round_no, rho=rho, egress=egress, record=record, payload=payload)
        return send(payload)

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
        """End a job's reservation: rounds charged stay spent, the unspent rest is given back.

        Call it when the job ends, whether it finished, was vetoed, failed or timed out. The
        reservation closes as ``spent`` if nothing was left, else ``released``. Idempotent: a closed
        reservation is returned as it is.
        """
        if not isinstance(reservation, Reservation):
            raise TypeError("reservation must be a Reservation")
        moment = self._now(now)

        def work(session: Session) -> Reservation:
            row = _store.row_of(session, reservation)
            if _store.is_open(row):
                spent = _store.spent_of(session, row.id)
                left = row.rho - spent
                done = left <= RHO_SLACK * row.rho
                row.state = (ReservationState.SPENT if done else ReservationState.RELEASED).value
                row.settled_at = moment
                noise = {"rho_spent": float(spent), "rho_returned": float(max(left, 0.0))}
                self._chain(session, "budget.release", row, noise)
            return _store.load(session, row, moment)

        return _store.run_locked(self._sessions, work)

    def finish(self, reservation: Reservation, *, now: datetime | None = None) -> Reservation:
        """The same as :meth:`release`: the name reads better when a job ends successfully."""
        return self.release(reservation, now=now)

    # -- reading -----------------------------------------------------------------------------------

    def remaining(self, *, now: datetime | None = None) -> BudgetStatus:
        """The node's budget over the rolling period ending now (see :class:`BudgetStatus`)."""
        moment = self._now(now)
        with self._sessions.begin() as session:
            spent, held = _store.window(session, moment, self._period)
        limits = self._capacity.limits
        return BudgetStatus(
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

    def history(self, *, job_id: str | None = None, now: datetime | None = None) -> list[Reservation]:
        """Every reservation ever made (or ``job_id``'s), oldest first, with its round charges."""
        moment = self._now(now)
        query = sa.select(BudgetReservationRow).order_by(BudgetReservationRow.id)
        if job_id is not None:
            query = query.where(BudgetReservationRow.job_id == check_name("job id", job_id))
        with self._sessions.begin() as session:
            rows = list(session.scalars(query))
            charges = _store.charges_of(session, [r.id for r in rows])
            return [_store.reservation_of(row, charges[row.id], moment) for row in rows]

    def verify_against(self, egress: EgressLedger) -> str | None:
        """Check the budget tables against the egress chain (verify the chain first); returns the
        first discrepancy as a sentence, or None. Every release in the chain must have its charge,
        every charge its chained release, every chained reservation its row."""
        return _chain.check(self._sessions, egress.entries())

    # -- internals ---------------------------------------------------------------------------------

    def _chain(
        self,
        session: Session,
        stage: str,
        row: BudgetReservationRow,
        noise: dict[str, float | int],
        *,
        analyst: str = "",
    ) -> None:
        if self._egress is None:
            return
        record = EgressRecord(
            job_id=row.job_id[:128],
            round=0,
            stage=stage,
            purpose="budget",
            analysis="budget",
            fields=(),
            shape=(),
            noise=noise,
            rho=0.0,
            epsilon=0.0,
            delta=0.0,
            policy_hash=self._policy_hash,
            analyst=analyst[:128],
        )
        self._egress.record(record, b"", session=session)  # nothing leaves: an empty payload

    def _charge(
        self,
        reservation: Reservation,
        round_no: int,
        rho: float,
        *,
        egress: EgressLedger,
        record: EgressRecord,
        payload: bytes,
        now: datetime | None,
    ) -> EgressEntry:
        """The locked part of charge and commit (arguments already checked)."""
        epsilon = round_epsilon(
            rho=rho, reserved_rho=reservation.rho, epsilon=reservation.epsilon, delta=reservation.delta
        )
        moment = self._now(now)

        def work(session: Session) -> EgressEntry:
            row = _store.row_of(session, reservation)
            done = _store.charge_row(session, row.id, round_no)
            if row.state == ReservationState.RELEASED.value:
                raise Conflict("this job's reservation was released; it can be charged no more")
            if done is not None:
                if not math.isclose(done.rho, rho, rel_tol=RHO_SLACK):
                    raise Conflict(f"round {round_no} of this job was already charged another rho")
                entry = egress.record(record, payload, session=session)
                done.attempts += 1
                done.egress_seq = entry.seq
                if _store.is_open(row):
                    row.expires_at = moment + self._ttl
                session.flush()
                return entry
            if not _store.is_open(row):
                raise Conflict(f"this reservation is already {row.state}")
            current = _store.load(session, row, moment)
            left = row.rho - current.rho_spent
            if rho > left + RHO_SLACK * row.rho or len(current.charges) >= row.rounds:
                raise BudgetRefused(
                    f"Round {round_no} would spend rho {rho:.3g} but job {row.job_id!r} holds only "
                    f"{max(left, 0.0):.3g} for {row.rounds - len(current.charges)} more round(s) of the "
                    f"{row.rounds} it reserved, so nothing was charged.",
                    code=RESERVATION_EXCEEDED,
                )
            if current.state is ReservationState.EXPIRED:
                used = self._used(session, moment, exclude=row.id)
                hold = _store.hold_of(row, current.rho_spent, len(current.charges))
                if not fits(used, hold, self._capacity):
                    raise self._exhausted(row.epsilon, used)
            charge = BudgetChargeRow(
                reservation_id=row.id, round_no=round_no, rho=float(rho), epsilon=epsilon, attempts=1
            )
            charge.charged_at = moment
            session.add(charge)
            session.flush()
            entry = egress.record(record, payload, session=session)
            charge.egress_seq = entry.seq
            row.expires_at = moment + self._ttl
            if left - rho <= RHO_SLACK * row.rho:
                row.state = ReservationState.SPENT.value
                row.settled_at = moment
            session.flush()
            return entry

        return _store.run_locked(self._sessions, work)

    def _now(self, now: datetime | None) -> datetime:
        moment = self._clock() if now is None else now
        if not isinstance(moment, datetime) or moment.tzinfo is None:
            raise InvalidRequest("budget times need a time zone")
        return moment.astimezone(UTC)

    def _used(self, session: Session, moment: datetime, *, exclude: int | None) -> list[Charge]:
        spent, held = _store.window(session, moment, self._period, exclude=exclude)
        return spent + held

    def _exhausted(self, epsilon: float, used: list[Charge]) -> BudgetRefused:
        limits = self._capacity.limits
        return BudgetRefused(
            f"The {limits.period_days}-day privacy budget of this node's customers cannot cover "
            f"epsilon {epsilon:g}: the largest job it can take now is epsilon "
            f"{largest_job(used, self._capacity):.3g} of {limits.epsilon_per_period:g} per period.",
            code=PERIOD_EXHAUSTED,
        )
