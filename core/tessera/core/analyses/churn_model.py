"""``churn_model``: DP federated logistic regression of a churn label, evaluated on held-out
customers; each node scores its own customers at home with the released model card.

Features (``features``): numeric, boolean and categorical fields of the job's dataset when it
holds one row per customer, fields of ``customers`` joined as ``customers.<field>``, and the
derived ``rfm.recency``, ``rfm.frequency``, ``rfm.monetary`` as of ``reference_date``; the label
(``label``, 0/1) likewise. Core-sensitive fields and the customer key are refused. Every
customer is held out for evaluation or used for training by a keyed hash of its id
(``churn_features``).

Rounds (ρ the job's total, reserved whole before any data is read; zCDP shares add up to it):

1. preprocessing, ``prep_share``·ρ (default 0.1): over the training customers, a counts part —
   customers, churners, and per categorical feature its customers per listed category (+ other)
   (L∞ 1, L1 2 + c, L2 √(2 + c), c categorical features; 0.3 of the round) — and a moments part:
   each numeric feature transformed and rescaled to ``u`` in [-1, 1], sums of ``u`` and
   ``u² - ½`` (fixed point; L∞ top, L1 2d·top, L2 √(2d)·top; 0.7). The driver derives each
   feature's mean and sd, folds categories whose noisy count is below ``min_category_count`` (or
   its noise half-width, or the cohort floor) into ``other``, and starts the intercept at the
   logit of the DP churn rate.
2. ``rounds`` training rounds, the rest of ρ but the evaluation's evenly: each training customer's
   gradient of the log-loss ``(σ(w·x) - y)·x`` at the public ``w``, clipped in L2 to the public
   bound ``C``, summed (fixed point; L2 ≤ C·s + √D with the rounding, L1 ≤ √D·C·s + D, L∞ top;
   ``1 - clip_share`` of the round), and the number of customers whose gradient norm is at most
   ``C`` (L = 1; ``clip_share``, default 0.05). The driver divides by the DP count of round 1,
   adds the ridge term and takes one server step through flwr (``churn_server_opt``:
   FedAvg, FedAdam or FedYogi); adaptive clipping (Andrew et al. 2021) moves ``C`` geometrically
   towards the ``clip_quantile`` of the norms: ``C ← C·exp(-clip_rate·(b̃/n - q))``.
3. evaluation, ``eval_share``·ρ (default 0.1): each held-out customer adds 1 to the bin of its
   score in the histogram of its label (L∞ = L1 = L2 = 1); the driver computes the AUC with its
   interval, log-loss and calibration (``churn_eval``).

Result: the model card's body (``churn_card`` adds participants and policy hashes): features,
preprocessing plan, coefficients, evaluation, budget of every round and the ``model`` a node
applies at home (``churn_features.scores``), so a score at home is the score the evaluation binned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import churn_features as cf
from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.churn_eval import evaluate
from tessera.core.analyses.churn_spec import (
    MAX_WEIGHT,
    NO_PURCHASE_AFTER,
    PARAMS,
    SCORE_LOGIT_RANGE,
    VALUE_BITS,
    check_public,
    kind,
    max_rounds,
    settings,
    width,
)
from tessera.core.analyses.program import Public, Step
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

__all__ = ["INFO", "PARAMS", "local_vector", "max_rounds", "plan", "release", "start", "step"]

INFO = AnalysisInfo(
    name="churn_model",
    description="DP federated logistic regression of churn, evaluated on held-out customers; scored at home",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)
_TOP = 2 ** (VALUE_BITS - 1) - 1
_LAYOUT_KEYS = (
    "label",
    "features",
    "numeric",
    "categorical",
    "read",
    "read_categorical",
    "read_label",
    "lower",
    "upper",
    "log",
    "t_lower",
    "t_upper",
    "levels",
    "clip_sd",
    "holdout",
    "split_seed",
    "score_bins",
    "key",
    "join",
    "time",
    "amount",
    "reference_day",
    "label_end_day",
)


def start(spec: JobSpec) -> Public:
    return {}


def _fields(s: Mapping[str, Any]) -> tuple[str, ...]:
    """Every field any round reads (the same in all rounds, so a node reads its data once)."""
    reads = [f for f in s["read"] if f not in ct.RFM]
    if any(f in ct.RFM for f in s["numeric"]) or s["label"] == NO_PURCHASE_AFTER:
        reads = [s["time"], s["amount"], *reads]
    reads += list(s["read_categorical"])
    if s["label"] != NO_PURCHASE_AFTER:
        reads.append(s["read_label"])
    if any(ct.qualified(f)[0] == ct.JOINED for f in reads):
        reads.append(s["join"])
    return p.touched(s["key"], *reads)


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """The plan of round ``round_no`` (preprocessing, training or evaluation), from public things."""
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    s = settings(spec, fields)
    kind_ = kind(s, round_no)
    t = survivors_t
    budget = s["budget"]
    layout: dict[str, Any] = {key: s[key] for key in _LAYOUT_KEYS}
    layout |= {
        "field": None,
        "round": round_no,
        "kind": kind_,
        "contribution": p.Contribution(s["key"], "features", None, 1).as_layout(),
        **check_public(s, kind_, public or {}),
    }
    parts: list[v.VectorPart]
    if kind_ == "prep":
        rho = budget["prep"]
        share = budget["prep_parts"]
        c = len(s["categorical"])
        cells = 2 + sum(len(levels) + 1 for levels in s["levels"])
        parts = [
            v.make_part(
                "counts",
                start=0,
                stop=cells,
                scale=1.0,
                linf_bound=1,
                l1=2 + c,
                l2=math.sqrt(2 + c),
                rho=share["counts"] * rho,
                survivors_t=t,
            )
        ]
        d = len(s["numeric"])
        if d:
            parts.append(
                v.make_part(
                    "moments",
                    start=cells,
                    stop=cells + 2 * d,
                    scale=fixed_point_scale(clip_bound=1.0, value_bits=VALUE_BITS),
                    linf_bound=_TOP,
                    l1=2 * d * _TOP,
                    l2=math.sqrt(2 * d) * _TOP,
                    rho=share["moments"] * rho,
                    survivors_t=t,
                )
            )
    elif kind_ == "train":
        rho = budget["per_train_round"]
        dim = len(layout["w"])
        clip = layout["clip"]
        scale = fixed_point_scale(clip_bound=clip, value_bits=VALUE_BITS)
        parts = [
            v.make_part(
                "grad",
                start=0,
                stop=dim,
                scale=scale,
                linf_bound=_TOP,
                l1=math.sqrt(dim) * clip * scale + dim,
                l2=clip * scale + math.sqrt(dim),
                rho=(1 - budget["clip_share"]) * rho,
                survivors_t=t,
            ),
            v.make_part(
                "below",
                start=dim,
                stop=dim + 1,
                scale=1.0,
                linf_bound=1,
                rho=budget["clip_share"] * rho,
                survivors_t=t,
            ),
        ]
    else:
        rho = budget["eval"]
        cells = 2 * s["score_bins"]
        parts = [v.make_part("hist", start=0, stop=cells, scale=1.0, linf_bound=1, rho=rho, survivors_t=t)]
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=_fields(s),
        length=parts[-1].stop,
        parts=tuple(parts),
        layout=layout,
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def clipped_gradients(layout: Mapping[str, Any], people: cf.Customers) -> tuple[v.FloatArray, int]:
    """Each customer's log-loss gradient clipped in L2 to ``clip``, and how many were within it."""
    x = cf.design(layout, people)
    residual = cf.sigmoid(x @ np.asarray(layout["w"], dtype=np.float64)) - people.label
    grads = residual[:, None] * x
    norms = np.linalg.norm(grads, axis=1)
    bound = float(layout["clip"])
    within = int(np.count_nonzero(norms <= bound))
    # The float product may exceed the bound by an ulp; a relative shave keeps it inside.
    factor = np.minimum(1.0, bound / np.maximum(norms, 1e-300)) * (1.0 - 1e-12)
    return grads * factor[:, None], within


