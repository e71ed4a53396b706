"""Budget ledger on SQLite and PostgreSQL: one budget per node, limits, rolling period, ρ composition,
atomic commit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, T0, Clock, never_send, record_for

from tessera.client.budget import (
    DELTA_EXCEEDED,
    EPSILON_PER_JOB_EXCEEDED,
    PERIOD_EXHAUSTED,
    BudgetLedger,
    BudgetRefused,
    ReservationState,
)
from tessera.client.egress import EgressLedger
from tessera.core.dp import rho_for, rho_to_epsilon
from tessera.core.errors import Conflict, InvalidRequest, PolicyViolation, StoreError
from tessera.core.policy.model import PrivacyLimits

DS = "customers"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def budget(engine: sa.Engine, clock: Clock) -> BudgetLedger:
    return BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)


@pytest.fixture
def egress(engine: sa.Engine, clock: Clock) -> EgressLedger:
    return EgressLedger(engine, clock=clock)


def _spend(budget: BudgetLedger, egress: EgressLedger, job: str, epsilon: float = 0.5) -> None:
    reservation = budget.reserve(job_id=job, dataset=DS, epsilon=epsilon, delta=DELTA)
    budget.commit(reservation, egress=egress, record=record_for(reservation), payload=job.encode())


def _snapshot(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM budget_reservations ORDER BY id")).all()
        charges = conn.execute(sa.text("SELECT * FROM budget_charges ORDER BY id")).all()
        egress_rows = conn.execute(sa.text("SELECT seq, hash FROM egress_ledger ORDER BY seq")).all()
    return [tuple(r) for r in [*rows, *charges, *egress_rows]]


def test_per_job_limits_are_refused_before_anything_is_written(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine
) -> None:
    with pytest.raises(BudgetRefused) as too_much:
        budget.reserve(job_id="big", dataset=DS, epsilon=0.6, delta=DELTA)
    assert too_much.value.code == EPSILON_PER_JOB_EXCEEDED and isinstance(too_much.value, PolicyViolation)
    assert "at most 0.5 per job" in too_much.value.message
    with pytest.raises(BudgetRefused) as loose:
        budget.reserve(job_id="loose", dataset=DS, epsilon=0.1, delta=1e-5)
    assert loose.value.code == DELTA_EXCEEDED
    assert budget.history() == [] and _snapshot(engine) == []
    assert budget.remaining().largest_job_epsilon == pytest.approx(0.5)


def test_period_exhaustion_over_several_jobs_changes_nothing(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine
) -> None:
    for job in ("j1", "j2", "j3"):
        _spend(budget, egress, job)
    before = _snapshot(engine)
    with pytest.raises(BudgetRefused) as refused:
        budget.reserve(job_id="j4", dataset=DS, epsilon=0.5, delta=DELTA)
    assert refused.value.code == PERIOD_EXHAUSTED
    assert "largest job it can take now is epsilon" in refused.value.message
    assert _snapshot(engine) == before and len(egress.entries()) == 3 and egress.verify().ok
    status = budget.remaining()
    assert status.releases == 3 and status.reservations == 0
    assert 0 < status.largest_job_epsilon < 0.5
    # A smaller job that fits the remainder is still accepted.
    small = budget.reserve(job_id="j4", dataset=DS, epsilon=status.largest_job_epsilon * 0.99, delta=DELTA)
    assert small.state is ReservationState.RESERVED
    # Another dataset of the node draws on the same budget: its customers are the same people.
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="t1", dataset="transactions", epsilon=0.5, delta=DELTA)


def test_rho_composes_and_epsilon_shown_is_converted(budget: BudgetLedger, egress: EgressLedger) -> None:
    _spend(budget, egress, "a")
    _spend(budget, egress, "b")
    status = budget.remaining()
    rho_half = rho_for(epsilon=0.5, delta=DELTA)
    assert status.rho_spent == pytest.approx(2 * rho_half, rel=1e-12)
    # Two ε=0.5 releases cost ε≈0.72 composed, not the naive 1.0.
    assert status.epsilon_spent == pytest.approx(rho_to_epsilon(2 * rho_half, delta=DELTA), rel=1e-9)
    assert 0.6 < status.epsilon_spent < 0.8
    assert status.epsilon_left == pytest.approx(1.0 - status.epsilon_spent)
    # A third ε=0.5 job fits although the naive sum 1.5 would exceed the period's ε = 1.
    _spend(budget, egress, "c")
    assert budget.remaining().epsilon_spent <= 1.0
    assert [e.record.rho for e in egress.entries()] == [pytest.approx(rho_half)] * 3


def test_pure_jobs_compose_by_sum_of_epsilon(engine: sa.Engine, clock: Clock) -> None:
    limits = PrivacyLimits(epsilon_per_job=0.5, epsilon_per_period=1.0, period_days=7, delta=DELTA)
    budget = BudgetLedger(engine, limits=limits, policy_hash=POLICY_HASH, clock=clock)
    for job in ("p1", "p2"):
        assert budget.reserve(job_id=job, dataset=DS, epsilon=0.5, delta=0.0).rho == pytest.approx(0.125)
    assert budget.remaining().largest_job_epsilon == 0.0
    with pytest.raises(BudgetRefused) as refused:
        budget.reserve(job_id="p3", dataset=DS, epsilon=0.1, delta=0.0)
    assert refused.value.code == PERIOD_EXHAUSTED


def test_period_window_rolls(budget: BudgetLedger, egress: EgressLedger, clock: Clock) -> None:
    for day, job in ((0, "d0"), (10, "d10"), (20, "d20")):
        clock.now = T0 + timedelta(days=day)
        _spend(budget, egress, job)
    clock.now = T0 + timedelta(days=29, hours=23)
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="late", dataset=DS, epsilon=0.5, delta=DELTA)
    clock.now = T0 + timedelta(days=30, seconds=1)  # the day-0 charge has left the window
    status = budget.remaining()
    assert status.releases == 2 and status.period_start == clock.now - timedelta(days=30)
    assert (
        budget.reserve(job_id="late", dataset=DS, epsilon=0.5, delta=DELTA).state is ReservationState.RESERVED
    )
    # An explicit ``now`` overrides the clock: back then the period was full.
    assert budget.remaining(now=T0 + timedelta(days=21)).releases == 3


def test_commit_failure_in_egress_rolls_back_the_charge(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine
) -> None:
    reservation = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)
    with engine.begin() as conn:  # damage the egress ledger: its append now fails
        head = conn.execute(sa.text("SELECT id, seq, hash FROM egress_head")).one()
        conn.execute(sa.text("DELETE FROM egress_head"))
    with pytest.raises(StoreError):
        budget.commit_and_send(reservation, egress, record_for(reservation), b"v", never_send())
    assert budget.history()[0].state is ReservationState.RESERVED
    assert budget.remaining().rho_spent == 0 and egress.entries() == []
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO egress_head (id, seq, hash) VALUES (:i, :s, :h)"),
            dict(zip("ish", head, strict=True)),
        )
    entry = budget.commit(reservation, egress=egress, record=record_for(reservation), payload=b"v")
    assert budget.history()[0].egress_seq == entry.seq == 1 and egress.verify().ok


def test_failure_after_the_egress_append_rolls_back_both(
    budget: BudgetLedger, egress: EgressLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    reservation = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)
    real = egress.record

    def append_then_fail(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # the entry is written inside the shared transaction...
        raise StoreError("disk full")  # ...and must vanish with the charge

    monkeypatch.setattr(egress, "record", append_then_fail)
    with pytest.raises(StoreError):
        budget.commit(reservation, egress=egress, record=record_for(reservation), payload=b"v")
    monkeypatch.undo()
    assert egress.entries() == [] and egress.head()[0] == 0
    assert budget.remaining().rho_spent == 0 and budget.remaining().reservations == 1


def test_send_happens_after_both_are_committed(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine, clock: Clock
) -> None:
    observer = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
    reservation = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)

    def send(payload: bytes) -> str:
        # Separate readers already see the charge and the entry when the bytes go out.
        assert observer.remaining().releases == 1 and len(EgressLedger(engine).entries()) == 1
        return "sent"

    assert budget.commit_and_send(reservation, egress, record_for(reservation), b"vector", send) == "sent"


def test_commit_rejects_mismatch_and_never_charges_twice(budget: BudgetLedger, egress: EgressLedger) -> None:
    reservation = budget.reserve(job_id="j", dataset=DS, epsilon=0.25, delta=DELTA)
    with pytest.raises(InvalidRequest):
        budget.commit(reservation, egress=egress, record=record_for(reservation, job_id="x"), payload=b"v")
    with pytest.raises(InvalidRequest):
        costly = record_for(reservation, rho=reservation.rho * 2)
        budget.commit(reservation, egress=egress, record=costly, payload=b"v")
    budget.commit(reservation, egress=egress, record=record_for(reservation), payload=b"v")
    # Committing again (the round re-sent) records the new payload but charges nothing more.
    budget.commit(reservation, egress=egress, record=record_for(reservation), payload=b"v2")
    assert len(egress.entries()) == 2 and budget.remaining().releases == 1
    assert budget.remaining().rho_spent == pytest.approx(reservation.rho, rel=1e-15)
    # Releasing a spent reservation changes nothing (a charge is final).
    assert budget.release(reservation).state is ReservationState.SPENT
    [job] = budget.history()
    assert job.rho_spent == reservation.rho and job.charges[0].attempts == 2 and job.egress_seq == 2


def test_reserve_is_idempotent(budget: BudgetLedger, egress: EgressLedger) -> None:
    first = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)
    again = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)
    assert again == first and budget.remaining().reservations == 1
    with pytest.raises(Conflict):
        budget.reserve(job_id="j", dataset=DS, epsilon=0.4, delta=DELTA)
    budget.commit(first, egress=egress, record=record_for(first), payload=b"v")
    spent = budget.reserve(job_id="j", dataset=DS, epsilon=0.5, delta=DELTA)
    assert spent.reservation_id == first.reservation_id and spent.state is ReservationState.SPENT
    assert budget.remaining().rho_spent == pytest.approx(first.rho)


def test_release_frees_budget(budget: BudgetLedger) -> None:
    held = [budget.reserve(job_id=f"j{i}", dataset=DS, epsilon=0.5, delta=DELTA) for i in range(3)]
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="j3", dataset=DS, epsilon=0.5, delta=DELTA)
    released = budget.release(held[1])
    assert released.state is ReservationState.RELEASED and released.settled_at == T0
    assert budget.release(held[1]) == released  # idempotent
    assert (
        budget.reserve(job_id="j3", dataset=DS, epsilon=0.5, delta=DELTA).state is ReservationState.RESERVED
    )
    # Taking up a released job again re-checks the budget, which is full now.
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="j1", dataset=DS, epsilon=0.5, delta=DELTA)
    assert [r.state.value for r in budget.history()] == ["reserved", "released", "reserved", "reserved"]
    assert [r.dataset for r in budget.history()] == [DS] * 4


def test_expired_reservations_stop_counting(engine: sa.Engine, egress: EgressLedger, clock: Clock) -> None:
    budget = BudgetLedger(
        engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock, reservation_ttl=timedelta(minutes=10)
    )
    stale = [budget.reserve(job_id=f"s{i}", dataset=DS, epsilon=0.5, delta=DELTA) for i in range(3)]
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="fresh", dataset=DS, epsilon=0.5, delta=DELTA)
    clock.now = T0 + timedelta(minutes=10)
    assert budget.remaining().reservations == 0
    assert budget.history()[0].state is ReservationState.EXPIRED
    fresh = [budget.reserve(job_id=f"f{i}", dataset=DS, epsilon=0.5, delta=DELTA) for i in range(2)]
    # A late commit of an expired reservation is charged only while the period can take it.
    budget.commit(stale[0], egress=egress, record=record_for(stale[0]), payload=b"late")
    with pytest.raises(BudgetRefused) as refused:
        budget.commit(stale[1], egress=egress, record=record_for(stale[1]), payload=b"too late")
    assert refused.value.code == PERIOD_EXHAUSTED and len(egress.entries()) == 1
    # Repeating the reserve of an expired job takes it up again when there is room.
    budget.release(fresh[0])
    again = budget.reserve(job_id="s1", dataset=DS, epsilon=0.5, delta=DELTA)
    assert again.reservation_id == stale[1].reservation_id and again.state is ReservationState.RESERVED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": float("nan")},
        {"epsilon": True},
        {"delta": -1e-9},
        {"delta": 1.0},
        {"job_id": ""},
        {"dataset": "x" * 129},
    ],
)
def test_bad_requests_are_invalid(budget: BudgetLedger, kwargs: dict[str, Any]) -> None:
    request: dict[str, Any] = {"job_id": "j", "dataset": DS, "epsilon": 0.5, "delta": DELTA, **kwargs}
    with pytest.raises(InvalidRequest):
        budget.reserve(**request)
    assert budget.history() == []


def test_dataset_is_optional_and_only_recorded(budget: BudgetLedger) -> None:
    plain = budget.reserve(job_id="j", epsilon=0.5, delta=DELTA)
    assert plain.dataset is None and budget.reserve(job_id="j", epsilon=0.5, delta=DELTA) == plain
    with pytest.raises(Conflict):  # the same job cannot come back reading something else
        budget.reserve(job_id="j", dataset="transactions", epsilon=0.5, delta=DELTA)


def test_naive_times_are_refused(budget: BudgetLedger) -> None:
    with pytest.raises(InvalidRequest):
        budget.remaining(now=T0.replace(tzinfo=None))
