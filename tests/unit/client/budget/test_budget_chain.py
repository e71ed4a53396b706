"""Budget entries chained into the egress ledger (issue 12, item 4): reservations and releases are
chain entries, charges ride with their releases, and editing the budget tables is named."""

from __future__ import annotations

import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, Clock, record_for

from tessera.client.budget import BudgetLedger, check_budget_chain
from tessera.client.egress import EgressLedger


def _ledgers(engine: sa.Engine) -> tuple[BudgetLedger, EgressLedger]:
    egress = EgressLedger(engine)
    return BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=Clock(), egress=egress), egress


def _sql(engine: sa.Engine, text: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(text)


def test_reserve_charge_release_are_chained_and_checked(engine: sa.Engine) -> None:
    budget, egress = _ledgers(engine)
    job = budget.reserve(job_id="job-a", epsilon=0.5, delta=DELTA, rounds=2, rho=0.004)
    budget.charge(
        job, round_no=1, rho=0.002, egress=egress, record=record_for(job, 1, rho=0.002), payload=b"r1"
    )
    budget.release(job)
    stages = [e.record.stage for e in egress.entries()]
    assert stages == ["budget.reserve", "masked_input", "budget.release"]
    assert egress.entries()[2].record.noise == {"rho_returned": 0.002, "rho_spent": 0.002}
    assert egress.verify().ok and check_budget_chain(engine, egress.entries()) is None
    assert budget.verify_against(egress) is None

    # Freeing budget by deleting the charge is named, though the chain itself is intact.
    _sql(engine, "DELETE FROM budget_charges")
    assert egress.verify().ok
    assert "holds no such charge" in (check_budget_chain(engine, egress.entries()) or "")
    _sql(engine, "DELETE FROM budget_reservations")
    assert "no such reservation" in (check_budget_chain(engine, egress.entries()) or "")


def test_a_lowered_charge_is_named(engine: sa.Engine) -> None:
    budget, egress = _ledgers(engine)
    job = budget.reserve(job_id="job-b", epsilon=0.5, delta=DELTA)
    budget.commit(job, egress=egress, record=record_for(job, 1), payload=b"p")
    _sql(engine, "UPDATE budget_charges SET rho = rho / 10")
    assert "does not match egress entry 2" in (check_budget_chain(engine, egress.entries()) or "")
