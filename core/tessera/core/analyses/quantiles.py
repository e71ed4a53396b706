"""``quantiles``: quantiles of a clipped numeric field, read off a DP histogram (post-processing).

The vector is exactly ``histogram``'s (``bins`` equal-width bins over ``[lower, upper]``, default
64, per public group; all of ρ on one count part), so one customer contributes exactly as there:
by default one per-customer value (``per_customer``: sum (default), count or mean of its rows in
a group) in at most ``max_groups_per_customer`` groups (L∞ = 1, L1 = k, L2 = √k): quantiles of
per-customer values; or, with ``max_rows_per_customer: m``, its first m rows (L∞ = L1 = L2 = m):
quantiles of row values with each customer weighing at most m. The coordinator clamps the noisy counts at 0,
accumulates them into a CDF and inverts it at each ``level`` (default 0.25, 0.5, 0.75) with linear
interpolation inside the bin; the top-level quantiles pool the groups' histograms.

Interval (documented approximation): with ``C_k`` the UNCLAMPED noisy cumulative count at edge
``k`` and ``T = C_B`` the noisy total, the gap ``C_k - q·T`` is unbiased for the true gap and its
noise has variance ``((1-q)²·k + q²·(B-k))·v`` (``v`` the noise variance of one cell; the cells'
noises are independent). The true quantile lies in the first bin whose true gap is >= 0, so the
95% band ``gap ± 1.96·sd`` is inverted: the low end is the left edge of the first bin whose upper
band reaches 0, the high end the right edge of the first bin whose lower band does. Snapping to
bin edges also covers the error of interpolating inside a bin. The band is pointwise (not
simultaneous over edges), so coverage is approximate; it is usually above 95% thanks to the
snapping. Values below ``lower`` or above ``upper`` were clamped into the end bins, so a level
whose true quantile lies outside ``[lower, upper]`` is reported at the bound.

Suppression (post-processing, no budget): the whole result is suppressed when the pooled noisy
total is below ``min_cohort_size``; a group's quantiles are suppressed when its own noisy total is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import histogram
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="quantiles",
    description="DP quantiles of a clipped per-customer value from a DP histogram, per public group",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (
    *_docs.BOUNDS,
    _docs.ParamDoc(
        "bins", "integer", "64", "bins", "resolution of the DP histogram the quantiles are read from"
    ),
    _docs.ParamDoc(
        "levels",
        "numbers",
        "0.25,0.5,0.75",
        "fractions",
        "the quantile levels, each strictly between 0 and 1",
    ),
    *_docs.CONTRIBUTION,
    *_docs.GROUPS,
)
DEFAULT_LEVELS = (0.25, 0.5, 0.75)


def _levels(spec: JobSpec) -> tuple[float, ...]:
    value = spec.params.get("levels", DEFAULT_LEVELS)
    if (
        not isinstance(value, tuple)
        or not value
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in value)
        or len(set(value)) != len(value)
    ):
        raise InvalidRequest(
            "parameter 'levels' must be a non-empty list of distinct numbers strictly between 0 and 1"
        )
    return tuple(sorted(float(x) for x in value))


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    p.check_params(spec, frozenset({"field", "lower", "upper", "bins", "levels"}) | p.CONTRIBUTION_PARAMS)
    levels = _levels(spec)
    return histogram.plan_histogram(
        spec,
        fields,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
        analysis=INFO.name,
        numeric_only=True,
        extra={"levels": levels},
    )


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """The histogram's counts per (group, bin), int64, no noise."""
    return histogram.local_vector(plan, data, rng=rng)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised histogram as float64 (demo truth; quantiles of it are 'binned truth')."""
    return histogram.exact(plan, data)


def _invert(cum: v.FloatArray, counts: v.FloatArray, edges: v.FloatArray, target: float) -> float:
    """Point where the piecewise-linear CDF (``cum`` at ``edges``) reaches ``target``."""
    k = int(np.clip(np.searchsorted(cum, target, side="left"), 1, counts.size))
    width = counts[k - 1]
    frac = 0.0 if width <= 0 else min(max((target - cum[k - 1]) / width, 0.0), 1.0)
    return float(edges[k - 1] + frac * (edges[k] - edges[k - 1]))


def point_quantiles(counts: Any, edges: Any, levels: tuple[float, ...]) -> list[float | None]:
    """Quantiles of a histogram (negative counts clamped to 0); None when it holds nobody."""
    hist = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    cum = np.concatenate(([0.0], np.cumsum(hist)))
    if cum[-1] <= 0:
        return [None for _ in levels]
    return [_invert(cum, hist, np.asarray(edges), q * cum[-1]) for q in levels]


def noisy_quantiles(
    counts: Any, var_bin: float, edges: Any, levels: tuple[float, ...]
) -> list[dict[str, Any]]:
    """Quantiles with intervals from the inverted 95% band of the noisy CDF (module docstring)."""
    raw = np.asarray(counts, dtype=np.float64)
    bounds = np.asarray(edges, dtype=np.float64)
    cum = np.concatenate(([0.0], np.cumsum(raw)))  # unclamped: unbiased at every edge
    k = np.arange(cum.size, dtype=np.float64)
    nbins = raw.size
    out: list[dict[str, Any]] = []
    for q, value in zip(levels, point_quantiles(raw, bounds, levels), strict=True):
        if value is None:
            out.append({"level": q, "value": None, "ci95": None})
            continue
        gap = cum - q * cum[-1]
        band = v.Z95 * np.sqrt(((1 - q) ** 2 * k + q**2 * (nbins - k)) * var_bin)
        k_lo = int(np.argmax(gap + band >= 0)) if np.any(gap + band >= 0) else nbins
        reach = np.nonzero(gap - band >= 0)[0]
        low = float(bounds[max(k_lo - 1, 0)])
        high = float(bounds[reach[0]]) if reach.size else float(bounds[-1])
        out.append({"level": q, "value": value, "ci95": [min(low, value), max(high, value)]})
    return out


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """Per group: noisy count and quantiles; top level: quantiles of the pooled histogram."""
    noisy = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    groups, levels = plan.layout["groups"], tuple(plan.layout["levels"])
    edges = plan.layout["edges"]
    nbins = len(plan.layout["bins"])
    hist = noisy.reshape(len(groups), nbins).astype(np.float64)
    var_bin = v.variance(plan, plan.part("count"), summands=summands)
    pooled = hist.sum(axis=0)
    suppressed_all = float(pooled.sum()) < min_cohort_size
    doc["levels"] = list(levels)
    doc["suppressed"] = suppressed_all
    doc["quantiles"] = (
        None if suppressed_all else noisy_quantiles(pooled, len(groups) * var_bin, edges, levels)
    )
    exact_hist = None if truth is None else np.asarray(truth, dtype=np.float64).reshape(len(groups), nbins)
    if exact_hist is not None:
        doc["true"] = {"quantiles": point_quantiles(exact_hist.sum(axis=0), edges, levels)}
    half = v.Z95 * math.sqrt(nbins * var_bin)
    for g, label in enumerate(groups):
        count, suppressed = v.count_estimate(float(hist[g].sum()), half, min_cohort_size=min_cohort_size)
        suppressed = suppressed or suppressed_all
        cell: dict[str, Any] = {
            "group": label,
            "count": None if suppressed else count,
            "quantiles": None if suppressed else noisy_quantiles(hist[g], var_bin, edges, levels),
            "suppressed": suppressed,
        }
        if exact_hist is not None:
            cell["true"] = {
                "count": float(exact_hist[g].sum()),
                "quantiles": point_quantiles(exact_hist[g], edges, levels),
            }
        doc["cells"].append(cell)
    return doc
