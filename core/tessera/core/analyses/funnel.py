"""``funnel``: how many customers go through an ordered list of event types within a time window.

A customer reaches stage ``j`` (1-based) when its events hold ``steps[0], …, steps[j-1]`` in that
order in time (equal times keep row order), the last within ``window_days`` of the first; only
events between the optional ``since`` and ``until`` dates count. The level a customer reaches is
the highest such ``j`` over every start (the window-funnel rule: keep, per level, the latest start
that reached it, which leaves the most window to the later steps).

Vector: one count per level, ``levels[j-1]`` = customers whose HIGHEST stage is ``j`` — each
customer adds 1 to exactly one cell however many events it has (a customer with 1000 events
counts once): L∞ = L1 = L2 = 1, the whole ρ on that part. Stage counts are post-processing:
``stage_j = Σ_{l >= j} levels[l]``, with noise variance ``(S - j + 1)·σ²``. Counting each stage
directly would give one customer L2 = √S; the level encoding has L2 = 1, so every stage's noise is
no larger and later stages' is smaller.

Released: each stage's count, conversion from the first stage and from the previous one, with
95% intervals (delta method on independent level noises); a stage whose noisy count is below
``min_cohort_size`` is suppressed and so are the rates that use it (post-processing, no budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.customer_table import day_param, key_column
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="funnel",
    description="DP customers reaching each stage of an ordered event funnel within a time window",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)
MAX_STEPS = 20
_PARAMS = frozenset({"steps", "window_days", "event_field", "time_field", "since", "until"})
PARAMS = (
    _docs.ParamDoc(
        "steps", "texts", "required", "-", "the ordered event types, 2 to 20, e.g. visit,cart,buy"
    ),
    _docs.ParamDoc("window_days", "number", "required", "days", "every step within this long of the first"),
    _docs.ParamDoc("event_field", "field", "event_type", "-", "the field holding each row's event type"),
    _docs.ParamDoc("time_field", "field", "time", "-", "the field holding each row's time"),
    _docs.ParamDoc("since", "text", "-", "YYYY-MM-DD", "count events from this day on"),
    _docs.ParamDoc("until", "text", "-", "YYYY-MM-DD", "count events up to this day (inclusive)"),
)


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """One count per funnel level (no data; fail closed)."""
    p.check_params(spec, _PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("funnel does not group its results")
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = p.privacy_rho(spec)
    steps = p.labels_param(spec, "steps")
    if not 2 <= len(steps) <= MAX_STEPS:
        raise InvalidRequest(f"parameter 'steps' must list 2 to {MAX_STEPS} event types")
    window = p.number_param(spec, "window_days", default=None)
    if not window > 0:
        raise InvalidRequest("parameter 'window_days' must be above 0")
    event = _field(spec, fields, "event_field", "event_type", p.LABEL_TYPES)
    time = _field(spec, fields, "time_field", "time", p.NUMERIC_TYPES | {"date"})
    since = day_param(spec, "since") if "since" in spec.params else -math.inf
    until = day_param(spec, "until") + 1 if "until" in spec.params else math.inf
    if not since < until:
        raise InvalidRequest("parameter 'since' must be before 'until'")
    key = p.customer_key(fields)
    part = v.make_part(
        "levels", start=0, stop=len(steps), scale=1.0, linf_bound=1, rho=rho, survivors_t=survivors_t
    )
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(key, event, time),
        length=len(steps),
        parts=(part,),
        layout={
            "field": event,
            "group_by": None,
            "steps": steps,
            "window_days": window,
            "time": time,
            "since": since if math.isfinite(since) else None,
            "until": until if math.isfinite(until) else None,
            "contribution": p.Contribution(key, "level", None, 1).as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _field(
    spec: JobSpec, fields: Mapping[str, FieldSchema], param: str, default: str, types: frozenset[str]
) -> str:
    name = spec.params.get(param, default)
    if not isinstance(name, str) or p.field_schema(fields, name).type not in types:
        raise InvalidRequest(f"parameter {param!r} must name a field of type {', '.join(sorted(types))}")
    return name


_MAX_DAYS = 1e6  # days from 1970: about 2,700 years either way


def levels(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.IntArray:
    """The highest stage (0 = none) of each customer with at least one counted event."""
    layout = plan.layout
    steps = tuple(layout["steps"])
    key = layout["contribution"]["customer_key"]
    kind = p.label_index(data[layout["field"]], steps)
    time = np.asarray(data[layout["time"]], dtype=np.float64)
    n = time.shape[0]
    ids = np.arange(n, dtype=np.int64) if key is None else key_column(data, key)
    lo = -np.inf if layout["since"] is None else layout["since"]
    hi = np.inf if layout["until"] is None else layout["until"]
    # A time beyond a few thousand years is a broken value, not an event: left out like a missing
    # one (it would also overflow the segmented running max below).
    sane = np.isfinite(time) & (np.abs(time) < _MAX_DAYS)
    used = (ids >= 0) & sane & (time >= lo) & (time < hi) & (kind >= 0)
    idx = np.flatnonzero(used)
    order = idx[np.lexsort((idx, time[idx], ids[idx]))]  # by customer, time, row
    cid, t, k = ids[order], time[order], kind[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = cid[1:] != cid[:-1]
    group = np.cumsum(new) - 1
    customers = int(group[-1]) + 1 if order.size else 0
    if not customers:
        return np.zeros(0, dtype=np.int64)
    # Segmented running max: offset each customer's values above every earlier customer's.
    t0 = float(t.min())
    span = float(t.max()) - t0 + 2.0
    base = group * span

    def running_max(values: v.FloatArray) -> v.FloatArray:
        shifted = np.where(np.isnan(values), base, base + 1.0 + (values - t0))
        out = np.maximum.accumulate(shifted) - base
        return np.where(out >= 1.0, out - 1.0 + t0, np.nan)

    window = float(layout["window_days"])
    level = np.zeros(customers, dtype=np.int64)
    latest = running_max(np.where(k == 0, t, np.nan))  # latest start that reached stage 1
    for j in range(1, len(steps) + 1):
        reached = np.zeros(customers, dtype=bool)
        reached[group[~np.isnan(latest)]] = True
        level[reached] = j
        if j == len(steps):
            break
        ok = (k == j) & ~np.isnan(latest) & (t - latest <= window)
        latest = running_max(np.where(ok, latest, np.nan))
    return level


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Customers per highest stage (int64, no noise); ``rng`` draws nothing."""
    del rng
    level = levels(plan, data)
    return np.bincount(level[level > 0] - 1, minlength=plan.length).astype(np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    return local_vector(plan, data, rng=np.random.default_rng(0)).astype(np.float64)


def _conversion(a: float, b: float, var_a: float, var_b: float) -> dict[str, Any] | None:
    """``a / (a + b)`` for independent noisy ``a`` and ``b`` (delta method), clipped to [0, 1]."""
    total = a + b
    if not total > 0:
        return None
    r = a / total
    half = v.Z95 * math.sqrt(b * b * var_a + a * a * var_b) / total**2
    return {"value": min(max(r, 0.0), 1.0), "ci95": [max(r - half, 0.0), min(r + half, 1.0)]}


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """Stage counts and conversions with 95% intervals (see the module docstring)."""
    noisy = v.check_total(plan, total, summands=summands).astype(np.float64)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    var = v.variance(plan, plan.part("levels"), summands=summands)
    steps = tuple(plan.layout["steps"])
    s = len(steps)
    stage = np.cumsum(noisy[::-1])[::-1]  # stage_j = Σ_{l >= j} levels
    true_stage = None if truth is None else np.cumsum(np.asarray(truth, dtype=np.float64)[::-1])[::-1]
    kept = [bool(x >= min_cohort_size) for x in stage]
    for j in range(s):
        var_stage = (s - j) * var
        cell: dict[str, Any] = {"stage": j + 1, "event": steps[j], "suppressed": not kept[j]}
        cell["count"] = v.estimate(stage[j], v.Z95 * math.sqrt(var_stage)) if kept[j] else None
        first = previous = None
        if j > 0 and kept[j] and kept[0]:
            first = _conversion(stage[j], stage[0] - stage[j], var_stage, j * var)
        if j > 0 and kept[j] and kept[j - 1]:
            previous = _conversion(stage[j], noisy[j - 1], var_stage, var)
        cell["conversion_from_first"] = first
        cell["conversion_from_previous"] = previous
        if true_stage is not None:
            cell["true"] = {"count": float(true_stage[j])}
        doc["cells"].append(cell)
    doc["window_days"] = plan.layout["window_days"]
    return doc
