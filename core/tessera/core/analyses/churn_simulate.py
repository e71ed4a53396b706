"""A program of rounds run in memory, without transport: every node's vector, its noise share, the
sum, the release and the driver's step (tests, benchmarks and the demo's non-private answer).

The same calls the coordinator and the nodes make over gRPC (``server.dp_job``, the node's
``dp_runner``), minus secure aggregation, which only hides the summands and changes no number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.core.analyses.program import Program, Public
from tessera.core.analyses.vector import add_noise
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec


@dataclass
class Trace:
    """What a run released: the result, the ρ of every round and the driver's metrics."""

    result: dict[str, Any]
    rho: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    publics: list[Public] = field(default_factory=list)


def run(
    program: Program,
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    nodes: Sequence[Mapping[str, Any]],
    *,
    noise: bool,
    rng: np.random.Generator,
    min_cohort_size: int = 10,
) -> Trace:
    """Run ``program`` over ``nodes`` (each node's data mapping) until its driver ends."""
    public: Public = program.start(spec)
    trace = Trace(result={})
    n = len(nodes)
    for round_no in range(1, program.max_rounds(spec) + 1):
        plan = program.plan(spec, fields, survivors_t=n, n_nodes=n, round_no=round_no, public=public)
        vectors = [program.local_vector(plan, data, rng=rng) for data in nodes]
        if noise:
            vectors = [add_noise(plan, vec, rng=rng) for vec in vectors]
        released = program.release(plan, np.sum(vectors, axis=0), summands=n, min_cohort_size=min_cohort_size)
        step = program.step(spec, round_no=round_no, public=public, released=released)
        trace.rho.append(plan.rho)
        trace.metrics.append(dict(step.metric))
        trace.publics.append(public)
        if step.result is not None:
            trace.result = step.result
            return trace
        assert step.next_public is not None
        public = step.next_public
    raise InvalidRequest("the program did not end within its rounds")
