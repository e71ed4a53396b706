"""``count``: customers (or their rows) per public group, under distributed discrete-Gaussian noise.

Vector: one count cell per group label (``groups`` + ``other``, or the single group ``all``); the
whole ρ goes to that one part. What one customer may contribute, over all of its rows:

* by default, customers: a customer counts 1 in each group it has rows in, in at most
  ``max_groups_per_customer`` groups (default 1: the group of its first row), so
  L∞ = 1, L1 = k, L2 = √k. Over one-row-per-customer data (no customer key) k is 1 whatever
  the job asks, exactly as a count of customers always was;
* ``max_rows_per_customer: m``: rows (transactions, events), at most the customer's first m rows
  wherever they fall, so L∞ = L1 = L2 = m (all m may fall in one group).

Cells whose noisy count is below ``min_cohort_size`` are suppressed (post-processing, no budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import contribution as c
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="count",
    description="DP number of customers (or of their rows, capped per customer), per public group",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (*_docs.GROUPS, _docs.MAX_ROWS, _docs.MAX_GROUPS)


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    p.check_params(spec, frozenset({"max_rows_per_customer", "max_groups_per_customer"}))
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = p.privacy_rho(spec)
    groups = p.grouping(spec, fields)
    size = len(groups.labels)
    bound = p.contribution(spec, fields, groups=size, values=False, rows_allowed=True)
    linf, l1, l2 = bound.count_bounds()
    part = v.make_part(
        "count",
        start=0,
        stop=size,
        scale=1.0,
        linf_bound=linf,
        l1=l1,
        l2=l2,
        rho=rho,
        survivors_t=survivors_t,
    )
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(bound.customer_key, groups.field),
        length=size,
        parts=(part,),
        layout={
            "field": None,
            "group_by": groups.field,
            "groups": groups.labels,
            "contribution": bound.as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _groups_counted(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.IntArray:
    """The group of every unit counted: a kept (customer, group) cell, or a kept row."""
    everyone = np.ones(c.rows(data, plan), dtype=bool)
    if c.contribution_of(plan).max_rows is not None:
        return c.group_index(plan, data)[c.rows_kept(plan, data, eligible=everyone)]
    groups, _ = c.per_customer_values(plan, data, values=None, eligible=everyone)
    return groups


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Customers (or capped rows) per group (int64, no noise). Counts are integers: ``rng`` draws nothing."""
    del rng  # counts need no rounding; the argument keeps one signature for every analysis
    return np.bincount(_groups_counted(plan, data), minlength=plan.length).astype(np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised counts as float64 (demo truth), bounded exactly as ``local_vector`` bounds them."""
    return np.bincount(_groups_counted(plan, data), minlength=plan.length).astype(np.float64)


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
