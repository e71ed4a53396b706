"""``kmeans``: DP k-means over per-customer features across partners; labels stay home.

Features (``features``, public list): numeric fields of the job's dataset when it holds one row
per customer (``customers``), fields of ``customers`` joined as ``customers.<field>``, and the
derived ``rfm.recency``, ``rfm.frequency``, ``rfm.monetary`` of a transactions dataset as of
``reference_date`` (``customer_table``). A customer missing any feature is left out of every
round. Each feature is clipped to its public ``[lower_j, upper_j]``, optionally ``log1p``-
transformed (``log_features``), then standardised with DP statistics and clipped to
``±clip_sd`` (default 3) standard deviations: ``z`` lives in ``[-c, c]^d``.

Rounds (ρ the job's total):

1. statistics, ``stats_share``·ρ (default 0.15): customers with all features (count, L = 1;
   0.2 of the round), sum of ``u_j`` and sum of ``u_j²`` where ``u_j`` in ``[-1, 1]`` is the
   transformed feature rescaled from its public range (0.4 each; fixed point, L∞ = top,
   L2 = √d·top, L1 = d·top). The driver derives the mean and standard deviation of each feature.
2. initialisation (``init: grid``, the default), ``init_share``·ρ (default 0.15): a DP histogram
   of the customers over a grid of ``g^d`` cells of ``[-c, c]^d`` (``g`` = 8 per axis, fewer
   above 3 features so that at most 4096 cells; L∞ = L1 = L2 = 1). The driver keeps the cells
   whose noisy count clears their 95% noise half-width, runs weighted k-means++ and Lloyd on the
   cell centres (5 seeded tries, post-processing) and starts Lloyd from the best. ``init: random``
   instead draws the k starting centroids from a public seeded N(0, I) in z (no data, no budget)
   and gives this round's share to the iterations. The benchmark (scripts/bench_segments.py)
   measures both: the grid coreset is why this analysis beats random starts.
3. ``iterations`` Lloyd rounds, the rest of ρ split evenly: each customer, assigned to its
   nearest public centroid, adds 1 to its cluster's count (0.2 of the round; L = 1) and its ``z``
   to the cluster's sum (0.8; fixed point with ``c`` as clip bound: L∞ = top, L2 = √d·top,
   L1 = d·top). The driver moves each centroid whose noisy count is at least 5 to ``sum/count``
   clipped to the box; others keep their place.

Refusals: unknown, core-sensitive or non-numeric features; more than 64 clusters or more than the
grid holds; budget shares whose rounds would add up to more than the job's ρ; and too many
clusters for the budget — a cluster needs about ``10·σ_z`` customers for its centroid's noise to
stay under 0.1 sd per feature (σ_z: the noise sd of a cluster's sum, in sd units, central
Gaussian approximation); with a public ``population`` estimate this is checked before anything
runs, else after round 1 against its DP count (the job then ends having spent round 1 only).

Result: centroids in original units (``z`` mapped back through the DP mean and sd and the
transform), cluster sizes with intervals from the last round (suppressed below the cohort floor),
the budget of every round, and a ``model`` each node applies locally (``label_customers``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import kmeans_math as km
from tessera.core.analyses import kmeans_spec
from tessera.core.analyses import params as p
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.kmeans_spec import (
    LLOYD_SPLIT,
    MIN_MOVE_COUNT,
    STATS_SPLIT,
    VALUE_BITS,
    check_clusters,
    check_public,
    kind,
    max_rounds,
    settings,
)
from tessera.core.analyses.program import Public, Step, rho_total
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

INFO = AnalysisInfo(
    name="kmeans",
    description="DP k-means of per-customer features: DP standardisation, grid-coreset start, DP Lloyd",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)
PARAMS = kmeans_spec.PARAMS  # what `tessera analyses` lists


def start(spec: JobSpec) -> Public:
    return {}


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """The plan of round ``round_no`` (statistics, grid or Lloyd), from public things only."""
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    s = settings(spec, fields)
    kind_ = kind(s, round_no)
    d, k, t = len(s["features"]), s["k"], survivors_t
    top = 2 ** (VALUE_BITS - 1) - 1
    layout = {key: s[key] for key in ("features", "read", "lower", "upper", "log", "t_lower", "t_upper")}
    layout |= {key: s[key] for key in ("clip", "grid", "k", "key", "join", "time", "amount")}
    layout |= {
        "field": None,
        "round": round_no,
        "kind": kind_,
        "reference_day": s.get("reference_day"),
        "contribution": p.Contribution(s["key"], "features", None, 1).as_layout(),
        **check_public(s, kind_, public or {}),
    }
    if kind_ == "stats":
        rho = s["budget"]["stats"]
        # One scale for both sums: the node rounds each customer's (u, u² - 1/2) in one pass, so
        # a customer's rounding never shifts another's random draws (the bound test's coupling).
        one = fixed_point_scale(clip_bound=1.0, value_bits=VALUE_BITS)
        parts: tuple[v.VectorPart, ...] = (
            v.make_part(
                "count",
                start=0,
                stop=1,
                scale=1.0,
                linf_bound=1,
                rho=STATS_SPLIT["count"] * rho,
                survivors_t=t,
            ),
            v.make_part(
                "sum",
                start=1,
                stop=1 + d,
                scale=one,
                linf_bound=top,
                l1=d * top,
                l2=math.sqrt(d) * top,
                rho=STATS_SPLIT["sum"] * rho,
                survivors_t=t,
            ),
            v.make_part(
                "square",
                start=1 + d,
                stop=1 + 2 * d,
                scale=one,
                linf_bound=top,
                l1=d * top,
                l2=math.sqrt(d) * top,
                rho=STATS_SPLIT["square"] * rho,
                survivors_t=t,
            ),
        )
    elif kind_ == "grid":
        rho = s["budget"]["init"]
        cells = s["grid"] ** d
        parts = (v.make_part("count", start=0, stop=cells, scale=1.0, linf_bound=1, rho=rho, survivors_t=t),)
    else:
        rho = s["budget"]["per_iteration"]
        scale = fixed_point_scale(clip_bound=s["clip"], value_bits=VALUE_BITS)
        parts = (
            v.make_part(
                "count",
                start=0,
                stop=k,
                scale=1.0,
                linf_bound=1,
                rho=LLOYD_SPLIT["count"] * rho,
                survivors_t=t,
            ),
            v.make_part(
                "sum",
                start=k,
                stop=k + k * d,
                scale=scale,
                linf_bound=top,
                l1=d * top,
                l2=math.sqrt(d) * top,
                rho=LLOYD_SPLIT["sum"] * rho,
                survivors_t=t,
            ),
        )
    reads = [f for f in s["read"] if f not in ct.RFM]
    if any(f in ct.RFM for f in s["features"]):
        reads = [s["time"], s["amount"], *reads]
    if any(ct.qualified(f)[0] == ct.JOINED for f in reads):
        reads.append(s["join"])
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(s["key"], *reads),
        length=parts[-1].stop,
        parts=parts,
        layout=layout,
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def features(layout: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[v.IntArray, v.FloatArray]:
    """The node's customers with every feature present: their ids and raw feature values."""
    table, pop = ct.customers_of(data, layout, with_rfm=any(f in ct.RFM for f in layout["features"]))
    columns = []
    for name, read in zip(layout["features"], layout["read"], strict=True):
        if name in ct.RFM:
            assert table is not None
            columns.append(table.feature(name))
            continue
        columns.append(ct.layout_attribute(data, read, pop, layout).astype(np.float64))
    x = np.stack(columns, axis=1) if columns else np.zeros((pop.size, 0))
    keep = np.all(np.isfinite(x), axis=1)
    return pop.ids[keep], x[keep]


