"""``mean``: the mean over customers of a clipped per-customer value, per public group.

One vector holds each group's count and centred clipped sum (the ``sums`` machinery: ρ/2 to each
part), so one customer contributes exactly as in ``sum``: its rows in a group become one value
(``per_customer``: sum (default), count or mean of ``field``), clipped as one, in at most
``max_groups_per_customer`` groups (count part L1 = k, L2 = √k; sum part k·top, √k·top). The mean
is post-processing, ``offset + S/C`` clipped to ``[lower, upper]``, with a delta-method 95%
interval (see ``sums._mean``). Customers without a value are left out. A group whose noisy count
is below ``min_cohort_size`` is suppressed (post-processing, no budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import sums
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="mean",
    description="DP mean (with count and sum) of a clipped per-customer value, in total or per public group",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (*_docs.BOUNDS, _docs.PER_CUSTOMER, _docs.MAX_GROUPS, *_docs.GROUPS)


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    return sums.plan_moments(spec, fields, survivors_t=survivors_t, n_nodes=n_nodes, analysis=INFO.name)


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Counts then quantised centred sums per group (int64, no noise)."""
    return sums.vector_moments(plan, data, rng=rng)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """Counts then unquantised centred sums per group (float64, demo truth)."""
    return sums.exact_moments(plan, data)


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """Per group: noisy count, sum and mean with 95% intervals; small groups suppressed."""
    return sums.release_moments(
        plan, total, summands=summands, min_cohort_size=min_cohort_size, truth=truth, with_mean=True
    )
