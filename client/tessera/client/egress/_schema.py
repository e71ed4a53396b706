"""SQLAlchemy tables of the egress ledger (own metadata; created idempotently by the ledger)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class EgressBase(DeclarativeBase):
    """Declarative base of the egress tables; the node may create them beside its own."""


class EgressEntryRow(EgressBase):
    """One hash-chained ledger entry. Never updated or deleted by Tessera (append-only)."""

    __tablename__ = "egress_ledger"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), index=True)
    job_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    round: Mapped[int] = mapped_column(sa.Integer)
    stage: Mapped[str] = mapped_column(sa.String(64))
    purpose: Mapped[str] = mapped_column(sa.String(128))
    analysis: Mapped[str] = mapped_column(sa.String(128))
    fields: Mapped[str] = mapped_column(sa.Text)  # JSON list of field names
    shape: Mapped[str] = mapped_column(sa.Text)  # JSON list of dimensions
    noise: Mapped[str] = mapped_column(sa.Text)  # canonical JSON object of noise parameters
    rho: Mapped[float] = mapped_column(sa.Float(precision=53))
    epsilon: Mapped[float] = mapped_column(sa.Float(precision=53))
    delta: Mapped[float] = mapped_column(sa.Float(precision=53))
    policy_hash: Mapped[str] = mapped_column(sa.String(128))
    byte_length: Mapped[int] = mapped_column(sa.BigInteger)
    payload_sha256: Mapped[str] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    analyst: Mapped[str] = mapped_column(sa.String(128), default="", server_default="")


class EgressHeadRow(EgressBase):
    """The chain head (last seq and hash), one row with id 1.

    Every append locks this row first (an UPDATE), which serialises writers on both SQLite (the
    write lock) and PostgreSQL (the row lock), so two writers can never fork the chain. It also lets
    ``verify`` notice entries removed from the tail, which the chain alone could not show.
    """

    __tablename__ = "egress_head"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))


class EgressAnchorRow(EgressBase):
    """A head the coordinator acknowledged (its heartbeat answer): the chain must still hold it."""

    __tablename__ = "egress_anchor"

    seq: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(sa.String(64))
    acknowledged_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