def transformed(layout: Mapping[str, Any], x: v.FloatArray) -> v.FloatArray:
    """Clip to the public bounds, then ``log1p`` where asked."""
    t = np.clip(x, np.asarray(layout["lower"]), np.asarray(layout["upper"]))
    log = np.asarray(layout["log"], dtype=bool)
    t[:, log] = np.log1p(t[:, log])
    return t


def standardised(layout: Mapping[str, Any], x: v.FloatArray) -> v.FloatArray:
    """``z`` in ``[-clip, clip]^d`` from raw features, with the public DP mean and sd."""
    z = (transformed(layout, x) - np.asarray(layout["mean"])) / np.asarray(layout["sd"])
    c = float(layout["clip"])
    out: v.FloatArray = np.clip(z, -c, c)
    return out


def _vector(plan: v.VectorPlan, data: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
    layout = plan.layout
    _, x = features(layout, data)
    out = np.zeros(plan.length, dtype=np.float64 if rng is None else np.int64)

    def add(start: int, stop: int, scale: float, cells: v.IntArray | None, values: v.FloatArray) -> None:
        """Sum ``values`` (n × w, rounded customer by customer) into ``[start, stop)``, at ``cells``
        (row offsets of width w) or all into one row."""
        w = values.shape[1]
        q: np.ndarray = values
        if rng is not None:
            q = stochastic_round(values.ravel(), scale=scale, rng=rng).reshape(values.shape)
        if cells is None:
            out[start:stop] += q.sum(axis=0)
        else:
            np.add.at(out[start:stop].reshape(-1, w), cells, q)

    kind_ = layout["kind"]
    if kind_ == "stats":
        t = transformed(layout, x)
        lo, hi = np.asarray(layout["t_lower"]), np.asarray(layout["t_upper"])
        u = np.clip((t - (lo + hi) / 2) / ((hi - lo) / 2), -1.0, 1.0)
        out[0] = x.shape[0]
        both = np.hstack([u, np.clip(u * u - 0.5, -0.5, 0.5)])
        add(plan.part("sum").start, plan.part("square").stop, plan.part("sum").scale, None, both)
    elif kind_ == "grid":
        cells = km.grid_cells(standardised(layout, x), int(layout["grid"]), clip=float(layout["clip"]))
        out[:] = np.bincount(cells, minlength=plan.length)
    else:
        z = standardised(layout, x)
        label = km.assign(z, np.asarray(layout["centroids"]))
        out[: layout["k"]] = np.bincount(label, minlength=layout["k"])
        part = plan.part("sum")
        add(part.start, part.stop, part.scale, label, z)
    return out


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """The node's vector of the plan's round (int64, no noise)."""
    return np.asarray(_vector(plan, data, rng), dtype=np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised vector in the integer units of ``local_vector`` without rounding (tests)."""
    out = np.asarray(_vector(plan, data, None), dtype=np.float64)
    for part in plan.parts:
        out[part.start : part.stop] *= part.scale
    return out


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """The round's noisy totals in value units with 95% half-widths; counts below the cohort
    floor are suppressed (None)."""
    noisy = v.check_total(plan, total, summands=summands).astype(np.float64)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    layout = plan.layout
    doc |= {"round": layout["round"], "kind": layout["kind"]}
    count = plan.part("count")
    half = v.half_width(plan, count, summands=summands)
    counts = noisy[count.start : count.stop]
    doc["counts"] = [float(x) if x >= min_cohort_size else None for x in counts]
    doc["count_ci95_half_width"] = half
    if layout["kind"] != "grid":
        part = plan.part("sum")
        doc["sums"] = (noisy[part.start : part.stop] / part.scale).tolist()
        doc["sum_ci95_half_width"] = v.half_width(plan, part, summands=summands)
    if layout["kind"] == "stats":
        part = plan.part("square")
        doc["squares"] = (noisy[part.start : part.stop] / part.scale).tolist()
    return doc


def _moments(s: Mapping[str, Any], released: Mapping[str, Any]) -> tuple[float, list[float], list[float]]:
    """Round 1 -> DP count, mean and sd of each transformed feature (post-processing)."""
    n = released["counts"][0]
    if n is None or n <= 0:
        raise InvalidRequest("too few customers to standardise the features (round 1 was suppressed)")
    mean, sd = [], []
    for j, (lo, hi) in enumerate(zip(s["t_lower"], s["t_upper"], strict=True)):
        half = (hi - lo) / 2
        mu = float(np.clip(released["sums"][j] / n, -1, 1))
        second = float(np.clip(released["squares"][j] / n + 0.5, 0, 1))
        mean.append((lo + hi) / 2 + half * mu)
        sd.append(half * math.sqrt(max(second - mu * mu, 1e-4)))
    return float(n), mean, sd


def _original(s: Mapping[str, Any], public: Public, z: v.FloatArray) -> v.FloatArray:
    t = np.asarray(public["mean"]) + np.asarray(public["sd"]) * z
    log = np.asarray(s["log"], dtype=bool)
    t[:, log] = np.expm1(t[:, log])
    return np.clip(t, np.asarray(s["lower"]), np.asarray(s["upper"]))


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """Statistics -> start; grid -> k-means++ on the coreset; Lloyd -> move centroids or end."""
    s = settings(spec)
    kind_ = kind(s, round_no)
    rng = np.random.default_rng(s["seed"])  # public randomness: post-processing only
    k, d, c = s["k"], len(s["features"]), s["clip"]
    if kind_ == "stats":
        n, mean, sd = _moments(s, released)
        check_clusters(s, population=n)
        nxt: dict[str, Any] = {"mean": mean, "sd": sd}
        if s["init"] == "random":
            nxt["centroids"] = np.clip(rng.standard_normal((k, d)), -c, c).tolist()
        return Step(next_public=nxt, result=None, metric={"customers": n})
    if kind_ == "grid":
        counts = np.array([0.0 if x is None else x for x in released["counts"]])
        weights = np.where(counts >= released["count_ci95_half_width"], counts, 0.0)
        centres = km.grid_centres(s["grid"], d, clip=c)
        if np.count_nonzero(weights) < k:
            weights = np.clip(counts, 0, None)
        if np.count_nonzero(weights) == 0:
            raise InvalidRequest("the initialisation grid holds no customers above the noise")
        centroids = km.best_of(centres, k, rng=rng, weights=weights)
        return Step(
            next_public={**dict(public), "centroids": np.clip(centroids, -c, c).tolist()},
            result=None,
            metric={"cells_used": float(np.count_nonzero(weights))},
        )
    old = np.asarray(public["centroids"], dtype=np.float64)
    counts = np.array([np.nan if x is None else x for x in released["counts"]])
    sums = np.asarray(released["sums"], dtype=np.float64).reshape(k, d)
    move = np.nan_to_num(counts, nan=0.0) >= MIN_MOVE_COUNT
    new = old.copy()
    new[move] = np.clip(sums[move] / counts[move, None], -c, c)
    moved = float(np.sqrt(((new - old) ** 2).sum(axis=1)).max())
    last = kind(s, round_no + 1) if round_no + 1 < max_rounds(spec) + 1 else "end"
    if last == "lloyd":
        return Step(
            next_public={**dict(public), "centroids": new.tolist()}, result=None, metric={"moved": moved}
        )
    half = released["count_ci95_half_width"]
    clusters = []
    for j in range(k):
        size = None if math.isnan(counts[j]) else v.estimate(float(counts[j]), half)
        clusters.append(
            {
                "cluster": j,
                "centroid": dict(
                    zip(s["features"], _original(s, public, new[j : j + 1])[0].tolist(), strict=True)
                ),
                "size": size,
                "suppressed": size is None,
            }
        )
    result = {
        "analysis": INFO.name,
        "dataset": spec.dataset,
        "epsilon": spec.epsilon,
        "delta": spec.delta,
        "rho": rho_total(spec),
        "k": k,
        "init": s["init"],
        "clusters": clusters,
        "sizes_from": "assignments of the last iteration (before its centroid update)",
        "budget_split": s["budget"],
        "min_cohort_size": released["min_cohort_size"],
        "rounds_run": round_no,
        "model": {
            "kind": "kmeans",
            "features": list(s["features"]),
            "lower": list(s["lower"]),
            "upper": list(s["upper"]),
            "log": list(s["log"]),
            "mean": list(public["mean"]),
            "sd": list(public["sd"]),
            "clip": c,
            "centroids_z": new.tolist(),
            "reference_date": spec.params.get("reference_date"),
            "time_field": spec.params.get("time_field", "time"),
            "amount_field": spec.params.get("amount_field", "amount"),
        },
    }
    return Step(next_public=None, result=result, metric={"moved": moved})


def model_layout(
    model: Mapping[str, Any], *, dataset: str, key: str | None, join: str | None
) -> dict[str, Any]:
    """The layout a node labels its customers with, from a released kmeans model (public)."""
    if model.get("kind") != "kmeans":
        raise InvalidRequest("this model is not a kmeans result")
    feats = tuple(str(f) for f in model["features"])
    layout = {
        "features": feats,
        "read": tuple(f if f in ct.RFM else ct.read_name(dataset, f) for f in feats),
        "lower": tuple(model["lower"]),
        "upper": tuple(model["upper"]),
        "log": tuple(bool(x) for x in model["log"]),
        "mean": tuple(model["mean"]),
        "sd": tuple(model["sd"]),
        "clip": float(model["clip"]),
        "key": key,
        "join": join,
        "time": model.get("time_field"),
        "amount": model.get("amount_field"),
        "reference_day": None,
    }
    if any(f in ct.RFM for f in feats):
        spec = JobSpec(analysis=INFO.name, params={"d": model["reference_date"]})
        layout["reference_day"] = ct.day_param(spec, "d")
    return layout


def model_fields(layout: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields a node reads to label its customers under ``model_layout(...)`` (plan style:
    joined ones qualified, the customer key last)."""
    reads = [f for f in layout["read"] if f not in ct.RFM]
    if any(f in ct.RFM for f in layout["features"]):
        reads = [layout["time"], layout["amount"], *reads]
    if any(ct.qualified(f)[0] == ct.JOINED for f in reads):
        if layout["join"] is None:
            raise InvalidRequest(
                "the model joins customers.<field>: the customers dataset needs a customer_key"
            )
        reads.append(layout["join"])
    return p.touched(layout["key"], *reads)


def label_customers(
    model: Mapping[str, Any],
    data: Mapping[str, Any],
    *,
    dataset: str,
    key: str | None,
    join: str | None = None,
) -> dict[int, int]:
    """The node's local half: each customer's cluster under a released model (never sent).

    ``data`` holds the node's columns as a round would read them (``customer_table.read_columns``).
    Customers missing a feature get no cluster. Without a customer key, ids are row positions.
    """
    layout = model_layout(model, dataset=dataset, key=key, join=join)
    ids, x = features(layout, data)
    label = km.assign(standardised(layout, x), np.asarray(model["centroids_z"], dtype=np.float64))
    return dict(zip(ids.tolist(), label.tolist(), strict=True))
