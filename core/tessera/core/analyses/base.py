"""What every analysis declares, so the coordinator can plan and price a job before it runs."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.types import Stage


@dataclass(frozen=True, slots=True)
class AnalysisInfo:
    name: str
    description: str
    # A DP analysis releases data: it needs epsilon > 0 and at least min_participants nodes.
    differentially_private: bool
    # Whether a round can be resumed after a coordinator restart. Secure-aggregation rounds hold
    # per-round keys in node memory and cannot; single-report stages can.
    resumable: bool
    stages: tuple[Stage, ...]
    min_nodes: int = 1
