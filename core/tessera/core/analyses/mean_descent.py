"""``mean_descent``: DP gradient descent towards the mean of a clipped numeric field, per group.

The smallest real program of many rounds, and the one the job machinery is tested and
benchmarked with: it minimises ``Σ_i (x_i - θ_g)²/2`` over the consortium's customers by gradient
steps, one ``θ_g`` per public group (``group_by``/``groups``, or one group). Round ``k`` releases,
under distributed discrete-Gaussian noise, each group's number of customers with a value and the
sum of their gradients ``θ_g - clip(x_i)`` at the public ``θ`` the previous round produced; the
driver then steps ``θ_g <- θ_g - learning_rate · G_g/C_g`` (post-processing; a suppressed group
keeps its ``θ_g``) and stops after ``rounds`` rounds or as soon as no group moves by more than
``tolerance · (upper - lower)``; the unspent budget is then freed.

Unit of privacy: one customer — all of its rows made one value by ``per_customer`` (default
``sum``) in each of at most ``max_groups_per_customer`` groups (default 1) — adds at most 1 to a
group's count and one gradient of magnitude at most ``upper - lower`` (``θ`` stays inside
``[lower, upper]``) to each group it touches: with ``k`` groups, L1 = k and L2 = √k per unit.
Budget: ``ρ_total / rounds`` per round, half to each part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import contribution as c
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import sums
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.program import MAX_ROUNDS, Public, Step, rho_total
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="mean_descent",
    description="DP gradient descent to the mean of a clipped numeric field per group (many rounds)",
    differentially_private=True,
    resumable=True,
    stages=v.DP_STAGES,
    min_nodes=3,
)

# Parameters, for `tessera analyses` (documentation only: ``plan`` decides what is accepted).
PARAMS = (
    *_docs.BOUNDS,
    _docs.ParamDoc(
        "rounds", "integer", "10", "rounds", "at most this many DP rounds (the budget covers them all)"
    ),
    _docs.ParamDoc("learning_rate", "number", "0.5", "-", "step size, in (0, 1]"),
    _docs.ParamDoc(
        "tolerance", "number", "0", "fraction of upper - lower", "stop once a step moves less than this"
    ),
    _docs.PER_CUSTOMER,
)
VALUE_BITS = sums.VALUE_BITS
_PARAMS = frozenset(
    {
        "field",
        "lower",
        "upper",
        "rounds",
        "learning_rate",
        "tolerance",
        "per_customer",
        "max_groups_per_customer",
    }
)


def max_rounds(spec: JobSpec) -> int:
    return p.int_param(spec, "rounds", default=10, low=1, high=MAX_ROUNDS)


def _learning_rate(spec: JobSpec) -> float:
    rate = p.number_param(spec, "learning_rate", default=0.5)
    if not 0 < rate <= 1:
        raise InvalidRequest("parameter 'learning_rate' must be in (0, 1]")
    return rate


def _tolerance(spec: JobSpec) -> float:
    tol = p.number_param(spec, "tolerance", default=0.0)
    if not 0 <= tol < 1:
        raise InvalidRequest("parameter 'tolerance' must be in [0, 1)")
    return tol


def _group_count(spec: JobSpec) -> int:
    groups = spec.params.get("groups")
    return len(groups) + 1 if isinstance(groups, tuple) else 1  # the listed groups and "other"


def start(spec: JobSpec) -> Public:
    lower, upper = p.bounds(spec)
    return {"theta": [(lower + upper) / 2] * _group_count(spec)}


def _theta(public: Public, lower: float, upper: float, groups: int) -> list[float]:
    theta = public.get("theta")
    if (
        not isinstance(theta, list)
        or len(theta) != groups
        or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and lower <= x <= upper for x in theta
        )
    ):
        raise InvalidRequest("the round's public input needs one 'theta' per group, inside [lower, upper]")
    return [float(x) for x in theta]


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """Round ``round_no``'s plan: counts and gradient sums per group, ρ_total/rounds (no data)."""
    p.check_params(spec, _PARAMS)
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rounds = max_rounds(spec)
    if not 1 <= round_no <= rounds:
        raise InvalidRequest(f"round {round_no} is outside this job's {rounds} round(s)")
    _learning_rate(spec)
    _tolerance(spec)
    field = p.value_field(spec, fields, numeric=True)
    groups = p.grouping(spec, fields)
    size = len(groups.labels)
    bound = p.contribution(spec, fields, groups=size, values=True, rows_allowed=False)
    lower, upper = p.bounds(spec)
    theta = _theta(start(spec) if public is None else public, lower, upper, size)
    rho = rho_total(spec) / rounds
    width = upper - lower  # |θ - clip(x)| <= width because θ stays inside [lower, upper]
    scale = fixed_point_scale(clip_bound=width, value_bits=VALUE_BITS)
    count, grad = sums.moment_parts(
        size=size, groups_cap=bound.groups_cap, scale=scale, rho=rho, survivors_t=survivors_t, value="grad"
    )
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(bound.customer_key, field.name, groups.field),
        length=2 * size,
        parts=(count, grad),
        layout={
            "field": field.name,
            "group_by": groups.field,
            "groups": groups.labels,
            "lower": lower,
            "upper": upper,
            "theta": tuple(theta),
            "round": round_no,
            "contribution": bound.as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _gradients(plan: v.VectorPlan, data: Mapping[str, Any]) -> tuple[v.IntArray, v.FloatArray]:
    """Group and gradient of every kept (customer, group) with a value (its rows as one value)."""
    layout = plan.layout
    values = c.numeric(data, layout["field"])
    idx, value = c.per_customer_values(plan, data, values=values, eligible=~np.isnan(values))
    width = layout["upper"] - layout["lower"]
    theta = np.asarray(layout["theta"], dtype=np.float64)
    grads: v.FloatArray = np.clip(
        theta[idx] - np.clip(value, layout["lower"], layout["upper"]), -width, width
    )
    return idx, grads


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    idx, grads = _gradients(plan, data)
    size = plan.length // 2
    out = np.zeros(plan.length, dtype=np.int64)
    out[:size] = np.bincount(idx, minlength=size)
    np.add.at(out[size:], idx, stochastic_round(grads, scale=plan.part("grad").scale, rng=rng))
    return out


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    idx, grads = _gradients(plan, data)
    size = plan.length // 2
    out = np.zeros(plan.length, dtype=np.float64)
    out[:size] = np.bincount(idx, minlength=size)
    out[size:] = np.bincount(idx, weights=grads, minlength=size)
    return out


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """Each group's noisy count and gradient sum with 95% intervals (suppressed below the floor)."""
    noisy = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    count_half = v.half_width(plan, plan.part("count"), summands=summands)
    grad_part = plan.part("grad")
    grad_half = v.half_width(plan, grad_part, summands=summands)
    size = plan.length // 2
    for g, label in enumerate(plan.layout["groups"]):
        count, suppressed = v.count_estimate(float(noisy[g]), count_half, min_cohort_size=min_cohort_size)
        grad = None if suppressed else v.estimate(float(noisy[size + g]) / grad_part.scale, grad_half)
        doc["cells"].append({"group": label, "count": count, "gradient_sum": grad, "suppressed": suppressed})
    doc["theta"] = list(plan.layout["theta"])
    doc["round"] = plan.layout["round"]
    return doc


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """``θ_g <- θ_g - rate·G_g/C_g`` kept inside the bounds; stops at the last round or small steps."""
    lower, upper = p.bounds(spec)
    cells = released["cells"]
    theta = _theta(public, lower, upper, len(cells))
    rate = _learning_rate(spec)
    new = list(theta)
    for g, cell in enumerate(cells):
        if cell["suppressed"] or cell["count"]["value"] <= 0:
            continue  # too few customers in the group to step on: keep its θ
        mean_gradient = cell["gradient_sum"]["value"] / cell["count"]["value"]
        new[g] = min(max(theta[g] - rate * mean_gradient, lower), upper)
    if not all(math.isfinite(x) for x in new):
        raise InvalidRequest("the gradient step left the finite numbers")
    moved = max(abs(a - b) for a, b in zip(new, theta, strict=True))
    metric = {"step": moved, "theta_mean": sum(new) / len(new)}
    converged = moved < _tolerance(spec) * (upper - lower)
    if round_no >= max_rounds(spec) or converged:
        labels = [cell["group"] for cell in cells]
        result: dict[str, Any] = {
            "analysis": INFO.name,
            "dataset": spec.dataset,
            "field": released["field"],
            "group_by": released.get("group_by"),
            "estimates": dict(zip(labels, new, strict=True)),
            "rounds_run": round_no,
            "converged": converged,
        }
        if len(new) == 1:
            result["estimate"] = new[0]
        return Step(next_public=None, result=result, metric=metric)
    return Step(next_public={"theta": new}, result=None, metric=metric)
