"""``sum``: the sum of a clipped per-customer value per public group, with each group's count.

What one customer contributes: its rows in a group become ONE value (``per_customer``: ``sum``
(default), ``count`` (rows with a value, or all rows without ``field``) or ``mean`` of ``field``),
and that value is clipped as one. A customer touches at most ``max_groups_per_customer`` groups
(default 1: the group of its first row; without a customer key every customer has one row and
one group). So "spend per channel over transactions" sums each customer's spend in each channel,
clipped per (customer, channel), in at most k channels.

Also the machinery ``mean`` reuses (one vector, two parts):

* ``count`` ``[0, G)``: 1 per (customer, group) with a value (L∞ = 1, L1 = k, L2 = √k);
* ``sum`` ``[G, 2G)``: the customer's value clipped to ``[lower, upper]`` and CENTRED on
  ``offset = (lower + upper)/2``, quantised with stochastic rounding, in its group's cell: at most
  ``top = 2^23 - 1`` units per cell with the rounding (L∞ = top, L1 = k·top, L2 = √k·top).
  Centring halves the bound to ``(upper - lower)/2``; the released sum is ``S + offset·C`` and its
  noise sd ``sqrt(sd_S² + offset²·sd_C²)`` is never above that of an uncentred sum bounded by
  ``max(|lower|, |upper|)``.

Budget split: ρ/2 to each part (zCDP composition adds them back to ρ). Rows whose value is
missing (NaN) are left out; a customer without any value in a group is left out of both parts.
Suppression: a group whose NOISY count is below ``min_cohort_size`` is suppressed whole
(post-processing of DP output: no budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import contribution as c
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="sum",
    description="DP sum of a clipped per-customer value, in total or per public group",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (*_docs.BOUNDS, _docs.PER_CUSTOMER, _docs.MAX_GROUPS, *_docs.GROUPS)
# Why 24 bits: one customer moves the sum part by up to 2^23 units, so the part's DP sigma is at
# least 2^23/sqrt(2ρ_part) (~2.6e6 units at ρ_part = 5) while stochastic rounding adds at most
# sqrt(n)/2 units of sd over n customers (5e3 at n = 1e8): rounding stays far below the DP noise
# and the +1 rounding slack is a 1e-7 share of the sensitivity. A node of 2^30 customers then
# needs 53 bits per coordinate, inside uint64 (``bits_for`` checks the declared cap).
VALUE_BITS = 24


def moment_parts(
    *, size: int, groups_cap: int, scale: float, rho: float, survivors_t: int, value: str = "sum"
) -> tuple[v.VectorPart, v.VectorPart]:
    """A count part ``[0, size)`` and a value part ``[size, 2·size)``, ρ/2 each, for a customer that
    adds at most 1 and one value of at most ``2^(VALUE_BITS-1) - 1`` units to each of at most
    ``groups_cap`` groups: L∞ 1 and top, L1 k and k·top, L2 √k and √k·top."""
    top = 2 ** (VALUE_BITS - 1) - 1  # fixed_point_scale guarantees ceil(bound·scale) <= top
    k, t = groups_cap, survivors_t
    count = v.make_part(
        "count",
        start=0,
        stop=size,
        scale=1.0,
        linf_bound=1,
        l1=k,
        l2=math.sqrt(k),
        rho=rho / 2,
        survivors_t=t,
    )
    total = v.make_part(
        value,
        start=size,
        stop=2 * size,
        scale=scale,
        linf_bound=top,
        l1=k * top,
        l2=math.sqrt(k) * top,
        rho=rho / 2,
        survivors_t=t,
    )
    return count, total


def plan_moments(
    spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int, analysis: str
) -> v.VectorPlan:
    """The count+sum plan shared by ``sum`` and ``mean`` (no data; fail closed)."""
    p.check_params(spec, frozenset({"field", "lower", "upper", "per_customer", "max_groups_per_customer"}))
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = p.privacy_rho(spec)
    field = p.optional_value_field(spec, fields, numeric=True)
    lower, upper = p.bounds(spec)
    groups = p.grouping(spec, fields)
    size = len(groups.labels)
    bound = p.contribution(spec, fields, groups=size, values=True, rows_allowed=False)
    half = (upper - lower) / 2
    scale = fixed_point_scale(clip_bound=half, value_bits=VALUE_BITS)
    count, total = moment_parts(
        size=size, groups_cap=bound.groups_cap, scale=scale, rho=rho, survivors_t=survivors_t
    )
    name = None if field is None else field.name
    return v.VectorPlan(
        analysis=analysis,
        dataset=spec.dataset,
        fields=p.touched(bound.customer_key, name, groups.field),
        length=2 * size,
        parts=(count, total),
        layout={
            "field": name,
            "group_by": groups.field,
            "groups": groups.labels,
            "lower": lower,
            "upper": upper,
            "offset": (lower + upper) / 2,
            "contribution": bound.as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _centred(plan: v.VectorPlan, data: Mapping[str, Any]) -> tuple[v.IntArray, v.FloatArray]:
    """Group and centred clipped value of every kept (customer, group) with a value."""
    layout = plan.layout
    name = layout["field"]
    values = None if name is None else c.numeric(data, name)
    present = np.ones(c.rows(data, plan), dtype=bool) if values is None else ~np.isnan(values)
    idx, value = c.per_customer_values(plan, data, values=values, eligible=present)
    half = (layout["upper"] - layout["lower"]) / 2
    # Clip again after centring: float rounding of the subtraction must never exceed the bound.
    centred = np.clip(np.clip(value, layout["lower"], layout["upper"]) - layout["offset"], -half, half)
    return idx, centred


def vector_moments(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    idx, centred = _centred(plan, data)
    size = plan.length // 2
    out = np.zeros(plan.length, dtype=np.int64)
    out[:size] = np.bincount(idx, minlength=size)
    np.add.at(out[size:], idx, stochastic_round(centred, scale=plan.part("sum").scale, rng=rng))
    return out


def exact_moments(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    idx, centred = _centred(plan, data)
    size = plan.length // 2
    out = np.zeros(plan.length, dtype=np.float64)
    out[:size] = np.bincount(idx, minlength=size)
    out[size:] = np.bincount(idx, weights=centred, minlength=size)
    return out


def release_moments(
    plan: v.VectorPlan,
    total: Any,
    *,
    summands: int,
    min_cohort_size: int,
    truth: Any | None,
    with_mean: bool,
) -> dict[str, Any]:
    """Cells with count, sum and (``with_mean``) mean; see ``sum.release`` / ``mean.release``."""
    noisy = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    count_part, sum_part = plan.part("count"), plan.part("sum")
    var_c = v.variance(plan, count_part, summands=summands)
    var_s = v.variance(plan, sum_part, summands=summands)
    lower, upper, offset = plan.layout["lower"], plan.layout["upper"], plan.layout["offset"]
    size = plan.length // 2
    exact_vec = None if truth is None else np.asarray(truth, dtype=np.float64)
    for i, label in enumerate(plan.layout["groups"]):
        c = float(noisy[i])
        s = float(noisy[size + i]) / sum_part.scale  # centred sum, value units
        count, suppressed = v.count_estimate(c, v.Z95 * math.sqrt(var_c), min_cohort_size=min_cohort_size)
        cell: dict[str, Any] = {"group": label, "count": count}
        cell["sum"] = (
            None if suppressed else v.estimate(s + offset * c, v.Z95 * math.sqrt(var_s + offset**2 * var_c))
        )
        if with_mean:
            cell["mean"] = None if suppressed else _mean(s, c, var_s, var_c, lower=lower, upper=upper)
        cell["suppressed"] = suppressed
        if exact_vec is not None:
            tc, ts = float(exact_vec[i]), float(exact_vec[size + i])
            cell["true"] = {"count": tc, "sum": ts + offset * tc}
            if with_mean:
                cell["true"]["mean"] = offset + ts / tc if tc > 0 else None
        doc["cells"].append(cell)
    return doc


def _mean(
    s: float, c: float, var_s: float, var_c: float, *, lower: float, upper: float
) -> dict[str, Any] | None:
    """Mean ``offset + S/C`` with a delta-method interval, both clipped to ``[lower, upper]``.

    Delta method for the ratio of the centred sum ``S`` and the count ``C`` (independent noises):
    ``Var(S/C) ≈ (Var S + (S/C)²·Var C)/C²``. Clipping to the public bounds is post-processing
    and never moves the interval away from a true mean, which lies inside them.
    """
    if c <= 0:
        return None
    offset = (lower + upper) / 2
    ratio = s / c
    half = v.Z95 * math.sqrt(var_s + ratio**2 * var_c) / c

    def clip(x: float) -> float:
        return float(min(max(x, lower), upper))

    return {"value": clip(offset + ratio), "ci95": [clip(offset + ratio - half), clip(offset + ratio + half)]}


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    return plan_moments(spec, fields, survivors_t=survivors_t, n_nodes=n_nodes, analysis=INFO.name)


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Counts then quantised centred sums per group (int64, no noise)."""
    return vector_moments(plan, data, rng=rng)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """Counts then unquantised centred sums per group (float64, demo truth)."""
    return exact_moments(plan, data)


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """Per group: noisy count and sum ``S + offset·C`` with ±1.96 sd intervals (sd from both parts).

    A group whose noisy count is below ``min_cohort_size`` is suppressed (post-processing, no budget).
    """
    return release_moments(
        plan, total, summands=summands, min_cohort_size=min_cohort_size, truth=truth, with_mean=False
    )
