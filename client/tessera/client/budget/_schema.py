"""SQLAlchemy tables of the budget ledger, schema version 2 (own metadata, exported for migrations).

One budget per node (DESIGN §4): ``budget_node`` is the node's single lock row and records the
schema version; ``budget_reservations`` holds one row per job (its total ρ, the dataset it read as
an attribute); ``budget_charges`` one row per charged round. Version 1 (one budget per dataset:
``budget_datasets`` + ``budget_entries``) is upgraded in place by ``_migrate``; afterwards
``budget_datasets`` is a one-column tombstone so that an older Tessera opening this database fails
at its first budget write instead of starting over with an empty budget.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2
NODE_ROW_ID = 1
_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # INTEGER PRIMARY KEY = rowid on SQLite


class BudgetBase(DeclarativeBase):
    """Declarative base of the budget tables; they live in the node's database beside the egress ledger."""


class BudgetNodeRow(BudgetBase):
    """The node's one budget row (id 1): the lock every budget writer takes, and the schema version.

    Writers first UPDATE this row (SQLite: the database write lock; PostgreSQL: a row lock), then
    read what is spent and reserved, so two writers can never both see the same free budget.
    ``writes`` counts the transactions that took the lock (useful when debugging, nothing more).
    """

    __tablename__ = "budget_node"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    schema_version: Mapped[int] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    writes: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class BudgetReservationRow(BudgetBase):
    """A job's reservation of its total ρ. Rows are never deleted.

    ``state`` is ``reserved`` (open), ``spent`` or ``released``; an open reservation whose
    ``expires_at`` has passed stops holding its unspent remainder (its charges still count).
    ``job_id`` is wider than a job id may be so that version-1 rows of one job on two datasets
    could be kept apart as ``job@dataset`` by the upgrade.
    """

    __tablename__ = "budget_reservations"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.String(300), unique=True)
    dataset: Mapped[str | None] = mapped_column(sa.String(128))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    rho: Mapped[float] = mapped_column(sa.Float(precision=53))
    epsilon: Mapped[float] = mapped_column(sa.Float(precision=53))
    delta: Mapped[float] = mapped_column(sa.Float(precision=53))
    rounds: Mapped[int] = mapped_column(sa.Integer)
    policy_hash: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    settled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))


class BudgetChargeRow(BudgetBase):
    """ρ spent by one round of a reservation; committed with the round's egress entry."""

    __tablename__ = "budget_charges"
    __table_args__ = (sa.UniqueConstraint("reservation_id", "round_no", name="uq_budget_charges_round"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    reservation_id: Mapped[int] = mapped_column(_ID, sa.ForeignKey("budget_reservations.id"))
    round_no: Mapped[int] = mapped_column(sa.Integer)
    rho: Mapped[float] = mapped_column(sa.Float(precision=53))
    epsilon: Mapped[float] = mapped_column(sa.Float(precision=53))
    charged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    egress_seq: Mapped[int | None] = mapped_column(sa.BigInteger)
    attempts: Mapped[int] = mapped_column(sa.Integer)


# The version-1 lock table's name, kept by a table of another shape (see the module docstring).
TOMBSTONE = sa.Table(
    "budget_datasets",
    BudgetBase.metadata,
    sa.Column("superseded_by", sa.String(64), nullable=False),
)

metadata = BudgetBase.metadata
