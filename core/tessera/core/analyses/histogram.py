"""``histogram``: customers (or their rows) per bin, per public group, of a numeric or category field.

* numeric ``field`` with ``lower``, ``upper`` and ``bins``: equal-width bins over
  ``[lower, upper]``; values outside are clamped into the end bins;
* category/string ``field`` with ``categories``: one bin per listed category plus ``other``.

Vector: ``G × B`` count cells, group-major (cell ``g·B + b``), the whole ρ on that one part. What
one customer may contribute, over all of its rows:

* by default, customers: a customer's rows in a group become ONE value (numeric: ``per_customer``
  sum (default), count or mean of ``field``, so "per-customer spend" or, with ``per_customer:
  count`` and no field, "per-customer event count"; category: its first row's category), binned
  once, in at most ``max_groups_per_customer`` groups (default 1): L∞ = 1, L1 = k, L2 = √k;
* ``max_rows_per_customer: m``: rows, at most the customer's first m rows with a value, each in
  its own bin: L∞ = L1 = L2 = m.

Without a customer key every customer has one row, so both caps are 1. Missing values are left
out. A bin whose own noisy count is below ``min_cohort_size`` is suppressed (post-processing of DP
output: no budget).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import contribution as c
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="histogram",
    description="DP customers (or capped rows) per bin of a per-customer value or category, per group",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (
    _docs.ParamDoc(
        "field", "field", "-", "-", "the field to bin (numeric or category); count's rows if left out"
    ),
    _docs.ParamDoc(
        "lower",
        "number",
        "required (numeric)",
        "field units",
        "the lowest bin edge; values below are clipped",
    ),
    _docs.ParamDoc(
        "upper",
        "number",
        "required (numeric)",
        "field units",
        "the highest bin edge; values above are clipped",
    ),
    _docs.ParamDoc(
        "bins", "integer", "required (numeric)", "bins", "equal-width bins between lower and upper"
    ),
    _docs.ParamDoc("categories", "texts", "-", "-", "the public categories of a category field"),
    *_docs.CONTRIBUTION,
    *_docs.GROUPS,
)
MAX_BINS = 1 << 20
MAX_CELLS = 1 << 20
# Above this many cells a result lists counts as one array with one shared interval instead of one
# labelled cell each: a million labelled cells would be a 125 MB document.
LABELLED_CELLS = 4096


def edges(lower: float, upper: float, bins: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.linspace(lower, upper, bins + 1))


def bin_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    last = len(bounds) - 2
    return tuple(
        f"[{a:g}, {b:g}{']' if i == last else ')'}" for i, (a, b) in enumerate(itertools.pairwise(bounds))
    )


def numeric_bins(values: v.FloatArray, *, lower: float, upper: float, bins: int) -> v.IntArray:
    """Bin of each value (NaN -> -1); values outside ``[lower, upper]`` go to the end bins."""
    out = np.full(values.shape, -1, dtype=np.int64)
    present = ~np.isnan(values)
    position = (np.clip(values[present], lower, upper) - lower) / (upper - lower) * bins
    out[present] = np.clip(np.floor(position), 0, bins - 1).astype(np.int64)
    return out


def plan_histogram(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    analysis: str,
    numeric_only: bool,
    extra: Mapping[str, Any] | None = None,
) -> v.VectorPlan:
    """The histogram plan shared with ``quantiles`` (no data; fail closed)."""
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = p.privacy_rho(spec)
    field = p.optional_value_field(spec, fields, numeric=numeric_only)
    groups = p.grouping(spec, fields)
    name = None if field is None else field.name
    layout: dict[str, Any] = {"field": name, "group_by": groups.field, "groups": groups.labels}
    if field is None or field.type in p.NUMERIC_TYPES:
        if "categories" in spec.params:
            raise InvalidRequest("parameter 'categories' applies to category fields, not to numeric ones")
        lower, upper = p.bounds(spec)
        default = 64 if numeric_only else None
        bins = p.int_param(spec, "bins", default=default, low=1, high=MAX_BINS)
        layout |= {"kind": "numeric", "lower": lower, "upper": upper, "nbins": bins}
        if len(groups.labels) * bins <= LABELLED_CELLS:
            bounds = edges(lower, upper, bins)
            layout |= {"edges": bounds, "bins": bin_labels(bounds)}
        elif analysis != INFO.name:
            raise InvalidRequest(f"{analysis} takes at most {LABELLED_CELLS} cells; use fewer bins or groups")
    elif field.type in p.LABEL_TYPES:
        for param in ("lower", "upper", "bins"):
            if param in spec.params:
                raise InvalidRequest(f"parameter {param!r} applies to numeric fields, not to category ones")
        labels = (*p.labels_param(spec, "categories"), p.OTHER)
        layout |= {"kind": "category", "bins": labels, "nbins": len(labels)}
    else:
        raise InvalidRequest("parameter 'field' must name a numeric, category or string field for histogram")
    bound = p.contribution(
        spec,
        fields,
        groups=len(groups.labels),
        values=True,
        rows_allowed=True,
        category=layout["kind"] == "category",
    )
    layout |= dict(extra or {})
    layout["contribution"] = bound.as_layout()
    size = len(groups.labels) * layout["nbins"]
    if size > MAX_CELLS:
        raise InvalidRequest(f"groups times bins exceeds {MAX_CELLS} cells; use fewer bins or groups")
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
        analysis=analysis,
        dataset=spec.dataset,
        fields=p.touched(bound.customer_key, name, groups.field),
        length=size,
        parts=(part,),
        layout=layout,
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _row_bins(plan: v.VectorPlan, data: Mapping[str, Any]) -> tuple[v.FloatArray | None, v.IntArray]:
    """Per row: the numeric value (``None`` when the customer's rows are only counted) and the bin
    of a category (-1 = missing; for numeric fields every row with a value gets 0)."""
    layout = plan.layout
    name = layout["field"]
    if layout["kind"] == "numeric":
        if name is None:
            return None, np.zeros(c.rows(data, plan), dtype=np.int64)
        values = c.numeric(data, name)
        return values, np.where(np.isnan(values), -1, 0).astype(np.int64)
    b = p.label_index(data[name], tuple(layout["bins"][:-1]))
    b[b == -2] = int(layout["nbins"]) - 1  # listed nowhere -> "other"; -1 (missing) stays out
    return None, b


def cell_index(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.IntArray:
    """Cell ``g·B + b`` of every unit counted: a kept (customer, group) value, or a kept row."""
    layout = plan.layout
    nbins = int(layout["nbins"])
    numeric = layout["kind"] == "numeric"
    values, b = _row_bins(plan, data)
    present = b >= 0

    def binned(x: v.FloatArray) -> v.IntArray:
        return numeric_bins(x, lower=layout["lower"], upper=layout["upper"], bins=nbins)

    if c.contribution_of(plan).max_rows is not None:
        kept = c.rows_kept(plan, data, eligible=present)
        g = c.group_index(plan, data)[kept]
        cells = binned(values[kept]) if numeric and values is not None else b[kept]
        return g * nbins + cells
    g, value = c.per_customer_values(
        plan, data, values=values if numeric else b.astype(np.float64), eligible=present
    )
    return g * nbins + (binned(value) if numeric else value.astype(np.int64))


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The vector plan (no data). Raises ``PolicyViolation`` / ``InvalidRequest`` (fail closed)."""
    p.check_params(spec, frozenset({"field", "lower", "upper", "bins", "categories"}) | p.CONTRIBUTION_PARAMS)
    return plan_histogram(
        spec, fields, survivors_t=survivors_t, n_nodes=n_nodes, analysis=INFO.name, numeric_only=False
    )


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Customers (or capped rows) per (group, bin), int64, no noise; ``rng`` draws nothing."""
    del rng  # one signature for every analysis
    return np.bincount(cell_index(plan, data), minlength=plan.length).astype(np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised counts per (group, bin) as float64 (demo truth), bounded as ``local_vector``."""
    return np.bincount(cell_index(plan, data), minlength=plan.length).astype(np.float64)


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """One cell per (group, bin) with its noisy count and ±1.96 sd interval.

    Each bin is suppressed on its own noisy count (post-processing, no budget).
    """
    counts = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    half = v.half_width(plan, plan.part("count"), summands=summands)
    if "bins" not in plan.layout:
        return _compact(plan, doc, counts, half, min_cohort_size=min_cohort_size, truth=truth)
    labels = plan.layout["bins"]
    bounds = plan.layout.get("edges")
    exact_vec = None if truth is None else np.asarray(truth, dtype=np.float64)
    for g, group in enumerate(plan.layout["groups"]):
        for b, label in enumerate(labels):
            i = g * len(labels) + b
            count, suppressed = v.count_estimate(float(counts[i]), half, min_cohort_size=min_cohort_size)
            cell: dict[str, Any] = {"group": group, "bin": label}
            if bounds is not None:
                cell["edges"] = [bounds[b], bounds[b + 1]]
            cell |= {"count": count, "suppressed": suppressed}
            if exact_vec is not None:
                cell["true"] = {"count": float(exact_vec[i])}
            doc["cells"].append(cell)
    return doc


def _compact(
    plan: v.VectorPlan,
    doc: dict[str, Any],
    counts: Any,
    half: float,
    *,
    min_cohort_size: int,
    truth: Any | None,
) -> dict[str, Any]:
    """A large histogram: counts per cell (group-major) as one array, None where suppressed, and
    the one 95% half-width every cell shares (same noise everywhere)."""
    values = np.asarray(counts, dtype=np.float64)
    released = values >= min_cohort_size
    doc |= {
        "lower": plan.layout["lower"],
        "upper": plan.layout["upper"],
        "nbins": plan.layout["nbins"],
        "groups": list(plan.layout["groups"]),
        "ci95_half_width": half,
        "counts": [
            float(x) if ok else None for x, ok in zip(values.tolist(), released.tolist(), strict=True)
        ],
        "suppressed_cells": int((~released).sum()),
    }
    if truth is not None:
        doc["true_counts"] = np.asarray(truth, dtype=np.float64).tolist()
    return doc
