"""SQLAlchemy tables of the budget ledger (own metadata, exported for the lead's migrations)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class BudgetBase(DeclarativeBase):
    """Declarative base of the budget tables; they live in the node's database beside the egress ledger."""


class BudgetDatasetRow(BudgetBase):
    """One row per dataset, made on first use: the lock every budget writer of that dataset takes.

    Writers first UPDATE this row (SQLite: the database write lock; PostgreSQL: a row lock), then
    read what is spent and reserved, so two writers can never both see the same free budget.
    ``writes`` counts the transactions that took the lock (useful when debugging, nothing more).
    """

    __tablename__ = "budget_datasets"

    dataset: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    writes: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class BudgetEntryRow(BudgetBase):
    """A reservation and, once committed, the charge it became. Rows are never deleted.

    ``state`` is ``reserved``, ``spent`` or ``released``; an expired reservation keeps the state
    ``reserved`` and simply stops counting once ``expires_at`` has passed. ``settled_at`` is when
    it was spent (this time places a charge in the rolling period) or released.
    """

    __tablename__ = "budget_entries"
    __table_args__ = (sa.UniqueConstraint("dataset", "job_id", name="uq_budget_entries_dataset_job"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    dataset: Mapped[str] = mapped_column(sa.String(128), sa.ForeignKey("budget_datasets.dataset"))
    job_id: Mapped[str] = mapped_column(sa.String(128))
    state: Mapped[str] = mapped_column(sa.String(16), index=True)
    rho: Mapped[float] = mapped_column(sa.Float(precision=53))
    epsilon: Mapped[float] = mapped_column(sa.Float(precision=53))
    delta: Mapped[float] = mapped_column(sa.Float(precision=53))
    policy_hash: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    settled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), index=True)
    egress_seq: Mapped[int | None] = mapped_column(sa.BigInteger)


metadata = BudgetBase.metadata
