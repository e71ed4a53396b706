"""Concurrent jobs can never overspend: database locks, not Python locks, serialise the writers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, Clock, record_for

from tessera.client.budget import PERIOD_EXHAUSTED, BudgetLedger, BudgetRefused
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
