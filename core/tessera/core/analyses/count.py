"""``count``: customers per public group (or in total), under distributed discrete-Gaussian noise.

Vector: one count cell per group label (``groups`` + ``other``, or the single group ``all``); each
customer adds 1 to exactly one cell, so L1 = L2 = L∞ = 1 and the whole ρ goes to that one part.
Cells whose noisy count is below ``min_cohort_size`` are suppressed (post-processing, no budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="count",
    description="DP number of customers, in total or per public group of a non_sensitive field",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    v.check_params(spec, frozenset())
    v.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = v.privacy_rho(spec)
    groups = v.grouping(spec, fields)
    size = len(groups.labels)
    part = v.make_part("count", start=0, stop=size, scale=1.0, linf_bound=1, rho=rho, survivors_t=survivors_t)
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=() if groups.field is None else (groups.field,),
        length=size,
        parts=(part,),
        layout={"field": None, "group_by": groups.field, "groups": groups.labels},
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Customers per group (int64, no noise). Counts are integers: ``rng`` draws nothing."""
    del rng  # counts need no rounding; the argument keeps one signature for every analysis
    return np.bincount(v.group_index(plan, data), minlength=plan.length).astype(np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised counts as float64 (demo truth)."""
    return np.bincount(v.group_index(plan, data), minlength=plan.length).astype(np.float64)


def release(
    plan: v.VectorPlan,
    total: Any,
    *,
    summands: int,
    min_cohort_size: int,
    truth: Any | None = None,
) -> dict[str, Any]:
    """Result document from the decoded noisy sum of ``summands`` nodes' vectors.

    Interval: ±1.96 sd of the noise in the sum (``interval95``). Suppression of cells whose noisy
    count is below ``min_cohort_size`` is a rule on DP output: post-processing, no budget.
    """
    counts = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    half = v.half_width(plan, plan.part("count"), summands=summands)
    for i, label in enumerate(plan.layout["groups"]):
        count, suppressed = v.count_estimate(float(counts[i]), half, min_cohort_size=min_cohort_size)
        cell: dict[str, Any] = {"group": label, "count": count, "suppressed": suppressed}
        if truth is not None:
            cell["true"] = {"count": float(np.asarray(truth)[i])}
        doc["cells"].append(cell)
    return doc
