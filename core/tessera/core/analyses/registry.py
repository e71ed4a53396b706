"""The analyses Tessera knows, by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from tessera.core.analyses import inventory, overlap
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.program import OneRound, Program
from tessera.core.analyses.vector import VectorPlan
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec


class VectorAnalysis(Protocol):
    """A one-round DP analysis: both halves, as each module under ``analyses/`` defines them."""

    INFO: AnalysisInfo

    def plan(
        self, spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int
    ) -> VectorPlan: ...

    def local_vector(
        self, plan: VectorPlan, data: Mapping[str, np.ndarray], *, rng: np.random.Generator
    ) -> np.ndarray: ...

    def exact(self, plan: VectorPlan, data: Mapping[str, np.ndarray]) -> np.ndarray: ...

    def release(
        self,
        plan: VectorPlan,
        total: np.ndarray,
        *,
        summands: int,
        min_cohort_size: int,
        truth: np.ndarray | None = None,
    ) -> dict[str, Any]: ...


def _vector_analyses() -> dict[str, VectorAnalysis]:
    from tessera.core.analyses import cohort_retention, count, funnel, histogram, mean, quantiles, sums

    modules: list[Any] = [count, sums, mean, histogram, quantiles, funnel, cohort_retention]
    return {m.INFO.name: m for m in modules}


VECTOR_ANALYSES: dict[str, VectorAnalysis] = _vector_analyses()


def _programs() -> dict[str, Program]:
    from tessera.core.analyses import churn_model, clv_fit, kmeans, mean_descent, rfm_segments

    one_round: dict[str, Program] = {name: OneRound(m) for name, m in VECTOR_ANALYSES.items()}
    many: list[Any] = [mean_descent, rfm_segments, kmeans, clv_fit, churn_model]
    return one_round | {m.INFO.name: m for m in many}


# Every DP analysis is a program of rounds; the one-round ones through ``OneRound``.
PROGRAMS: dict[str, Program] = _programs()
ANALYSES: dict[str, AnalysisInfo] = {
    inventory.INFO.name: inventory.INFO,
    overlap.INFO.name: overlap.INFO,  # pairwise PSI through its own driver, not a program of sums
    **{name: program.INFO for name, program in PROGRAMS.items()},
}


def get_analysis(name: str) -> AnalysisInfo:
    try:
        return ANALYSES[name]
    except KeyError:
        known = ", ".join(sorted(ANALYSES))
        raise InvalidRequest(f"unknown analysis {name!r}; this coordinator runs: {known}") from None


def get_program(name: str) -> Program:
    try:
        return PROGRAMS[name]
    except KeyError:
        raise InvalidRequest(f"analysis {name!r} is not a differentially private analysis") from None


def get_vector_analysis(name: str) -> VectorAnalysis:
    try:
        return VECTOR_ANALYSES[name]
    except KeyError:
        raise InvalidRequest(f"analysis {name!r} is not a differentially private vector analysis") from None
