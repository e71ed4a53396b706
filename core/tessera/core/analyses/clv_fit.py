"""``clv_fit``: BG/NBD and Gamma-Gamma fitted jointly by DP Newton rounds over private sums.

Model (``clv_math``): BG/NBD (Fader, Hardie & Lee 2005) on each cohort customer's ``(x, t_x, T)``
in weeks and Gamma-Gamma (Fader, Hardie & Lee 2005; Fader & Hardie 2013) on each repeat
customer's ``(x, mean repeat spend)``, from the ``transactions`` rows up to ``calibration_end``
(``clv_summary``: same-day purchases merged, repeat purchases only). Both log-likelihoods are
sums over customers, so their gradients and Hessians in log-parameters are private vector sums.

Rounds. Rounds ``1..rounds`` are FIT rounds: every node sends, for BG/NBD and Gamma-Gamma at
the public parameters ``θ_k``, each customer's gradient and Hessian WHITENED by a public matrix
``M_k`` (``z = M g``, ``Z = M H Mᵀ``) and clipped in L2 (Frobenius for ``Z``); round 1 also sends
the cohort's and the repeat customers' counts. The coordinator un-whitens the noisy sums and
takes one damped Newton step (eigenvalues of ``-H`` floored, at most ``MAX_STEP`` per
log-parameter, parameters kept in ``[1e-4, 1e6]``) and sets ``M_{k+1} = (-H/n)^{-1/2}``: in those
coordinates each customer's gradient has covariance ≈ I (the information identity), so one
clip bound fits every parameterisation and the DP noise on the final step is ≈ ``σ_z²/n`` times
the statistical covariance instead of swamping the weakly identified directions. Round 1 uses
``M = I``. With ``holdout_end`` a last CHECK round releases, by holdout purchases 0..k-1, k+, the
actual number of customers and the number the fitted BG/NBD expects (each customer's
conditional pmf, ``clv_predict.purchases_pmf``): FHL 2005's holdout check.

Unit of privacy: one customer with ALL of its rows. Its rows become one summary, so it adds to
each fit part one clipped vector: L2 ≤ C·s + √d (integer units, ``s`` the fixed-point scale, the
√d from stochastic rounding), L1 ≤ √d·C·s + d, L∞ ≤ ⌈C·s⌉; to the counts part at most 1 in each
of 2 cells; to the check round one one-hot row (L1 = L2 = 1) and one pmf row (entries ≥ 0 summing
to 1: L2 ≤ L1 ≤ s + d after rounding). Privacy holds whatever ``θ_k`` and ``M_k`` the coordinator
sends (clipping comes after whitening); nodes still refuse values outside the public box.

Budget (``budget``): ``CHECK_SHARE`` of ρ to the check round (when there is one), the rest over
the fit rounds in proportion to ``_round_weights`` (later rounds, which set the answer, get
more), each fit round ``BGNBD_SHARE`` to BG/NBD and the rest to Gamma-Gamma, each model
``HESSIAN_SHARE`` to its Hessian and the rest to its gradient; round 1 first gives
``COUNT_SHARE`` of its ρ to the counts. The shares add up to ρ_total exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import clv_math as cm
from tessera.core.analyses import clv_predict as cp
from tessera.core.analyses import contribution as c
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.clv_newton import (
    LOG_HIGH,
    LOG_LOW,
    MAX_STEP,
    covariance,
    estimates,
    newton_step,
    settled,
)
from tessera.core.analyses.clv_summary import DAYS_PER_WEEK, Summary, day_number, summarise
from tessera.core.analyses.program import Public, Step, rho_total
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="clv_fit",
    description="BG/NBD and Gamma-Gamma fitted by DP Newton rounds; nodes predict CLV at home",
    differentially_private=True,
    resumable=True,
    stages=v.DP_STAGES,
    min_nodes=3,
)
VALUE_BITS = 24
MAX_FIT_ROUNDS = 40
START_BGNBD = (1.0, 10.0, 1.0, 1.0)  # r, α (weeks), a, b: data-free
START_GG = (1.0, 2.0, 10.0)  # p, q, γ (currency units)
CHECK_SHARE = 0.1
LAST_WEIGHT = 8.0
BGNBD_SHARE = 0.5
HESSIAN_SHARE = 0.2
COUNT_SHARE = 0.05
DEFAULTS: dict[str, Any] = {
    "rounds": 8,
    "time_field": "time",
    "amount_field": "amount",
    "grad_clip": 10.0,
    "hessian_clip": 40.0,
    "holdout_bins": 7,
}
_PARAMS = frozenset({"calibration_end", "holdout_end", *DEFAULTS})
_MODELS = (("bgnbd", cm.BGNBD_PARAMS), ("gg", cm.GG_PARAMS))


def _fit_rounds(spec: JobSpec) -> int:
    return p.int_param(spec, "rounds", default=DEFAULTS["rounds"], low=2, high=MAX_FIT_ROUNDS)


def _dates(spec: JobSpec) -> tuple[int, int | None]:
    if "calibration_end" not in spec.params:
        raise InvalidRequest("parameter 'calibration_end' is required (YYYY-MM-DD): the fit's last day")
    cal = day_number(spec.params["calibration_end"], "calibration_end")  # type: ignore[arg-type]
    hold = spec.params.get("holdout_end")
    if hold is None:
        return cal, None
    end = day_number(hold, "holdout_end")  # type: ignore[arg-type]
    if end <= cal:
        raise InvalidRequest("parameter 'holdout_end' must be after 'calibration_end'")
    if (end - cal) / DAYS_PER_WEEK > cp.MAX_HORIZON_WEEKS:
        raise InvalidRequest(f"the holdout period may last at most {cp.MAX_HORIZON_WEEKS:g} weeks")
    return cal, end


def max_rounds(spec: JobSpec) -> int:
    return _fit_rounds(spec) + (0 if _dates(spec)[1] is None else 1)


def _clip(spec: JobSpec, name: str) -> float:
    value = p.number_param(spec, name, default=DEFAULTS[name])
    if not 0.1 <= value <= 1e4:
        raise InvalidRequest(f"parameter {name!r} must be between 0.1 and 10000")
    return value


def _round_weights(rounds: int) -> list[float]:
    """Fit round k's weight: 1 for the early rounds, rising to ``LAST_WEIGHT`` for the last one."""
    return [1.0 + (LAST_WEIGHT - 1.0) * (k / (rounds - 1)) ** 2 for k in range(rounds)]


