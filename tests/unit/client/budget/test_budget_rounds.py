"""Jobs of many rounds: the total is reserved once, each round charged with its egress record,
a re-sent round is never charged twice, an early end gives back the rest (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, T0, Clock, record_for

from tessera.client.budget import (
    EPSILON_PER_JOB_EXCEEDED,
    PERIOD_EXHAUSTED,
    RESERVATION_EXCEEDED,
    BudgetLedger,
    BudgetRefused,
    Reservation,
    ReservationState,
)
from tessera.client.budget._accounting import job_rho
from tessera.client.egress import EgressLedger
from tessera.core.errors import Conflict, InvalidRequest, StoreError

# A k-means-like job: ε = 0.5 stated, its plan priced three rounds of unequal ρ (adding up to it).
TOTAL = job_rho(epsilon=0.5, delta=DELTA)
ROUNDS = (TOTAL * 0.5, TOTAL * 0.3, TOTAL * 0.2)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def budget(engine: sa.Engine, clock: Clock) -> BudgetLedger:
    return BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)


@pytest.fixture
def egress(engine: sa.Engine, clock: Clock) -> EgressLedger:
    return EgressLedger(engine, clock=clock)


def _reserve(budget: BudgetLedger, job: str = "km", rho: float | None = None) -> Reservation:
    return budget.reserve(
        job_id=job,
        dataset="customers",
        epsilon=0.5,
        delta=DELTA,
        rho=sum(ROUNDS) if rho is None else rho,
        rounds=3,
    )


def _charge(
    budget: BudgetLedger,
    egress: EgressLedger,
    r: Reservation,
    round_no: int,
    rho: float,
    payload: bytes = b"v",
) -> int:
    record = record_for(r, round_no, rho=rho)
    return budget.charge(r, round_no=round_no, rho=rho, egress=egress, record=record, payload=payload).seq


def _snapshot(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for table in ("budget_reservations", "budget_charges", "egress_ledger")
            for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))
        ]


def test_per_round_charges_add_up_to_exactly_what_was_charged(
    budget: BudgetLedger, egress: EgressLedger, clock: Clock
) -> None:
    r = _reserve(budget)
    assert (r.rho, r.rounds, r.state) == (sum(ROUNDS), 3, ReservationState.RESERVED)
    assert budget.remaining().rho_reserved == pytest.approx(sum(ROUNDS), rel=1e-15)
    seqs = []
    for round_no, rho in enumerate(ROUNDS, start=1):
        clock.now = T0 + timedelta(minutes=10 * round_no)
        seqs.append(_charge(budget, egress, r, round_no, rho))
        status = budget.remaining()
        assert status.rho_spent == pytest.approx(math.fsum(ROUNDS[:round_no]), rel=1e-15)
        assert status.rho_spent + status.rho_reserved == pytest.approx(sum(ROUNDS), rel=1e-12)
    [job] = budget.history()
    assert [(c.round_no, c.rho, c.attempts) for c in job.charges] == [
        (1, ROUNDS[0], 1),
        (2, ROUNDS[1], 1),
        (3, ROUNDS[2], 1),
    ]
    assert [c.egress_seq for c in job.charges] == seqs and job.egress_seq == seqs[-1]
    assert [c.charged_at for c in job.charges] == [T0 + timedelta(minutes=m) for m in (10, 20, 30)]
    # Everything reserved is spent: the reservation closed itself, nothing is held any more.
    assert job.state is ReservationState.SPENT and job.rho_spent == math.fsum(ROUNDS) and job.rho_left == 0
    assert budget.remaining().rho_reserved == 0 and budget.remaining().releases == 3
    # The egress ledger shows each round with its own ρ.
    assert [(e.record.round, e.record.rho) for e in egress.entries()] == list(enumerate(ROUNDS, start=1))
    assert budget.finish(job).state is ReservationState.SPENT  # idempotent


def test_the_job_total_is_checked_against_per_job_and_period_limits(budget: BudgetLedger) -> None:
    # The rounds together may not cost more than the stated ε allows...
    with pytest.raises(InvalidRequest):
        budget.reserve(job_id="x", epsilon=0.5, delta=DELTA, rho=TOTAL * 1.01, rounds=3)
    # ...and the stated ε is checked against the per-job limit (0.5), whatever the rounds.
    with pytest.raises(BudgetRefused) as over:
        budget.reserve(job_id="x", epsilon=0.6, delta=DELTA, rho=TOTAL, rounds=3)
    assert over.value.code == EPSILON_PER_JOB_EXCEEDED
    # Three full ε = 0.5 totals fit the period (≈ 0.0244 ρ); a fourth job's TOTAL does not, although
    # one of its rounds alone would.
    for job in ("a", "b", "c"):
        _reserve(budget, job, rho=TOTAL)
    with pytest.raises(BudgetRefused) as full:
        _reserve(budget, "d", rho=TOTAL)
    assert full.value.code == PERIOD_EXHAUSTED
    assert budget.reserve(job_id="d1", epsilon=0.1, delta=DELTA, rho=ROUNDS[2] / 10, rounds=1).rho > 0
    assert [r.job_id for r in budget.history()] == ["a", "b", "c", "d1"]


def test_a_round_charged_again_is_not_charged_twice(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine
) -> None:
    r = _reserve(budget)
    first = _charge(budget, egress, r, 1, ROUNDS[0], b"attempt-1")
    # The coordinator restarted; the round re-runs with fresh keys and a new payload.
    second = _charge(budget, egress, r, 1, ROUNDS[0], b"attempt-2")
    assert second == first + 1 and len(egress.entries()) == 2 and egress.verify().ok
    [job] = budget.history()
    assert len(job.charges) == 1 and job.charges[0].attempts == 2 and job.charges[0].egress_seq == second
    assert budget.remaining().rho_spent == ROUNDS[0]
    # Another ρ for the same round is a contradiction: refused, nothing written.
    before = _snapshot(engine)
    with pytest.raises(Conflict):
        _charge(budget, egress, r, 1, ROUNDS[0] * 2)
    assert _snapshot(engine) == before


def test_a_round_over_what_is_left_is_refused_and_writes_nothing(
    budget: BudgetLedger, egress: EgressLedger, engine: sa.Engine
) -> None:
    r = _reserve(budget)
    _charge(budget, egress, r, 1, ROUNDS[0])
    before = _snapshot(engine)
    with pytest.raises(BudgetRefused) as over:
        _charge(budget, egress, r, 2, ROUNDS[1] + ROUNDS[2] + TOTAL * 0.01)
    assert over.value.code == RESERVATION_EXCEEDED and _snapshot(engine) == before
    _charge(budget, egress, r, 2, ROUNDS[1] / 2)
    _charge(budget, egress, r, 3, ROUNDS[2])
    # All three priced rounds are charged: a fourth is refused even though ρ is left.
    before = _snapshot(engine)
    with pytest.raises(BudgetRefused) as extra:
        _charge(budget, egress, r, 4, ROUNDS[1] / 4)
    assert extra.value.code == RESERVATION_EXCEEDED and _snapshot(engine) == before


def test_an_early_end_frees_what_the_job_did_not_use(budget: BudgetLedger, egress: EgressLedger) -> None:
    held = [_reserve(budget, job, rho=TOTAL) for job in ("a", "b", "c")]
    with pytest.raises(BudgetRefused):
        _reserve(budget, "d", rho=TOTAL * 0.7)
    _charge(budget, egress, held[0], 1, ROUNDS[0])  # converged after one round
    ended = budget.release(held[0])
    assert ended.state is ReservationState.RELEASED and ended.rho_spent == ROUNDS[0] and ended.rho_left == 0
    assert budget.release(ended) == ended  # idempotent
    status = budget.remaining()
    assert status.rho_spent == ROUNDS[0] and status.rho_reserved == pytest.approx(2 * TOTAL, rel=1e-15)
    # The freed half is there for another job; the spent half stays spent.
    assert _reserve(budget, "d", rho=TOTAL * 0.7).state is ReservationState.RESERVED
    # An ended job takes no more rounds and cannot come back.
    with pytest.raises(Conflict):
        _charge(budget, egress, held[0], 2, ROUNDS[1])
    with pytest.raises(Conflict):
        _charge(budget, egress, held[0], 1, ROUNDS[0])
    with pytest.raises(Conflict):
        _reserve(budget, "a", rho=TOTAL)


def test_each_charge_renews_the_reservation(engine: sa.Engine, egress: EgressLedger, clock: Clock) -> None:
    budget = BudgetLedger(
        engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock, reservation_ttl=timedelta(minutes=10)
    )
    r = _reserve(budget)
    assert r.expires_at == T0 + timedelta(minutes=10)
    clock.now = T0 + timedelta(minutes=9)
    _charge(budget, egress, r, 1, ROUNDS[0])
    clock.now = T0 + timedelta(minutes=15)  # past the first deadline, within the renewed one
    [job] = budget.history()
    assert job.state is ReservationState.RESERVED and job.expires_at == T0 + timedelta(minutes=19)
    assert budget.remaining().rho_reserved == pytest.approx(ROUNDS[1] + ROUNDS[2], rel=1e-12)
    # A repeated reserve (e.g. a heartbeat from the runner) renews it too.
    assert _reserve(budget).expires_at == T0 + timedelta(minutes=25)


def test_an_expired_job_is_charged_only_if_its_remainder_still_fits(
    engine: sa.Engine, egress: EgressLedger, clock: Clock
) -> None:
    budget = BudgetLedger(
        engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock, reservation_ttl=timedelta(minutes=10)
    )
    slow = _reserve(budget, "slow", rho=TOTAL)
    _charge(budget, egress, slow, 1, ROUNDS[0])
    clock.now = T0 + timedelta(hours=1)  # its remainder stopped counting; others took the room
    assert budget.history(job_id="slow")[0].state is ReservationState.EXPIRED
    assert budget.remaining().rho_spent == ROUNDS[0] and budget.remaining().rho_reserved == 0
    others = [_reserve(budget, job, rho=TOTAL) for job in ("a", "b", "c")]
    before = _snapshot(engine)
    with pytest.raises(BudgetRefused) as late:
        _charge(budget, egress, slow, 2, ROUNDS[1])
    assert late.value.code == PERIOD_EXHAUSTED and _snapshot(engine) == before
    budget.release(others[0])
    _charge(budget, egress, slow, 2, ROUNDS[1])  # room again: charged, and held once more
    assert budget.history(job_id="slow")[0].state is ReservationState.RESERVED


def test_a_failing_egress_append_rolls_back_the_round(
    budget: BudgetLedger, egress: EgressLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = _reserve(budget)
    real = egress.record

    def append_then_fail(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise StoreError("disk full")

    monkeypatch.setattr(egress, "record", append_then_fail)
    with pytest.raises(StoreError):
        _charge(budget, egress, r, 1, ROUNDS[0])
    monkeypatch.undo()
    assert egress.entries() == [] and budget.history()[0].charges == ()
    assert budget.remaining().rho_spent == 0 and budget.remaining().rho_reserved == pytest.approx(
        TOTAL, rel=1e-12
    )
    _charge(budget, egress, r, 1, ROUNDS[0])
    assert budget.history()[0].charges[0].egress_seq == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"round_no": 2}, InvalidRequest),  # the record says round 1
        ({"round_no": -1}, InvalidRequest),
        ({"round_no": True}, InvalidRequest),
        ({"rho": 0.0}, InvalidRequest),
        ({"rho": float("inf")}, InvalidRequest),
        ({"rho": ROUNDS[0] / 2}, InvalidRequest),  # the record costs more than the round is charged
    ],
)
def test_bad_charges_are_invalid(
    budget: BudgetLedger, egress: EgressLedger, change: dict[str, Any], error: type[Exception]
) -> None:
    r = _reserve(budget)
    call: dict[str, Any] = {"round_no": 1, "rho": ROUNDS[0], **change}
    with pytest.raises(error):
        budget.charge(r, egress=egress, record=record_for(r, 1, rho=ROUNDS[0]), payload=b"v", **call)
    assert budget.history()[0].charges == () and egress.entries() == []


def test_bad_plans_are_invalid(budget: BudgetLedger, egress: EgressLedger) -> None:
    with pytest.raises(InvalidRequest):  # several rounds are accounted in zCDP: they need δ > 0
        budget.reserve(job_id="p", epsilon=0.5, delta=0.0, rounds=2)
    with pytest.raises(InvalidRequest):
        budget.reserve(job_id="p", epsilon=0.5, delta=DELTA, rounds=0)
    with pytest.raises(InvalidRequest):
        budget.reserve(job_id="p", epsilon=0.5, delta=DELTA, rho=-1.0, rounds=2)
    r = _reserve(budget)
    with pytest.raises(InvalidRequest):  # commit is for one-round jobs
        budget.commit(r, egress=egress, record=record_for(r), payload=b"v")
    with pytest.raises(Conflict):  # the same job cannot be re-priced
        budget.reserve(job_id="km", dataset="customers", epsilon=0.5, delta=DELTA, rho=TOTAL * 0.9, rounds=3)
