"""A per-dataset (version 1) ledger made by the earlier code upgrades in place to one budget per node."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
import sqlalchemy as sa
from _budget_helpers import DELTA, LIMITS, POLICY_HASH, Clock, record_for
from _budget_v1 import ENTRIES, HELD_RHO, OPENED_AT, SPENT_RHO, build_v1

from tessera.client.budget import BudgetLedger, BudgetRefused, ReservationState, _migrate
from tessera.client.budget._accounting import Capacity, job_rho
from tessera.client.egress import EgressLedger
from tessera.core.errors import StoreError


def _open(engine: sa.Engine) -> BudgetLedger:
    return BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=Clock(OPENED_AT))


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _rows(engine: sa.Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]


def test_v1_rows_are_stored_as_the_old_code_stored_them(engine: sa.Engine) -> None:
    build_v1(engine)
    if engine.dialect.name == "sqlite":  # SQLAlchemy's own text format for DateTime, naive UTC
        with engine.connect() as conn:
            first = conn.exec_driver_sql("SELECT created_at FROM budget_entries WHERE id = 1").scalar()
        assert first == "2026-11-01 12:00:00.000000"
    assert {"budget_entries", "budget_datasets"} <= _tables(engine)


def test_every_reservation_and_charge_survives_and_counts_against_one_budget(engine: sa.Engine) -> None:
    build_v1(engine)
    v1_rows = _rows(engine, "budget_entries")
    budget = _open(engine)
    status = budget.remaining()
    # Both datasets' spending and holds now sit in the node's one budget.
    assert status.rho_spent == pytest.approx(SPENT_RHO, rel=1e-15) and status.releases == 4
    assert status.rho_reserved == pytest.approx(HELD_RHO, rel=1e-15) and status.reservations == 2
    history = budget.history()
    assert [r.reservation_id for r in history] == [e.id for e in ENTRIES]
    assert [r.dataset for r in history] == [e.dataset for e in ENTRIES]
    assert [r.job_id for r in history] == [
        "c-spent", "t-spent", "shared", "shared@transactions", "c-released", "c-open", "t-pure"
    ]  # fmt: skip
    assert [r.state.value for r in history] == [e.state for e in ENTRIES]
    for r, e in zip(history, ENTRIES, strict=True):
        assert (r.rho, r.epsilon, r.delta, r.rounds, r.policy_hash) == (
            e.rho,
            e.epsilon,
            e.delta,
            1,
            POLICY_HASH,
        )
        assert r.created_at == e.created and r.settled_at == e.settled
        if e.state == "spent":
            [charge] = r.charges
            assert (charge.round_no, charge.rho, charge.charged_at) == (1, e.rho, e.settled)
            assert charge.egress_seq == r.egress_seq == e.egress_seq and r.rho_spent == e.rho
        else:
            assert r.charges == () and r.rho_spent == 0
    # The version-1 tables are kept, untouched, for audit; the egress chain is unaffected.
    assert _rows(engine, "budget_v1_entries") == v1_rows
    assert len(_rows(engine, "budget_v1_datasets")) == 2
    assert EgressLedger(engine).verify().ok


def test_upgraded_ledger_keeps_working_with_fresh_ids_and_the_old_holds(engine: sa.Engine) -> None:
    build_v1(engine)
    clock = Clock(OPENED_AT)
    budget = BudgetLedger(engine, limits=LIMITS, policy_hash=POLICY_HASH, clock=clock)
    egress = EgressLedger(engine, clock=clock)
    # The open v1 reservation is still held and can be committed as before.
    [c_open] = budget.history(job_id="c-open")
    entry = budget.commit(c_open, egress=egress, record=record_for(c_open), payload=b"late")
    assert entry.seq == 5 and budget.remaining().releases == 5
    # New ids continue after the copied ones (PostgreSQL: the sequence was moved past them).
    fresh = budget.reserve(job_id="new", dataset="events", epsilon=0.2, delta=DELTA)
    assert fresh.reservation_id == 8
    # What the old per-dataset ledgers spent is spent for every dataset now: a second ε = 0.5 job
    # on customers would have fitted the old customers-only budget, but not the node's one budget.
    budget.reserve(job_id="big-1", dataset="customers", epsilon=0.5, delta=DELTA)
    customers_only = math.fsum(e.rho for e in ENTRIES if e.dataset == "customers" and e.state != "released")
    big = job_rho(epsilon=0.5, delta=DELTA)
    assert customers_only + 2 * big <= Capacity.of(LIMITS).rho_limit
    with pytest.raises(BudgetRefused):
        budget.reserve(job_id="big-2", dataset="customers", epsilon=0.5, delta=DELTA)


def test_upgrade_is_idempotent(engine: sa.Engine) -> None:
    build_v1(engine)
    _open(engine)
    before = (_rows(engine, "budget_reservations"), _rows(engine, "budget_charges"), _tables(engine))
    for _ in range(2):
        BudgetLedger.create_tables(engine)
        _open(engine)
    assert (_rows(engine, "budget_reservations"), _rows(engine, "budget_charges"), _tables(engine)) == before


def test_a_failed_upgrade_leaves_the_v1_ledger_as_it_was(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_v1(engine)
    v1_rows, tables = _rows(engine, "budget_entries"), _tables(engine)
    real = _migrate._upgrade

    def upgrade_then_crash(conn: sa.Connection, now: Any) -> None:
        real(conn, now)  # every table made, every row copied, the old ones renamed...
        raise RuntimeError("power cut")  # ...and all of it must vanish with the transaction

    monkeypatch.setattr(_migrate, "_upgrade", upgrade_then_crash)
    with pytest.raises(RuntimeError):
        _open(engine)
    monkeypatch.undo()
    assert _tables(engine) == tables and _rows(engine, "budget_entries") == v1_rows
    assert _open(engine).remaining().releases == 4


def test_an_older_tessera_fails_closed_on_an_upgraded_database(engine: sa.Engine) -> None:
    build_v1(engine)
    _open(engine)
    # The first statement of every v1 budget write: it must fail, not find an empty budget.
    with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budget_datasets SET writes = writes + 1 WHERE dataset = 'customers'")


def test_a_fresh_database_gets_the_tombstone_too(engine: sa.Engine) -> None:
    _open(engine)
    assert {"budget_node", "budget_reservations", "budget_charges", "budget_datasets"} <= _tables(engine)
    assert "budget_entries" not in _tables(engine) and "budget_v1_entries" not in _tables(engine)


def test_a_newer_schema_is_refused(engine: sa.Engine) -> None:
    _open(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE budget_node SET schema_version = 3")
    with pytest.raises(StoreError, match="schema version 3"):
        _open(engine)


def test_processes_starting_together_upgrade_once(engine: sa.Engine) -> None:
    # Threads with an engine each: separate connections, as separate node processes would have
    # (the process version of this race is in test_budget_processes).
    build_v1(engine)
    url = engine.url
    schema = _schema_of(engine)
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def opener() -> None:
        own = _engine_like(url, schema)
        try:
            start.wait()
            _open(own)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.dispose()

    pool = [threading.Thread(target=opener) for _ in range(6)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
    assert errors == []
    assert (
        len(_rows(engine, "budget_reservations")) == len(ENTRIES)
        and len(_rows(engine, "budget_charges")) == 4
    )
    assert _open(engine).remaining().rho_spent == pytest.approx(SPENT_RHO, rel=1e-15)


def _schema_of(engine: sa.Engine) -> str | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT current_schema()").scalar())


def _engine_like(url: sa.URL, schema: str | None) -> sa.Engine:
    if schema is None:
        return sa.create_engine(url)
    return sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})


def test_charges_of_an_upgraded_job_keep_their_state(engine: sa.Engine) -> None:
    build_v1(engine)
    budget = _open(engine)
    [released] = budget.history(job_id="c-released")
    assert released.state is ReservationState.RELEASED and budget.release(released) == released