def budget(spec: JobSpec) -> list[dict[str, Any]]:
    """Every round's ρ and its parts' shares, from the spec alone (they add up to ρ_total)."""
    total = rho_total(spec)
    rounds = _fit_rounds(spec)
    check = _dates(spec)[1] is not None
    fit = total * (1.0 - CHECK_SHARE) if check else total
    weights = _round_weights(rounds)
    out: list[dict[str, Any]] = []
    for k, w in enumerate(weights, start=1):
        rho = fit * w / sum(weights)
        parts: dict[str, float] = {}
        rest = rho
        if k == 1:
            parts["counts"] = rho * COUNT_SHARE
            rest = rho - parts["counts"]
        for model, share in (("bgnbd", BGNBD_SHARE), ("gg", 1.0 - BGNBD_SHARE)):
            parts[f"{model}_grad"] = rest * share * (1.0 - HESSIAN_SHARE)
            parts[f"{model}_hess"] = rest * share * HESSIAN_SHARE
        out.append({"round": k, "phase": "fit", "rho": rho, "parts": parts})
    if check:
        rho = total - fit
        out.append(
            {
                "round": rounds + 1,
                "phase": "check",
                "rho": rho,
                "parts": {"actual": rho / 2, "expected": rho / 2},
            }
        )
    return out


def start(spec: JobSpec) -> Public:
    return {
        "phase": "fit",
        "bgnbd": [math.log(x) for x in START_BGNBD],
        "gg": [math.log(x) for x in START_GG],
        "bgnbd_metric": np.eye(4).tolist(),
        "gg_metric": np.eye(3).tolist(),
    }


