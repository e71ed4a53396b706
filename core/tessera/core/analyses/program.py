"""An analysis as a program of rounds: the shape every DP analysis takes (DESIGN §3, §4, §8).

A DP job runs one or more secure-aggregation rounds. Round ``k`` releases a DP result; the
coordinator-side *driver* (``step``) turns that released result and the job's public parameters
into the public input of round ``k + 1`` (centroids, model weights, bin edges) or into the final
result. A node computes round ``k``'s vector from its data and that public input only
(``plan`` + ``local_vector``), so every round is post-processing of what earlier rounds released.

Budget: the job's ``(ε, δ)`` is its TOTAL cost. ``rho_total`` prices the whole job before any
data is read (every node reserves it), each round's plan carries its own share ``plan.rho`` (what
the node charges when its masked input leaves), and the shares of the rounds a program may run
add up to at most ``rho_total``. A program that stops early leaves the rest unspent, and the
nodes free it when the job ends.

One-round analyses (``count``, ``sum``, ``mean``, ``histogram``, ``quantiles``) are programs of
one round through :class:`OneRound`: there is one path for every DP job, not two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.params import privacy_rho
from tessera.core.analyses.vector import VectorPlan
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

# A program's public input travels as JSON: numbers, strings, booleans, lists and objects only.
Public = Mapping[str, Any]
MAX_ROUNDS = 1000


@dataclass(frozen=True, slots=True)
class Step:
    """What the driver makes of a released round: the next round's public input, or the end.

    ``metric`` is shown live (``tessera job watch``) and kept in the per-round trace; it must be
    post-processing of released values only (never data).
    """

    next_public: Public | None
    result: dict[str, Any] | None
    metric: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.next_public is None) == (self.result is None):
            raise InvalidRequest("a driver step gives either the next round's input or the final result")

    @property
    def done(self) -> bool:
        return self.result is not None


class Program(Protocol):
    """Both halves of a DP analysis of one or more rounds (see the module docstring)."""

    INFO: AnalysisInfo

    def max_rounds(self, spec: JobSpec) -> int:
        """The most rounds the job may run (public, from the spec); its budget is split over them."""
        ...

    def start(self, spec: JobSpec) -> Public:
        """The public input of round 1."""
        ...

    def plan(
        self,
        spec: JobSpec,
        fields: Mapping[str, FieldSchema],
        *,
        survivors_t: int,
        n_nodes: int,
        round_no: int,
        public: Public,
    ) -> VectorPlan:
        """Round ``round_no``'s vector plan, from public things only; ``plan.rho`` is its cost."""
        ...

    def local_vector(
        self, plan: VectorPlan, data: Mapping[str, np.ndarray], *, rng: np.random.Generator
    ) -> np.ndarray: ...

    def release(
        self, plan: VectorPlan, total: np.ndarray, *, summands: int, min_cohort_size: int
    ) -> dict[str, Any]: ...

    def step(self, spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
        """The driver: released round ``round_no`` (DP) -> next public input or final result."""
        ...


def rho_total(spec: JobSpec) -> float:
    """The whole job's ρ, reserved at every node before any data is read."""
    return privacy_rho(spec)


class OneRound:
    """A one-round analysis module (``count``, ``sum``…) seen as a program of one round."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.INFO: AnalysisInfo = module.INFO

    def max_rounds(self, spec: JobSpec) -> int:
        return 1

    def start(self, spec: JobSpec) -> Public:
        return {}

    def plan(
        self,
        spec: JobSpec,
        fields: Mapping[str, FieldSchema],
        *,
        survivors_t: int,
        n_nodes: int,
        round_no: int = 1,
        public: Public | None = None,
    ) -> VectorPlan:
        if round_no != 1 or public:
            raise InvalidRequest(f"{self.INFO.name} is an analysis of one round without public input")
        plan: VectorPlan = self._module.plan(spec, fields, survivors_t=survivors_t, n_nodes=n_nodes)
        return plan

    def local_vector(
        self, plan: VectorPlan, data: Mapping[str, np.ndarray], *, rng: np.random.Generator
    ) -> np.ndarray:
        vector: np.ndarray = self._module.local_vector(plan, data, rng=rng)
        return vector

    def exact(self, plan: VectorPlan, data: Mapping[str, np.ndarray]) -> np.ndarray:
        truth: np.ndarray = self._module.exact(plan, data)
        return truth

    def release(
        self, plan: VectorPlan, total: np.ndarray, *, summands: int, min_cohort_size: int
    ) -> dict[str, Any]:
        doc: dict[str, Any] = self._module.release(
            plan, total, summands=summands, min_cohort_size=min_cohort_size
        )
        return doc

    def step(self, spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
        return Step(next_public=None, result=released)


def check_public(public: Any) -> dict[str, Any]:
    """A public input as a node receives it: a JSON object of finite numbers, text and lists.

    The coordinator may be curious and may lie, so nodes never trust the shape: a program still
    checks each value it reads; this only refuses what no program could mean.
    """
    if not isinstance(public, Mapping):
        raise InvalidRequest("a round's public input must be a JSON object")

    def ok(value: Any, depth: int) -> bool:
        if depth > 4:
            return False
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return True
        if isinstance(value, (int, float)):
            return math.isfinite(value)
        if isinstance(value, list):
            return all(ok(v, depth + 1) for v in value)
        if isinstance(value, Mapping):
            return all(isinstance(k, str) and ok(v, depth + 1) for k, v in value.items())
        return False

    if not ok(dict(public), 0):
        raise InvalidRequest("a round's public input holds a value that is not finite JSON")
    return dict(public)
