"""A version-1 budget ledger (one budget per dataset) exactly as the code before schema 2 wrote it.

The DDL is copied from what that code's ``create_all`` emitted on each dialect; the rows are what
its ``reserve``/``commit``/``release`` stored (same columns, same ρ arithmetic, times stored through
the same SQLAlchemy ``DateTime`` type). Two datasets, one job id (``shared``) on both, every state.
Checked against a SQLite database that the earlier code itself made by the same calls: its
``budget_entries`` and ``egress_ledger`` rows were identical to these, value for value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from _budget_helpers import DELTA, POLICY_HASH, T0, Clock, record_for

from tessera.client.budget import Reservation, ReservationState
from tessera.client.budget._accounting import job_rho
from tessera.client.egress import EgressLedger

_DDL = {
    "sqlite": (
        """CREATE TABLE budget_datasets (
            dataset VARCHAR(128) NOT NULL, created_at DATETIME NOT NULL, writes BIGINT NOT NULL,
            PRIMARY KEY (dataset))""",
        """CREATE TABLE budget_entries (
            id INTEGER NOT NULL, dataset VARCHAR(128) NOT NULL, job_id VARCHAR(128) NOT NULL,
            state VARCHAR(16) NOT NULL, rho FLOAT NOT NULL, epsilon FLOAT NOT NULL, delta FLOAT NOT NULL,
            policy_hash VARCHAR(128) NOT NULL, created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL,
            settled_at DATETIME, egress_seq BIGINT, PRIMARY KEY (id),
            CONSTRAINT uq_budget_entries_dataset_job UNIQUE (dataset, job_id),
            FOREIGN KEY(dataset) REFERENCES budget_datasets (dataset))""",
        "CREATE INDEX ix_budget_entries_settled_at ON budget_entries (settled_at)",
        "CREATE INDEX ix_budget_entries_state ON budget_entries (state)",
    ),
    "postgresql": (
        """CREATE TABLE budget_datasets (
            dataset VARCHAR(128) NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            writes BIGINT NOT NULL, PRIMARY KEY (dataset))""",
        """CREATE TABLE budget_entries (
            id BIGSERIAL NOT NULL, dataset VARCHAR(128) NOT NULL, job_id VARCHAR(128) NOT NULL,
            state VARCHAR(16) NOT NULL, rho FLOAT(53) NOT NULL, epsilon FLOAT(53) NOT NULL,
            delta FLOAT(53) NOT NULL, policy_hash VARCHAR(128) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL, expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
            settled_at TIMESTAMP WITH TIME ZONE, egress_seq BIGINT, PRIMARY KEY (id),
            CONSTRAINT uq_budget_entries_dataset_job UNIQUE (dataset, job_id),
            FOREIGN KEY(dataset) REFERENCES budget_datasets (dataset))""",
        "CREATE INDEX ix_budget_entries_settled_at ON budget_entries (settled_at)",
        "CREATE INDEX ix_budget_entries_state ON budget_entries (state)",
    ),
}


@dataclass(frozen=True)
class V1Entry:
    id: int
    dataset: str
    job_id: str
    state: str
    epsilon: float
    delta: float
    created: datetime
    settled: datetime | None
    egress_seq: int | None

    @property
    def rho(self) -> float:
        return job_rho(epsilon=self.epsilon, delta=self.delta)


DAY = timedelta(days=1)
ENTRIES = (
    V1Entry(1, "customers", "c-spent", "spent", 0.5, DELTA, T0, T0, 1),
    V1Entry(2, "transactions", "t-spent", "spent", 0.25, DELTA, T0 + DAY, T0 + DAY, 2),
    V1Entry(3, "customers", "shared", "spent", 0.1, DELTA, T0 + 2 * DAY, T0 + 2 * DAY, 3),
    V1Entry(4, "transactions", "shared", "spent", 0.2, DELTA, T0 + 2 * DAY, T0 + 2 * DAY, 4),
    V1Entry(5, "customers", "c-released", "released", 0.3, DELTA, T0 + 2 * DAY, T0 + 2 * DAY, None),
    V1Entry(6, "customers", "c-open", "reserved", 0.2, DELTA, T0 + 3 * DAY, None, None),
    V1Entry(7, "transactions", "t-pure", "reserved", 0.1, 0.0, T0 + 3 * DAY, None, None),
)
OPENED_AT = T0 + 3 * DAY + timedelta(minutes=5)  # the two open reservations hold until T0+3d+1h
SPENT_RHO = math.fsum(e.rho for e in ENTRIES if e.state == "spent")
HELD_RHO = math.fsum(e.rho for e in ENTRIES if e.state == "reserved")

_INSERT_DATASET = sa.text(
    "INSERT INTO budget_datasets (dataset, created_at, writes) VALUES (:dataset, :created_at, :writes)"
).bindparams(sa.bindparam("created_at", type_=sa.DateTime(timezone=True)))
_INSERT_ENTRY = sa.text(
    "INSERT INTO budget_entries (id, dataset, job_id, state, rho, epsilon, delta, policy_hash, created_at, "
    "expires_at, settled_at, egress_seq) VALUES (:id, :dataset, :job_id, :state, :rho, :epsilon, :delta, "
    ":policy_hash, :created_at, :expires_at, :settled_at, :egress_seq)"
).bindparams(
    *(sa.bindparam(n, type_=sa.DateTime(timezone=True)) for n in ("created_at", "expires_at", "settled_at"))
)


def build_v1(engine: sa.Engine) -> None:
    """Make the version-1 tables and rows, plus the egress entries the spent rows point at."""
    clock = Clock()
    egress = EgressLedger(engine, clock=clock)
    for e in ENTRIES:
        if e.egress_seq is not None:
            clock.now = e.created
            held = Reservation(
                e.id,
                e.job_id,
                e.dataset,
                e.epsilon,
                e.delta,
                e.rho,
                ReservationState.RESERVED,
                POLICY_HASH,
                T0,
                T0,
            )
            assert egress.record(record_for(held, 1), e.job_id.encode()).seq == e.egress_seq
    with engine.begin() as conn:
        for statement in _DDL[conn.dialect.name]:
            conn.exec_driver_sql(statement)
        for dataset, first in (("customers", T0), ("transactions", T0 + DAY)):
            conn.execute(_INSERT_DATASET, {"dataset": dataset, "created_at": first, "writes": 3})
        for e in ENTRIES:
            conn.execute(
                _INSERT_ENTRY,
                {
                    "id": e.id,
                    "dataset": e.dataset,
                    "job_id": e.job_id,
                    "state": e.state,
                    "rho": e.rho,
                    "epsilon": e.epsilon,
                    "delta": e.delta,
                    "policy_hash": POLICY_HASH,
                    "created_at": e.created,
                    "expires_at": e.created + timedelta(hours=1),
                    "settled_at": e.settled,
                    "egress_seq": e.egress_seq,
                },
            )
        if conn.dialect.name == "postgresql":  # BIGSERIAL, as the old code left it after its inserts
            conn.exec_driver_sql("SELECT setval('budget_entries_id_seq', 7)")