# --- reading public inputs (the coordinator may lie: check every value) --------------------------


def _theta(public: Public, name: str, size: int) -> tuple[float, ...]:
    value = public.get(name)
    if not isinstance(value, (list, tuple)) or len(value) != size:
        raise InvalidRequest(f"the round's public input needs {size} log-parameters in {name!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not LOG_LOW <= item <= LOG_HIGH:
            raise InvalidRequest(f"the public parameters {name!r} must lie in [1e-4, 1e6] (log scale)")
        out.append(float(item))
    return tuple(out)


def _matrix(public: Public, name: str, size: int) -> np.ndarray:
    value = public.get(name)
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest(f"the public matrix {name!r} must be {size}×{size} numbers") from None
    if m.shape != (size, size) or not np.all(np.isfinite(m)) or np.max(np.abs(m)) > 1e6:
        raise InvalidRequest(f"the public matrix {name!r} must be {size}×{size} finite numbers below 1e6")
    return m


def _fields(spec: JobSpec, fields: Mapping[str, FieldSchema]) -> tuple[str, str, str]:
    key = p.customer_key(fields)
    if key is None:
        raise InvalidRequest(
            "clv_fit reads purchase histories: its dataset needs a customer key (e.g. transactions)"
        )
    names = []
    for param, types in (("time_field", {"date", "int", "float"}), ("amount_field", {"int", "float"})):
        name = spec.params.get(param, DEFAULTS[param])
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"parameter {param!r} must name a field")
        schema = p.field_schema(fields, name)
        if schema.type not in types:
            raise PolicyViolation(
                f"field {name!r} cannot be the {param.removesuffix('_field')} of a purchase: it is "
                f"{schema.type}, not one of {', '.join(sorted(types))}",
                code="policy.field_type",
            )
        names.append(name)
    return key, names[0], names[1]


