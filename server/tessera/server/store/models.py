"""SQLAlchemy tables of the coordinator store. Changes here need a migration in ``migrations/``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class NodeRow(Base):
    __tablename__ = "nodes"

    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_version: Mapped[str] = mapped_column(String(64))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    policy_hash: Mapped[str] = mapped_column(String(64))
    # Serialized tessera.v1 messages (PolicySummary, InventoryReport-like schema list): serde owns them.
    policy_pb: Mapped[bytes] = mapped_column(LargeBinary)
    datasets_pb: Mapped[bytes] = mapped_column(LargeBinary)
    # The node's certificate as its TLS session presented it; relayed to peers so they can verify
    # the node's signed secure-aggregation keys against the consortium CA themselves.
    cert_pem: Mapped[str] = mapped_column(Text, default="")


class JobRow(Base):
    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    spec_pb: Mapped[bytes] = mapped_column(LargeBinary)
    analysis: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    submitted_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_detail: Mapped[str] = mapped_column(Text, default="")
    round: Mapped[int] = mapped_column(Integer, default=0)
    participants: Mapped[str] = mapped_column(Text, default="")  # comma-separated node ids
    result_json: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    # What a DP release cost, kept apart from the (possibly large) result so the budget mirror
    # never has to parse results: the dataset, the ρ charged, and the nodes whose input was summed.
    dataset: Mapped[str] = mapped_column(String(128), default="")
    released_rho: Mapped[float] = mapped_column(Float, default=0.0)
    charged_nodes: Mapped[str] = mapped_column(Text, default="")
    # The program driver's state after the last released round (JSON: epoch, next round, public
    # input, live and dropped nodes), so a restarted coordinator resumes the job from there.
    driver_state: Mapped[str] = mapped_column(Text, default="")


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_node_state", "node_id", "state"),)

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), index=True)
    node_id: Mapped[str] = mapped_column(String(128))
    round: Mapped[int] = mapped_column(Integer)
    # Key epoch of the secure-aggregation session the task belongs to (a job re-keys after a
    # coordinator restart), so a re-run of a round never mixes with its earlier attempt.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    stage_input: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    round_input: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    answer_pb: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    veto_code: Mapped[str] = mapped_column(String(64), default="")
    veto_reason: Mapped[str] = mapped_column(Text, default="")
    veto_policy_hash: Mapped[str] = mapped_column(String(64), default="")


class RoundRow(Base):
    """One round of a DP job: its planned cost, and once released its trace entry."""

    __tablename__ = "job_rounds"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    rho: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # running, released, failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    survivors: Mapped[str] = mapped_column(Text, default="")
    dropped: Mapped[str] = mapped_column(Text, default="")
    metric_json: Mapped[str] = mapped_column(Text, default="")
    result_json: Mapped[str] = mapped_column(Text, default="")


class EventRow(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    round: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str] = mapped_column(String(32), default="")
    done: Mapped[int] = mapped_column(Integer, default=0)
    expected: Mapped[int] = mapped_column(Integer, default=0)


class AuditRow(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(32), default="")
    outcome: Mapped[str] = mapped_column(Text, default="")


class EgressAnchorRow(Base):
    """A node's egress-ledger head as its heartbeat reported it: every (node, seq) once, the first
    hash received kept. The node's chain must still hold these, so a truncated or re-chained
    ledger is caught by the node's `egress verify` and by anyone reading this table."""

    __tablename__ = "egress_anchors"

    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
