"""What the store hands out: frozen records, never ORM rows."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from tessera.core.types import DatasetSchema, JobSpec, JobState, PolicySummary, Stage


class TaskState(enum.StrEnum):
    PENDING = "pending"  # not yet sent on any stream
    DELIVERED = "delivered"  # sent; re-sent after the node reconnects until answered
    ANSWERED = "answered"
    VETOED = "vetoed"
    EXPIRED = "expired"  # the job ended before the node answered

    @property
    def open(self) -> bool:
        return self in (TaskState.PENDING, TaskState.DELIVERED)


def task_id_of(job_id: str, epoch: int, round_no: int, stage: Stage, node_id: str) -> str:
    """A task's id: one per job, key epoch, round, stage and node (so a replay names its task)."""
    return f"{job_id}{f'-e{epoch}' if epoch else ''}-r{round_no}-{stage.value}-{node_id}"


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    node_version: str
    enrolled_at: datetime
    last_seen: datetime
    policy: PolicySummary
    datasets: tuple[DatasetSchema, ...]
    cert_pem: str = ""


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    spec: JobSpec
    state: JobState
    submitted_by: str
    created_at: datetime
    updated_at: datetime
    status_detail: str
    round: int
    participants: tuple[str, ...]
    result_json: str
    error: str
    driver_state: str = ""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    task_id: str
    job_id: str
    node_id: str
    round: int
    stage: Stage
    state: TaskState
    stage_input: bytes
    deadline: datetime | None
    answer: bytes | None = None
    epoch: int = 0
    round_input: bytes = b""  # the round's public input (JSON), identical for every node


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    job_id: str
    at: datetime
    state: JobState
    message: str
    round: int = 0
    stage: str = ""
    done: int = 0
    expected: int = 0


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str
    role: str
    action: str
    job_id: str
    outcome: str


# A round state besides running/released: charged to the nodes listed in ``survivors``, never
# released (an overlap job's stage 1; it has no masked inputs to tell who paid).
ROUND_CHARGED = "charged"


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One round of a DP job (see ``RoundRow``); ``charged`` are the nodes whose masked input the
    coordinator received in any attempt of the round: each node charged that round's ρ once."""

    job_id: str
    round: int
    rho: float
    state: str
    started_at: datetime
    released_at: datetime | None
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    metric_json: str
    result_json: str
