"""Frozen dataclasses that cross boundaries (wire, store, CLI). Protobuf never leaks past serde."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from tessera.core.errors import InvalidRequest

# A job parameter is one of these; lists are tuples so specs stay hashable and frozen.
ParamValue = int | float | str | bool | tuple[str, ...] | tuple[float, ...]


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Stage(enum.StrEnum):
    LOCAL_REPORT = "local_report"
    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASK = "unmask"
    PSI = "psi"
    ABORT = "abort"


class Tier(enum.StrEnum):
    CORE_SENSITIVE = "core_sensitive"
    GENERAL_SENSITIVE = "general_sensitive"
    NON_SENSITIVE = "non_sensitive"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What an analyst asks for; inspected and priced before anything runs."""

    analysis: str
    dataset: str = ""
    purpose: str = ""
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    epsilon: float = 0.0
    delta: float = 0.0
    participants: tuple[str, ...] = ()
    deadline: datetime | None = None
    min_participants: int = 0

    def __post_init__(self) -> None:
        if not self.analysis or not self.analysis.replace("_", "").isalnum():
            raise InvalidRequest("a job needs an analysis name made of letters, digits and '_'")
        for name, value in (("epsilon", self.epsilon), ("delta", self.delta)):
            if not math.isfinite(value) or value < 0:
                raise InvalidRequest(f"{name} must be a finite number of at least 0")
        if self.delta >= 1:
            raise InvalidRequest("delta must be below 1")
        if self.min_participants < 0:
            raise InvalidRequest("min_participants cannot be negative")
        if len(set(self.participants)) != len(self.participants):
            raise InvalidRequest("a participant is listed twice")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise InvalidRequest("a deadline needs a time zone")


@dataclass(frozen=True, slots=True)
class PolicySummary:
    """What a node's policy allows, as the node publishes it (mirrors tessera.v1.PolicySummary)."""

    policy_id: str
    policy_hash: str
    allowed_analyses: tuple[str, ...] = ()
    allowed_purposes: tuple[str, ...] = ()
    epsilon_per_job: float = 0.0
    epsilon_per_period: float = 0.0
    period: str = ""
    delta: float = 0.0
    min_cohort_size: int = 0
    min_participants: int = 3
    allowed_partners: tuple[str, ...] = ()
    retention_days: int = 0
    collusion_tolerance: int = 0  # nodes that may collude with the coordinator (0 when not published)


@dataclass(frozen=True, slots=True)
class FieldSchema:
    name: str
    type: str
    tier: Tier


@dataclass(frozen=True, slots=True)
class DatasetSchema:
    """Names, types and tiers of a dataset's fields: never values, never row counts."""

    name: str
    fields: tuple[FieldSchema, ...]


@dataclass(frozen=True, slots=True)
class Veto:
    node_id: str
    code: str
    reason: str
    policy_hash: str = ""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of an mTLS connection, read from its certificate."""

    name: str
    kind: str  # "coordinator", "node" or "analyst"
    role: str | None  # analysts only: "admin", "analyst" or "auditor"
    serial: int
