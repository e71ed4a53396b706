"""Concurrent jobs can never overspend: database locks, not Python locks, serialise the writers
(threads and separate processes, SQLite and PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, Clock, record_for
from _budget_procs import spec_of, spend_job
from _budget_v1 import ENTRIES, OPENED_AT, build_v1

from tessera.client.budget import PERIOD_EXHAUSTED, BudgetLedger, BudgetRefused
from tessera.client.budget._accounting import job_rho
from tessera.client.egress import EgressLedger

THREADS = 8
DS = "customers"


def _race(task: Callable[[int], None]) -> tuple[int, list[str], list[BaseException]]:
    """Run ``task(i)`` on THREADS threads released together; count successes and refusal codes."""
    start = threading.Barrier(THREADS)
    ok: list[int] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            task(i)
            ok.append(i)
        except BudgetRefused as exc:
            refused.append(exc.code)
        except BaseException as exc:  # surfaced by the caller's assertion
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
    return len(ok), refused, errors


def test_eight_concurrent_reservations_when_three_fit(engine: sa.Engine) -> None:
    # Each thread builds its own ledger, as separate node processes would; the dataset row does not
    # exist yet, so its creation races too.
    clock = Clock()

    def task(i: int) -> None:
        ledger = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
        ledger.reserve(job_id=f"job-{i}", dataset=DS, epsilon=0.5, delta=DELTA)

    succeeded, refused, errors = _race(task)
    assert errors == []
    assert succeeded == 3 and refused == [PERIOD_EXHAUSTED] * (THREADS - 3)
    status = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock).remaining()
    assert status.reservations == 3 and status.rho_reserved <= status.rho_limit


def test_eight_concurrent_reserve_and_commit_when_three_fit(engine: sa.Engine) -> None:
    clock = Clock()
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
    egress = EgressLedger(engine, clock=clock)
    sent: list[bytes] = []

    def task(i: int) -> None:
        reservation = budget.reserve(job_id=f"job-{i}", dataset=DS, epsilon=0.5, delta=DELTA)
        record = record_for(reservation)
        budget.commit_and_send(reservation, egress, record, f"payload-{i}".encode(), sent.append)

    succeeded, refused, errors = _race(task)
    assert errors == []
    assert succeeded == 3 == len(sent) and len(refused) == THREADS - 3
    status = budget.remaining()
    assert status.releases == 3 and status.reservations == 0 and status.epsilon_spent <= 1.0
    entries = egress.entries()
    assert len(entries) == 3 and egress.verify().ok
    assert {e.seq for e in entries} == {r.egress_seq for r in budget.history()}


def test_two_jobs_of_many_rounds_race_for_the_last_budget(engine: sa.Engine) -> None:
    clock = Clock()
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
    egress = EgressLedger(engine, clock=clock)
    for job in ("a", "b"):  # two ε = 0.5 jobs spent: room for one more total, not two
        r = budget.reserve(job_id=job, epsilon=0.5, delta=DELTA)
        budget.commit(r, egress=egress, record=record_for(r), payload=b"v")
    total = job_rho(epsilon=0.5, delta=DELTA)

    def task(i: int) -> None:
        r = budget.reserve(job_id=f"km-{i}", dataset=DS, epsilon=0.5, delta=DELTA, rho=total, rounds=4)
        for round_no in range(1, 5):
            record = record_for(r, round_no, rho=total / 4)
            budget.charge(r, round_no=round_no, rho=total / 4, egress=egress, record=record, payload=b"v")

    succeeded, refused, errors = _race(task)
    assert errors == []
    assert succeeded == 1 and refused == [PERIOD_EXHAUSTED] * (THREADS - 1)
    status = budget.remaining()
    assert status.rho_spent == pytest.approx(3 * total, rel=1e-12) and status.rho_spent <= status.rho_limit
    assert status.releases == 2 + 4 and status.reservations == 0 and egress.verify().ok


def test_one_round_charged_by_racing_attempts_is_charged_once(engine: sa.Engine) -> None:
    clock = Clock()
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
    egress = EgressLedger(engine, clock=clock)
    r = budget.reserve(job_id="km", epsilon=0.5, delta=DELTA, rho=0.004, rounds=2)

    def task(i: int) -> None:
        record = record_for(r, 1, rho=0.002)
        budget.charge(r, round_no=1, rho=0.002, egress=egress, record=record, payload=f"attempt-{i}".encode())

    succeeded, refused, errors = _race(task)
    assert errors == [] and refused == [] and succeeded == THREADS
    [job] = budget.history()
    assert len(job.charges) == 1 and job.charges[0].attempts == THREADS and job.rho_spent == 0.002
    assert len(egress.entries()) == THREADS and egress.verify().ok


def _processes(engine: sa.Engine, jobs: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(len(jobs)), ctx.Queue()
    spec = spec_of(engine)
    procs = [ctx.Process(target=spend_job, args=(spec, *job, start, results)) for job in jobs]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


@pytest.mark.slow
def test_processes_can_never_overspend(engine: sa.Engine) -> None:
    # Separate node processes, each with its own engine; the ledger's tables do not exist yet, so
    # creating them races too. Three ε = 0.5 totals fit the period; six processes try.
    EgressLedger(engine)  # the egress ledger's own table creation is not what is tested here
    total = job_rho(epsilon=0.5, delta=DELTA)
    outcomes = _processes(engine, [(f"p-{i}", total, 1 + i % 3) for i in range(6)])
    assert [o for o in outcomes if o[0] == "error"] == []
    assert sorted(o[0] for o in outcomes) == ["ok"] * 3 + ["refused"] * 3
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH)
    status = budget.remaining()
    assert status.rho_spent == pytest.approx(3 * total, rel=1e-12) and status.rho_spent <= status.rho_limit
    assert status.reservations == 0 and EgressLedger(engine).verify().ok


@pytest.mark.slow
def test_processes_upgrading_a_v1_ledger_together(engine: sa.Engine) -> None:
    build_v1(engine)  # a per-dataset ledger made by the earlier code, opened by four processes at once
    outcomes = _processes(engine, [(f"p-{i}", job_rho(epsilon=0.1, delta=DELTA), 2) for i in range(4)])
    assert sorted(outcomes) == [("ok", f"p-{i}") for i in range(4)]
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=Clock(OPENED_AT))
    history = budget.history()
    assert [r.reservation_id for r in history[: len(ENTRIES)]] == [e.id for e in ENTRIES]
    assert len(history) == len(ENTRIES) + 4
    assert sum(len(r.charges) for r in history) == 4 + 4 * 2