def _vector(plan: v.VectorPlan, data: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
    layout = plan.layout
    people = cf.customers(layout, data, with_label=True)
    hold = cf.held_out(people.ids, seed=layout["split_seed"], share=layout["holdout"])
    out = np.zeros(plan.length, dtype=np.float64 if rng is None else np.int64)

    def rounded(values: v.FloatArray, scale: float) -> np.ndarray:
        """Customer by customer (ids ascending), each coordinate stochastically rounded, summed."""
        if rng is None:
            return np.asarray(values.sum(axis=0) * scale)
        q = stochastic_round(values.ravel(), scale=scale, rng=rng).reshape(values.shape)
        return np.asarray(q.sum(axis=0))

    kind_ = layout["kind"]
    if kind_ == "eval":
        test = _subset(people, hold)
        score = cf.scores(layout, test)
        bins = int(layout["score_bins"])
        cell = cf.score_bin(score, bins, SCORE_LOGIT_RANGE) + bins * test.label.astype(np.int64)
        out[:] = np.bincount(cell, minlength=plan.length)
        return out
    train = _subset(people, ~hold)
    if kind_ == "prep":
        out[0] = train.ids.size
        out[1] = float(train.label.sum())
        cursor = 2
        for values, levels in zip(train.categories, layout["levels"], strict=True):
            idx = cf.category_index(values, tuple(levels))
            out[cursor : cursor + len(levels) + 1] = np.bincount(idx, minlength=len(levels) + 1)
            cursor += len(levels) + 1
        if train.numeric.shape[1]:
            u = cf.unit_moments(layout, train.numeric)
            both = np.hstack([u, np.clip(u * u - 0.5, -0.5, 0.5)])
            part = plan.part("moments")
            out[part.start : part.stop] = rounded(both, part.scale)
        return out
    grads, within = clipped_gradients(layout, train)
    part = plan.part("grad")
    if grads.shape[0]:
        out[part.start : part.stop] = rounded(grads, part.scale)
    out[part.stop] = within
    return out


def _subset(people: cf.Customers, mask: np.ndarray) -> cf.Customers:
    return cf.Customers(
        people.ids[mask],
        people.numeric[mask],
        tuple(c[mask] for c in people.categories),
        people.label[mask],
    )


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """The node's vector of the plan's round (int64, no noise)."""
    return np.asarray(_vector(plan, data, rng), dtype=np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised vector in the integer units of ``local_vector`` without rounding (tests)."""
    return np.asarray(_vector(plan, data, None), dtype=np.float64)


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """The round's noisy totals in value units with their noise sd (category cells under the
    cohort floor shown as None; the histograms' metrics are computed here from every cell)."""
    noisy = v.check_total(plan, total, summands=summands).astype(np.float64)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    layout = plan.layout
    doc |= {"round": layout["round"], "kind": layout["kind"]}

    def sd(name: str) -> float:
        return math.sqrt(v.variance(plan, plan.part(name), summands=summands))

    if layout["kind"] == "prep":
        doc["customers"] = float(noisy[0])
        doc["churners"] = float(noisy[1])
        doc["count_sd"] = sd("counts")
        cursor, counts = 2, []
        for levels in layout["levels"]:
            cells = noisy[cursor : cursor + len(levels) + 1]
            counts.append([float(x) if x >= min_cohort_size else None for x in cells])
            cursor += len(levels) + 1
        doc["category_counts"] = counts
        if layout["numeric"]:
            part = plan.part("moments")
            d = len(layout["numeric"])
            values = noisy[part.start : part.stop] / part.scale
            doc["sums"], doc["squares"] = values[:d].tolist(), values[d:].tolist()
    elif layout["kind"] == "train":
        part = plan.part("grad")
        doc["gradient_sum"] = (noisy[part.start : part.stop] / part.scale).tolist()
        doc["gradient_sd"] = sd("grad")
        doc["within_clip"] = float(noisy[part.stop])
        doc["clip"] = layout["clip"]
    else:
        bins = int(layout["score_bins"])
        metrics = evaluate(
            noisy[:bins].tolist(),
            noisy[bins:].tolist(),
            centres=cf.bin_centres(bins, SCORE_LOGIT_RANGE),
            count_sd=sd("hist"),
            min_cohort_size=min_cohort_size,
        )
        doc["evaluation"] = metrics
    return doc


# --- the driver (coordinator side, post-processing only) ----------------------------------------


def _prep_step(s: Mapping[str, Any], released: Mapping[str, Any]) -> dict[str, Any]:
    n = released["customers"]
    if not n >= max(1.0, released["min_cohort_size"]):
        raise InvalidRequest("too few training customers to fit a model (the DP count is below the floor)")
    mean, sd = [], []
    for j, (lo, hi) in enumerate(zip(s["t_lower"], s["t_upper"], strict=True)):
        half = (hi - lo) / 2
        mu = float(np.clip(released["sums"][j] / n, -1, 1))
        second = float(np.clip(released["squares"][j] / n + 0.5, 0, 1))
        mean.append((lo + hi) / 2 + half * mu)
        sd.append(half * math.sqrt(max(second - mu * mu, 1e-4)))
    floor = max(s["min_category_count"], v.Z95 * released["count_sd"])
    kept = [
        [level for level, count in zip(levels, counts, strict=False) if count is not None and count >= floor]
        for levels, counts in zip(s["levels"], released["category_counts"], strict=True)
    ]
    rate = float(np.clip(released["churners"] / n, 1e-3, 1 - 1e-3))
    w = [math.log(rate / (1 - rate))] + [0.0] * (width(s, tuple(map(tuple, kept))) - 1)
    return {
        "mean": mean,
        "sd": sd,
        "kept": kept,
        "w": w,
        "clip": s["initial_clip"],
        "opt": {},
        "prep": {
            "customers": n,
            "churners": float(released["churners"]),
            "category_counts": released["category_counts"],
        },
    }


def columns(s: Mapping[str, Any], kept: list[list[str]]) -> list[str]:
    """The model's column names, in coefficient order."""
    names = ["intercept", *s["numeric"]]
    for feature, levels in zip(s["categorical"], kept, strict=True):
        names += [f"{feature}={level}" for level in levels]
    return names


def _train_step(
    s: Mapping[str, Any], round_no: int, public: Public, released: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, float]]:
    from tessera.core.analyses.churn_server_opt import server_step  # coordinator only: flwr

    n = max(float(public["prep"]["customers"]), 1.0)
    w = np.asarray(public["w"], dtype=np.float64)
    gradient = np.asarray(released["gradient_sum"], dtype=np.float64) / n
    ridge = s["l2"] * w
    ridge[0] = 0.0  # the intercept is not penalised
    gradient = gradient + ridge
    new, state = server_step(
        s["optimizer"],
        round_no=round_no - 1,
        weights=w,
        mean_gradient=gradient,
        client_lr=s["client_lr"],
        server_lr=s["server_lr"],
        state=public.get("opt") or {},
    )
    new = np.clip(new, -MAX_WEIGHT, MAX_WEIGHT)
    if not np.all(np.isfinite(new)):
        raise InvalidRequest("the server step left the finite numbers")
    within = float(np.clip(released["within_clip"] / n, 0.0, 1.0))
    clip = float(public["clip"]) * math.exp(-s["clip_rate"] * (within - s["clip_quantile"]))
    clip = float(np.clip(clip, 1e-6, 1e6))
    nxt = dict(public) | {"w": new.tolist(), "clip": clip, "opt": state}
    metric = {
        "clip": float(public["clip"]),
        "within_clip": within,
        "grad_norm": float(np.linalg.norm(gradient)),
        "w_step": float(np.linalg.norm(new - w)),
    }
    return nxt, metric


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """Preprocessing -> plan and start; training -> server step; evaluation -> the card's body."""
    s = settings(spec)
    kind_ = kind(s, round_no)
    if kind_ == "prep":
        nxt = _prep_step(s, released)
        return Step(next_public=nxt, result=None, metric={"customers": nxt["prep"]["customers"]})
    if kind_ == "train":
        nxt, metric = _train_step(s, round_no, public, released)
        if round_no == 1 + s["rounds"]:
            nxt = {k: val for k, val in nxt.items() if k not in ("clip", "opt")}
            nxt["final_clip"] = metric["clip"]
        return Step(next_public=nxt, result=None, metric=metric)
    evaluation = released["evaluation"]
    return Step(
        next_public=None,
        result=_result(spec, s, public, evaluation),
        metric={"auc": evaluation["auc"]["value"], "log_loss": evaluation["log_loss"]},
    )


def _result(
    spec: JobSpec, s: Mapping[str, Any], public: Public, evaluation: dict[str, Any]
) -> dict[str, Any]:
    kept = [list(k) for k in public["kept"]]
    names = columns(s, kept)
    prep = public["prep"]
    model = {
        "kind": "churn_logistic",
        "label": s["label"],
        "features": list(s["features"]),
        "numeric": list(s["numeric"]),
        "categorical": list(s["categorical"]),
        "lower": list(s["lower"]),
        "upper": list(s["upper"]),
        "log": list(s["log"]),
        "mean": list(public["mean"]),
        "sd": list(public["sd"]),
        "clip_sd": s["clip_sd"],
        "kept": kept,
        "columns": names,
        "w": list(public["w"]),
        "reference_date": spec.params.get("reference_date"),
        "label_end": spec.params.get("label_end"),
        "time_field": spec.params.get("time_field", "time"),
        "amount_field": spec.params.get("amount_field", "amount"),
        "split_seed": s["split_seed"],
        "holdout": s["holdout"],
        "score_bins": s["score_bins"],
    }
    categories = {
        feature: dict(zip([*levels, p.OTHER], counts, strict=True))
        for feature, levels, counts in zip(
            s["categorical"], s["levels"], prep["category_counts"], strict=True
        )
    }
    return {
        "analysis": INFO.name,
        "dataset": spec.dataset,
        "epsilon": spec.epsilon,
        "delta": spec.delta,
        "label": s["label"],
        "features": list(s["features"]),
        "coefficients": dict(zip(names, public["w"], strict=True)),
        "preprocessing": {
            "training_customers": prep["customers"],
            "training_churners": prep["churners"],
            "numeric": {
                f: {"mean": m, "sd": d, "lower": lo, "upper": hi, "log1p": lg}
                for f, m, d, lo, hi, lg in zip(
                    s["numeric"], public["mean"], public["sd"], s["lower"], s["upper"], s["log"], strict=True
                )
            },
            "categories": categories,
            "kept": dict(zip(s["categorical"], kept, strict=True)),
        },
        "evaluation": evaluation,
        "training": {
            "optimizer": s["optimizer"],
            "server_lr": s["server_lr"],
            "client_lr": s["client_lr"],
            "l2": s["l2"],
            "rounds": s["rounds"],
            "clip_quantile": s["clip_quantile"],
            "initial_clip": s["initial_clip"],
            "final_clip": public.get("final_clip"),
        },
        "budget_plan": s["budget"],
        "model": model,
    }
