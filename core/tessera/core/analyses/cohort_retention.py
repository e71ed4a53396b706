"""``cohort_retention``: first-purchase-month cohorts × months since, as a DP retention matrix.

A customer's cohort is the calendar month (UTC) of its first row with a time; the cohorts are the
``cohorts`` months from ``first_month`` (``YYYY-MM``) on, and a customer whose first month is
outside them is left out. It is active ``m`` months later (``m`` in ``0 … months - 1``) when it has
at least one row in that calendar month; month 0 is the cohort itself, so cell ``(c, 0)`` is the
cohort's size.

Vector: ``cohorts × months`` counts, cohort-major; a customer adds 1 to each month it is active in,
within its own cohort's row only, however many rows it has: L∞ = 1, L1 = ``months``,
L2 = √``months``; the whole ρ on that part. Released: each cell's count and retention
``count(c, m) / count(c, 0)`` with 95% intervals (delta method, independent noises, clipped to
[0, 1]); a cell whose noisy count is below ``min_cohort_size`` is suppressed, and so is every rate
of a suppressed cohort (post-processing, no budget).
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
from tessera.core.analyses.customer_table import key_column
from tessera.core.analyses.ratios import ratio
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="cohort_retention",
    description="DP retention matrix of first-purchase-month cohorts by months since",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)
MAX_COHORTS = 120
MAX_MONTHS = 120
_PARAMS = frozenset({"first_month", "cohorts", "months", "time_field"})
PARAMS = (
    _docs.ParamDoc(
        "first_month", "text", "required", "YYYY-MM", "the first cohort's month of first purchase"
    ),
    _docs.ParamDoc(
        "cohorts", "integer", "required", "months", "how many monthly cohorts, from first_month on"
    ),
    _docs.ParamDoc("months", "integer", "required", "months", "months since the first, 0 (the cohort) on"),
    _docs.ParamDoc("time_field", "field", "time", "-", "the field holding each row's time"),
)
_DAY_RANGE = 1e6  # days beyond ±2700 years are not times (and would overflow datetime64)


def _month(spec: JobSpec) -> int:
    value = spec.params.get("first_month")
    try:
        if not isinstance(value, str) or len(value) != 7 or value[4] != "-":
            raise ValueError
        year, month = int(value[:4]), int(value[5:])
        if not 1 <= month <= 12:
            raise ValueError
    except ValueError:
        raise InvalidRequest("parameter 'first_month' is required as YYYY-MM") from None
    return (year - 1970) * 12 + month - 1


def plan(spec: JobSpec, fields: Mapping[str, FieldSchema], *, survivors_t: int, n_nodes: int) -> v.VectorPlan:
    """The retention matrix's plan (no data; fail closed)."""
    p.check_params(spec, _PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("cohort_retention does not group its results")
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rho = p.privacy_rho(spec)
    first = _month(spec)
    cohorts = p.int_param(spec, "cohorts", default=None, low=1, high=MAX_COHORTS)
    months = p.int_param(spec, "months", default=None, low=1, high=MAX_MONTHS)
    time = spec.params.get("time_field", "time")
    if not isinstance(time, str) or p.field_schema(fields, time).type not in p.NUMERIC_TYPES | {"date"}:
        raise InvalidRequest("parameter 'time_field' must name a date or numeric field")
    key = p.customer_key(fields)
    size = cohorts * months
    part = v.make_part(
        "count",
        start=0,
        stop=size,
        scale=1.0,
        linf_bound=1,
        l1=months,
        l2=math.sqrt(months),
        rho=rho,
        survivors_t=survivors_t,
    )
    labels = tuple(f"{1970 + (first + c) // 12:04d}-{(first + c) % 12 + 1:02d}" for c in range(cohorts))
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(key, time),
        length=size,
        parts=(part,),
        layout={
            "field": time,
            "group_by": None,
            "first_month": first,
            "cohort_labels": labels,
            "months": months,
            "contribution": p.Contribution(key, "active_months", None, months).as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def cells(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.IntArray:
    """The (cohort, month since) cell of each distinct active month of each counted customer."""
    layout = plan.layout
    time = np.asarray(data[layout["field"]], dtype=np.float64)
    key = layout["contribution"]["customer_key"]
    ids = np.arange(time.shape[0], dtype=np.int64) if key is None else key_column(data, key)
    ok = (ids >= 0) & np.isfinite(time) & (np.abs(time) < _DAY_RANGE)
    ids, day = ids[ok], np.floor(time[ok]).astype(np.int64)
    month = day.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(ids, return_inverse=True)
    first = np.full(unique.size, np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, month)
    cohort = first - int(layout["first_month"])
    since = month - first[inverse]
    n_months, n_cohorts = int(layout["months"]), len(layout["cohort_labels"])
    keep = (cohort[inverse] >= 0) & (cohort[inverse] < n_cohorts) & (since < n_months)
    cell = cohort[inverse][keep] * n_months + since[keep]
    owner = inverse[keep]
    # One count per (customer, cell): a customer's many rows in a month count once.
    pairs = np.unique(owner * (n_cohorts * n_months) + cell)
    out: v.IntArray = (pairs % (n_cohorts * n_months)).astype(np.int64)
    return out


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """Active customers per (cohort, month since) (int64, no noise); ``rng`` draws nothing."""
    del rng
    return np.bincount(cells(plan, data), minlength=plan.length).astype(np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    return np.bincount(cells(plan, data), minlength=plan.length).astype(np.float64)


def release(
    plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int, truth: Any | None = None
) -> dict[str, Any]:
    """One cell per (cohort, month since): count and retention, with 95% intervals."""
    noisy = v.check_total(plan, total, summands=summands).astype(np.float64)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    part = plan.part("count")
    var = v.variance(plan, part, summands=summands)
    half = v.half_width(plan, part, summands=summands)
    months = int(plan.layout["months"])
    true = None if truth is None else np.asarray(truth, dtype=np.float64)
    for c, label in enumerate(plan.layout["cohort_labels"]):
        size = float(noisy[c * months])
        for m in range(months):
            i = c * months + m
            count, suppressed = v.count_estimate(float(noisy[i]), half, min_cohort_size=min_cohort_size)
            rate = None
            if not suppressed and size >= min_cohort_size:
                rate = ratio(float(noisy[i]), size, var_a=var, var_b=var, lower=0.0, upper=1.0)
                if m == 0:
                    rate = {"value": 1.0, "ci95": [1.0, 1.0]}
            cell: dict[str, Any] = {"cohort": label, "months_since": m, "count": count}
            cell |= {"retention": rate, "suppressed": suppressed}
            if true is not None:
                cell["true"] = {"count": float(true[i])}
            doc["cells"].append(cell)
    return doc
