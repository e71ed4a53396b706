"""Worker functions for the multi-process budget tests (spawned: importable, picklable arguments)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, record_for

from tessera.client.budget import BudgetLedger, BudgetRefused
from tessera.client.egress import EgressLedger

# (URL, PostgreSQL schema or None): enough for a child process to open the test's database.
EngineSpec = tuple[str, str | None]


def spec_of(engine: sa.Engine) -> EngineSpec:
    schema = None
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
    return engine.url.render_as_string(hide_password=False), schema


def engine_of(spec: EngineSpec) -> sa.Engine:
    url, schema = spec
    if schema is None:
        return sa.create_engine(url, connect_args={"timeout": 30})
    return sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def spend_job(spec: EngineSpec, job: str, rho: float, rounds: int, start: Any, results: Any) -> None:
    """Open the ledger (racing any schema upgrade), reserve a job's total and charge its rounds."""
    engine = engine_of(spec)
    try:
        start.wait(timeout=60)
        budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH)
        egress = EgressLedger(engine)
        reservation = budget.reserve(job_id=job, epsilon=0.5, delta=DELTA, rho=rho, rounds=rounds)
        for round_no in range(1, rounds + 1):
            record = record_for(reservation, round_no, rho=rho / rounds)
            budget.charge(
                reservation, round_no=round_no, rho=rho / rounds, egress=egress, record=record, payload=b"x"
            )
        budget.finish(reservation)
        results.put(("ok", job))
    except BudgetRefused as exc:
        results.put(("refused", exc.code))
    except BaseException as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()