def _part(name: str, start: int, dim: int, *, clip: float, rho: float, t: int) -> v.VectorPart:
    """A clipped per-customer vector of ``dim`` coordinates (see the module doc for the bounds)."""
    scale = fixed_point_scale(clip_bound=clip, value_bits=VALUE_BITS)
    top = 2 ** (VALUE_BITS - 1) - 1
    l2 = clip * scale + math.sqrt(dim)
    l1 = math.sqrt(dim) * clip * scale + dim
    return v.make_part(
        name, start=start, stop=start + dim, scale=scale, linf_bound=top, l1=l1, l2=l2, rho=rho, survivors_t=t
    )


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """Round ``round_no``'s plan from public things only; ``plan.rho`` is ``budget(spec)``'s share."""
    p.check_params(spec, _PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("clv_fit does not group its results")
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    cal, hold = _dates(spec)
    rounds = budget(spec)
    if not 1 <= round_no <= len(rounds):
        raise InvalidRequest(f"round {round_no} is outside this job's {len(rounds)} round(s)")
    public = start(spec) if public is None else public
    key, time_field, amount_field = _fields(spec, fields)
    shares = rounds[round_no - 1]
    t = survivors_t
    layout: dict[str, Any] = {
        "round": round_no,
        "phase": shares["phase"],
        "calibration_end": cal,
        "holdout_end": hold,
        "time_field": time_field,
        "amount_field": amount_field,
        "field": None,
        "group_by": None,
        "groups": (p.ALL,),
        "contribution": {
            **p.Contribution(key, None, None, 1).as_layout(),
            "bound": "one customer: its whole history -> one clipped gradient and Hessian per model",
        },
        "bgnbd": _theta(public, "bgnbd", 4),
    }
    parts: list[v.VectorPart] = []
    if shares["phase"] == "fit":
        if public.get("phase") != "fit":
            raise InvalidRequest(f"round {round_no} is a fit round")
        layout["gg"] = _theta(public, "gg", 3)
        layout["bgnbd_metric"] = tuple(map(tuple, _matrix(public, "bgnbd_metric", 4).tolist()))
        layout["gg_metric"] = tuple(map(tuple, _matrix(public, "gg_metric", 3).tolist()))
        layout["grad_clip"] = gc = _clip(spec, "grad_clip")
        layout["hessian_clip"] = hc = _clip(spec, "hessian_clip")
        cursor = 0
        rho = shares["parts"]
        if "counts" in rho:
            parts.append(
                v.make_part(
                    "counts",
                    start=0,
                    stop=2,
                    scale=1.0,
                    linf_bound=1,
                    l1=2,
                    l2=math.sqrt(2),
                    rho=rho["counts"],
                    survivors_t=t,
                )
            )
            cursor = 2
        for model, names in _MODELS:
            d = len(names)
            parts.append(_part(f"{model}_grad", cursor, d, clip=gc, rho=rho[f"{model}_grad"], t=t))
            cursor += d
            parts.append(
                _part(f"{model}_hess", cursor, d * (d + 1) // 2, clip=hc, rho=rho[f"{model}_hess"], t=t)
            )
            cursor += d * (d + 1) // 2
    else:
        if hold is None or public.get("phase") != "check":
            raise InvalidRequest(f"round {round_no} is the holdout check round")
        bins = p.int_param(spec, "holdout_bins", default=DEFAULTS["holdout_bins"], low=1, high=100)
        layout["holdout_bins"] = bins
        size = bins + 1
        rho = shares["parts"]
        parts.append(
            v.make_part(
                "actual",
                start=0,
                stop=size,
                scale=1.0,
                linf_bound=1,
                l1=1,
                l2=1,
                rho=rho["actual"],
                survivors_t=t,
            )
        )
        scale = fixed_point_scale(clip_bound=1.0, value_bits=VALUE_BITS)
        parts.append(
            v.make_part(
                "expected",
                start=size,
                stop=2 * size,
                scale=scale,
                linf_bound=2 ** (VALUE_BITS - 1) - 1,
                l1=scale + size,
                l2=scale + math.sqrt(size),
                rho=rho["expected"],
                survivors_t=t,
            )
        )
        cursor = 2 * size
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(key, time_field, amount_field),
        length=cursor,
        parts=tuple(parts),
        layout=layout,
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=shares["rho"],
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


# --- the node's half ----------------------------------------------------------------------------


def summary_of(plan: v.VectorPlan, data: Mapping[str, Any]) -> Summary:
    """The node's per-customer summaries for this plan (holdout rows read in the check round only)."""
    layout = plan.layout
    ids = c.customer_ids(plan, data)
    if ids is None:
        raise InvalidRequest("clv_fit needs a customer key")
    hold = layout["holdout_end"] if layout["phase"] == "check" else None
    return summarise(
        ids,
        c.numeric(data, layout["time_field"]),
        c.numeric(data, layout["amount_field"]),
        calibration_end=layout["calibration_end"],
        holdout_end=hold,
    )


def _clip_rows(rows: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled into the L2 ball of radius ``bound``; rows with a non-finite entry become 0."""
    rows = np.where(np.all(np.isfinite(rows), axis=1)[:, None], rows, 0.0)
    norms = np.linalg.norm(rows, axis=1)
    factor = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    # The float product may exceed the bound by an ulp; a final relative shave keeps it inside.
    return np.asarray(rows * (factor * (1.0 - 1e-12))[:, None])


def spend_customers(summary: Summary) -> np.ndarray:
    """Who enters Gamma-Gamma: repeat customers with a positive mean repeat spend."""
    with np.errstate(invalid="ignore"):
        return np.asarray((summary.x > 0) & np.isfinite(summary.mean_spend) & (summary.mean_spend > 0))


def customer_rows(plan: v.VectorPlan, data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per customer and part: the clipped (whitened) row each cohort customer adds (value units)."""
    layout = plan.layout
    s = summary_of(plan, data)
    out: dict[str, np.ndarray] = {}
    if layout["phase"] == "check":
        bins = layout["holdout_bins"]
        weeks = (layout["holdout_end"] - layout["calibration_end"]) / DAYS_PER_WEEK
        actual = np.zeros((s.size, bins + 1))
        actual[np.arange(s.size), np.minimum(s.holdout, bins).astype(np.int64)] = 1.0
        expected = cp.purchases_pmf(np.exp(layout["bgnbd"]).tolist(), weeks, s.x, s.t_x, s.big_t, k_max=bins)
        expected = np.where(np.all(np.isfinite(expected), axis=1)[:, None], expected, 0.0)
        out["actual"] = actual
        out["expected"] = np.clip(expected, 0.0, 1.0) / np.maximum(1.0, expected.sum(axis=1))[:, None]
        return out
    spend = spend_customers(s)
    if plan.parts[0].name == "counts":
        out["counts"] = np.stack([np.ones(s.size), spend.astype(np.float64)], axis=1)
    with np.errstate(all="ignore"):
        _, g, h = cm.bgnbd_terms(layout["bgnbd"], s.x, s.t_x, s.big_t)
        _, gg_g, gg_h = cm.gg_terms(layout["gg"], s.x[spend], s.mean_spend[spend])
    for model, grad, hess in (("bgnbd", g, h), ("gg", gg_g, gg_h)):
        assert grad is not None and hess is not None
        m = np.array(layout[f"{model}_metric"])
        with np.errstate(all="ignore"):
            z = grad @ m.T
            zz = cm.pack(m @ hess @ m.T)
        out[f"{model}_grad"] = _clip_rows(z, layout["grad_clip"])
        out[f"{model}_hess"] = _clip_rows(zz, layout["hessian_clip"])
    return out


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """The node's integer vector: every customer's rows quantised (stochastic rounding), summed."""
    rows = customer_rows(plan, data)
    out = np.zeros(plan.length, dtype=np.int64)
    for part in plan.parts:
        block = rows[part.name]
        if block.size:
            if part.scale == 1.0:
                out[part.start : part.stop] = block.sum(axis=0).astype(np.int64)
            else:
                out[part.start : part.stop] = stochastic_round(block, scale=part.scale, rng=rng).sum(axis=0)
    return out


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The same sums in value units, unrounded (tests and benchmarks)."""
    rows = customer_rows(plan, data)
    out = np.zeros(plan.length)
    for part in plan.parts:
        block = rows[part.name]
        if block.size:
            out[part.start : part.stop] = block.sum(axis=0)
    return out


# --- the coordinator's half ---------------------------------------------------------------------


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """Each part's noisy sum in value units with its noise sd; counts and holdout cells suppressed
    below ``min_cohort_size`` (post-processing)."""
    noisy = v.check_total(plan, total, summands=summands)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    doc["round"] = plan.layout["round"]
    doc["phase"] = plan.layout["phase"]
    sums: dict[str, Any] = {}
    for part in plan.parts:
        values = noisy[part.start : part.stop].astype(np.float64) / part.scale
        sums[part.name] = {
            "sum": values.tolist(),
            "sd": math.sqrt(v.variance(plan, part, summands=summands)),
            "half_width": v.half_width(plan, part, summands=summands),
        }
    doc["sums"] = sums
    if "counts" in sums:
        cohort, repeat = sums["counts"]["sum"]
        doc["suppressed"] = cohort < min_cohort_size or repeat < min_cohort_size
    if plan.layout["phase"] == "check":
        for i, count in enumerate(sums["actual"]["sum"]):
            suppressed = count < min_cohort_size
            doc["cells"].append({"purchases": i, "suppressed": suppressed})
    return doc


def _model(spec: JobSpec, public: Public, rounds_run: int) -> dict[str, Any]:
    last = (public.get("steps") or [[MAX_STEP, MAX_STEP]])[-1]
    converged = {
        "bgnbd": settled(last[0], public["bgnbd_cov"]),
        "gamma_gamma": settled(last[1], public["gg_cov"]),
    }
    unsettled = [name for name, ok in converged.items() if not ok]
    return {
        "converged": converged,
        "warning": (
            f"{' and '.join(unsettled)}: the last Newton step was larger than its noise explains, so "
            "the fit has not settled and its intervals are too narrow (more customers, a larger ε "
            "or more rounds help)"
            if unsettled
            else None
        ),
        "analysis": INFO.name,
        "dataset": spec.dataset,
        "time_unit": "week",
        "calibration_end": spec.params["calibration_end"],
        "holdout_end": spec.params.get("holdout_end"),
        "bgnbd": estimates(cm.BGNBD_PARAMS, public["bgnbd"], public["bgnbd_cov"]),
        "gamma_gamma": estimates(cm.GG_PARAMS, public["gg"], public["gg_cov"]),
        "intervals": (
            "95%, on the log scale (delta method): the inverse observed information from the last "
            "round's noisy Hessian plus the last Newton step's DP noise; clipping bias not included"
        ),
        "customers": public["n"],
        "repeat_customers": public["n_repeat"],
        "epsilon": spec.epsilon,
        "delta": spec.delta,
        "rho_total": rho_total(spec),
        "mechanism": v.MECHANISM,
        "rounds_run": rounds_run,
        "rounds_planned": max_rounds(spec),
        "budget_split": budget(spec),  # "budget" is the job trailer's (ρ used and reserved)
        "steps": public["steps"],
        "clip": {"grad_clip": _clip(spec, "grad_clip"), "hessian_clip": _clip(spec, "hessian_clip")},
        "holdout": None,
    }


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """Fit rounds: one Newton step per model; the last fit round makes the model; the check round
    adds the holdout table. Everything here reads released (DP) values and the spec only."""
    sums = released["sums"]
    if released["phase"] == "check":
        table = []
        for i, cell in enumerate(released["cells"]):
            actual, expected = sums["actual"], sums["expected"]
            row: dict[str, Any] = {
                "purchases": i,
                "label": f"{i}+" if i == len(released["cells"]) - 1 else str(i),
            }
            row["suppressed"] = cell["suppressed"]
            row["actual"] = None if cell["suppressed"] else v.estimate(actual["sum"][i], actual["half_width"])
            row["expected"] = (
                None if cell["suppressed"] else v.estimate(expected["sum"][i], expected["half_width"])
            )
            table.append(row)
        result = _model(spec, public, round_no)
        result["holdout"] = {
            "weeks": (_dates(spec)[1] - _dates(spec)[0]) / DAYS_PER_WEEK,  # type: ignore[operator]
            "table": table,
            "what": "customers by purchases in the holdout period: actual vs expected by the fitted BG/NBD",
        }
        return Step(next_public=None, result=result, metric={"check": 1.0})
    if round_no == 1:
        if released.get("suppressed"):
            raise InvalidRequest(
                "too few customers (or repeat customers) to fit the model: the counts are suppressed"
            )
        n, n_repeat = sums["counts"]["sum"]
    else:
        n, n_repeat = float(public["n"]), float(public["n_repeat"])
    nxt: dict[str, Any] = {"phase": "fit", "n": float(n), "n_repeat": float(n_repeat)}
    metric: dict[str, float] = {}
    for model, names in _MODELS:
        theta = _theta(public, model, len(names))
        m = _matrix(public, f"{model}_metric", len(names))
        count = n if model == "bgnbd" else n_repeat
        new, next_m, info, moved = newton_step(
            theta, m, sums[f"{model}_grad"]["sum"], sums[f"{model}_hess"]["sum"], count
        )
        nxt[model] = new.tolist()
        nxt[f"{model}_metric"] = next_m.tolist()
        nxt[f"{model}_cov"] = covariance(info, m, sums[f"{model}_grad"]["sd"]).tolist()
        metric[f"{model}_step"] = moved
        for name, value in zip(names, new, strict=True):
            metric[f"{model}_{name}"] = math.exp(value)
    nxt["steps"] = [*public.get("steps", []), [metric["bgnbd_step"], metric["gg_step"]]]
    if round_no < _fit_rounds(spec):
        return Step(
            next_public={k: nxt[k] for k in nxt if not k.endswith("_cov")}, result=None, metric=metric
        )
    if _dates(spec)[1] is not None:
        nxt["phase"] = "check"
        return Step(next_public=nxt, result=None, metric=metric)
    return Step(next_public=None, result=_model(spec, nxt, round_no), metric=metric)
