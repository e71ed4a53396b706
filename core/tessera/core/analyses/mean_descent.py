"""``mean_descent``: DP gradient descent towards the mean of a clipped numeric field.

The smallest real program of many rounds, and the one the job machinery is tested with: it
minimises ``Σ_i (x_i - θ)²/2`` over the consortium's customers by gradient steps. Round ``k``
releases, under distributed discrete-Gaussian noise, the number of customers with a value and the
sum of their gradients ``θ_k - clip(x_i)`` at the public ``θ_k`` the previous round produced; the
driver then steps ``θ_{k+1} = θ_k - learning_rate · G/C`` (post-processing) and stops after
``rounds`` rounds or as soon as a step moves ``θ`` by less than ``tolerance · (upper - lower)``;
the unspent budget is then freed.

Unit of privacy: one customer — all of its rows made one value by ``per_customer`` (default
``sum``) — contributes 1 to the count and one gradient of magnitude at most ``upper - lower``
(``θ`` is kept inside ``[lower, upper]``) per round: L1 = L2 = L∞ per part.
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
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.program import MAX_ROUNDS, Public, Step, rho_total
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="mean_descent",
    description="DP gradient descent to the mean of a clipped numeric field (a program of many rounds)",
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
VALUE_BITS = 24
_PARAMS = frozenset({"field", "lower", "upper", "rounds", "learning_rate", "tolerance", "per_customer"})


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


def start(spec: JobSpec) -> Public:
    lower, upper = p.bounds(spec)
    return {"theta": (lower + upper) / 2}


def _theta(public: Public, lower: float, upper: float) -> float:
    theta = public.get("theta")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not lower <= theta <= upper:
        raise InvalidRequest("the round's public input needs 'theta' inside [lower, upper]")
    return float(theta)


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """Round ``round_no``'s plan: count and gradient sum, ρ_total/rounds split evenly (no data)."""
    p.check_params(spec, _PARAMS - p.GROUP_PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("mean_descent does not group its results")
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    rounds = max_rounds(spec)
    if not 1 <= round_no <= rounds:
        raise InvalidRequest(f"round {round_no} is outside this job's {rounds} round(s)")
    _learning_rate(spec)
    _tolerance(spec)
    field = p.value_field(spec, fields, numeric=True)
    bound = p.contribution(spec, fields, groups=1, values=True, rows_allowed=False)
    lower, upper = p.bounds(spec)
    theta = _theta(start(spec) if public is None else public, lower, upper)
    rho = rho_total(spec) / rounds
    width = upper - lower  # |θ - clip(x)| <= width because θ stays inside [lower, upper]
    scale = fixed_point_scale(clip_bound=width, value_bits=VALUE_BITS)
    top = 2 ** (VALUE_BITS - 1) - 1
    t = survivors_t
    count = v.make_part("count", start=0, stop=1, scale=1.0, linf_bound=1, rho=rho / 2, survivors_t=t)
    grad = v.make_part("grad", start=1, stop=2, scale=scale, linf_bound=top, rho=rho / 2, survivors_t=t)
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(bound.customer_key, field.name),
        length=2,
        parts=(count, grad),
        layout={
            "field": field.name,
            "group_by": None,
            "groups": (p.ALL,),
            "lower": lower,
            "upper": upper,
            "theta": theta,
            "round": round_no,
            "contribution": bound.as_layout(),
        },
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _gradients(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """One gradient per customer with a value: its rows become one value (``per_customer``)."""
    layout = plan.layout
    values = c.numeric(data, layout["field"])
    _, value = c.per_customer_values(plan, data, values=values, eligible=~np.isnan(values))
    width = layout["upper"] - layout["lower"]
    grads: v.FloatArray = np.clip(
        layout["theta"] - np.clip(value, layout["lower"], layout["upper"]), -width, width
    )
    return grads


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    grads = _gradients(plan, data)
    quantised = stochastic_round(grads, scale=plan.part("grad").scale, rng=rng)
    return np.array([grads.size, int(quantised.sum())], dtype=np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    grads = _gradients(plan, data)
    return np.array([float(grads.size), float(grads.sum())])


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """The round's noisy count and gradient sum with 95% intervals (suppressed below the floor)."""
    noisy = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    count_part, grad_part = plan.part("count"), plan.part("grad")
    count, suppressed = v.count_estimate(
        float(noisy[0]), v.half_width(plan, count_part, summands=summands), min_cohort_size=min_cohort_size
    )
    grad = None
    if not suppressed:
        grad = v.estimate(float(noisy[1]) / grad_part.scale, v.half_width(plan, grad_part, summands=summands))
    doc["theta"] = plan.layout["theta"]
    doc["round"] = plan.layout["round"]
    doc["cells"].append({"group": p.ALL, "count": count, "gradient_sum": grad, "suppressed": suppressed})
    return doc


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """``θ <- θ - rate·G/C`` kept inside the bounds; stops at the last round or a small step."""
    lower, upper = p.bounds(spec)
    theta = _theta(public, lower, upper)
    cell = released["cells"][0]
    if cell["suppressed"] or cell["count"]["value"] <= 0:
        raise InvalidRequest("too few customers to take a gradient step (the round was suppressed)")
    mean_gradient = cell["gradient_sum"]["value"] / cell["count"]["value"]
    new = min(max(theta - _learning_rate(spec) * mean_gradient, lower), upper)
    moved = abs(new - theta)
    metric = {"theta": new, "step": moved}
    if round_no >= max_rounds(spec) or moved < _tolerance(spec) * (upper - lower):
        result = {
            "analysis": INFO.name,
            "dataset": spec.dataset,
            "field": released["field"],
            "estimate": new,
            "rounds_run": round_no,
            "converged": moved < _tolerance(spec) * (upper - lower),
        }
        return Step(next_public=None, result=result, metric=metric)
    if not math.isfinite(new):
        raise InvalidRequest("the gradient step left the finite numbers")
    return Step(next_public={"theta": new}, result=None, metric=metric)
