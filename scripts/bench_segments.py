#!/usr/bin/env python3
"""Accuracy of rfm_segments and kmeans on real data (CDNOW); prints JSON. Not run by pytest.

Data: every purchase of the 23,570 CDNOW customers (/work/shared/data/cdnow, or --data), each
customer with all of its rows on one of 4 simulated nodes (id modulo 4). Every run is the real
program in memory: each round's plan, each node's local vector, each node's distributed
discrete-Gaussian noise share, the sum, the release and the driver's step (no transport).
δ = 1e-6, min cohort size 10; medians (and min/max) over --seeds seeds.

rfm_segments (reference date 1998-06-30, recency_max 600 days, frequency_max 100, monetary_max
$3,000, the default 128 log bins per axis): segment sizes against the non-private computation — the exact
quintiles of the pooled customers (numpy ``inverted_cdf``), the same scoring and grid, exact
counts. Reported: ``tv`` = Σ|DP size - true size| / (2n), the share of customers the released
table misplaces (suppressed cells count 0); ``tv_boundaries_only`` = the same with the DP
boundaries but exact counts (what boundary error alone costs); ``label_agreement`` = the share of
customers whose local label under the DP boundaries equals the non-private one (target >= 95%),
and the same with the DP boundaries of one axis only (which axis costs the disagreement);
``share_mae_pp`` = the mean over the 11 segments of |released share - true share|, in percentage
points (target < 1; a suppressed segment's share counts 0); ``max_abs``.

kmeans (features rfm.recency, rfm.frequency, rfm.monetary, log1p on F and M, k = 5, 5 Lloyd
iterations, default budget split): cost = Σ squared distances of the TRUE points (clipped,
transformed, standardised with the true mean and sd) to the released centroids, divided by the
cost of non-private k-means (Lloyd from k-means++, best of 10) in the same space; for the grid
coreset start (default) and a seeded random N(0, I) start (its share goes to the iterations).
Target: grid <= 1.10x. Beside it, in the same run and on the same clipped, transformed features with
the same public bounds, k and ε: diffprivlib's ``KMeans`` (a central curator, pure ε-DP, δ = 0;
ours is (ε, 1e-6)-DP with the noise distributed over the nodes), its centroids scored the same way.
The ratio of costs is the ratio of normalised intra-cluster variances (both divide by the same
total variance, reported with the non-private normalised variance).

Usage: ``.venv/bin/python scripts/bench_segments.py [--seeds 7] [--epsilons 1,4]`` (about 10 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import kmeans, rfm
from tessera.core.analyses import kmeans_math as km
from tessera.core.analyses.registry import get_program
from tessera.core.analyses.vector import add_noise
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

DATA = Path("/work/shared/data/cdnow/CDNOW_master.txt")
NODES = 4
DELTA = 1e-6
MIN_COHORT = 10
FIELDS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
}
RFM: dict[str, ParamValue] = {
    "reference_date": "1998-06-30",
    "recency_max": 600.0,
    "frequency_max": 100.0,
    "monetary_max": 3000.0,
}
KMEANS: dict[str, ParamValue] = {
    "features": ("rfm.recency", "rfm.frequency", "rfm.monetary"),
    "lower": (0.0, 1.0, 0.0),
    "upper": (600.0, 100.0, 3000.0),
    "log_features": ("rfm.frequency", "rfm.monetary"),
    "reference_date": "1998-06-30",
    "k": 5,
    "iterations": 5,
}


def load(path: Path) -> dict[str, np.ndarray]:
    raw = np.loadtxt(path, skiprows=1)
    epoch = date(1970, 1, 1)
    ymd = raw[:, 1].astype(np.int64)
    days = {d: float((date(d // 10000, d // 100 % 100, d % 100) - epoch).days) for d in np.unique(ymd)}
    return {
        "customer": raw[:, 0].astype(np.int64),
        "time": np.array([days[d] for d in ymd.tolist()]),
        "amount": raw[:, 3],
    }


def split(data: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    home = data["customer"] % NODES
    return [{k: v[home == n] for k, v in data.items()} for n in range(NODES)]


def run(spec: JobSpec, nodes: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:
    program = get_program(spec.analysis)
    rng = np.random.default_rng(seed)
    public = program.start(spec)
    for round_no in range(1, program.max_rounds(spec) + 1):
        plan = program.plan(spec, FIELDS, survivors_t=NODES, n_nodes=NODES, round_no=round_no, public=public)
        total = np.sum(
            [add_noise(plan, program.local_vector(plan, x, rng=rng), rng=rng) for x in nodes], axis=0
        )
        released = program.release(plan, total.astype(np.int64), summands=NODES, min_cohort_size=MIN_COHORT)
        step = program.step(spec, round_no=round_no, public=public, released=released)
        if step.result is not None:
            return step.result
        assert step.next_public is not None
        public = step.next_public
    raise RuntimeError("the program did not end")


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_rfm(
    data: Mapping[str, np.ndarray], nodes: list[dict[str, np.ndarray]], eps: float, seeds: int
) -> dict[str, Any]:
    reference = ct.day_param(JobSpec(analysis="x", params=RFM), "reference_date")
    table = ct.rfm(data, key="customer", time="time", amount="amount", reference_day=reference)
    values = {"recency": table.recency, "frequency": table.frequency, "monetary": table.monetary}
    exact_b = {
        a: tuple(float(x) for x in np.quantile(values[a], rfm.LEVELS, method="inverted_cdf"))
        for a in rfm.AXES
    }
    truth_labels = rfm.segments(table.recency, table.frequency, table.monetary, exact_b)
    n = table.population.size
    true_sizes = np.bincount(truth_labels, minlength=len(rfm.SEGMENTS)).astype(float)
    true_shares = true_sizes / n
    tv, tv_b, agree, worst, mae, axis_agree = [], [], [], [], [], {a: [] for a in rfm.AXES}
    for seed in range(seeds):
        spec = JobSpec(analysis="rfm_segments", dataset="transactions", epsilon=eps, delta=DELTA, params=RFM)
        result = run(spec, nodes, seed)
        sizes = np.array([(c["size"] or {"value": 0.0})["value"] for c in result["segments"]])
        shares = np.array([(c.get("share") or {"value": 0.0})["value"] for c in result["segments"]])
        mae.append(float(np.abs(shares - true_shares).mean() * 100))
        b = {a: tuple(result["model"]["boundaries"][a]) for a in rfm.AXES}
        dp_labels = rfm.segments(table.recency, table.frequency, table.monetary, b)
        for axis in rfm.AXES:  # the DP boundaries of one axis only: where the disagreement comes from
            one = {a: b[a] if a == axis else exact_b[a] for a in rfm.AXES}
            labels = rfm.segments(table.recency, table.frequency, table.monetary, one)
            axis_agree[axis].append(float((labels == truth_labels).mean()))
        tv.append(float(np.abs(sizes - true_sizes).sum() / (2 * n)))
        tv_b.append(
            float(np.abs(np.bincount(dp_labels, minlength=len(rfm.SEGMENTS)) - true_sizes).sum() / (2 * n))
        )
        agree.append(float((dp_labels == truth_labels).mean()))
        worst.append(float(np.abs(sizes - true_sizes).max()))
    return {
        "customers": n,
        "true_sizes": dict(zip(rfm.SEGMENTS, true_sizes.tolist(), strict=True)),
        "exact_boundaries": exact_b,
        "tv": _summary(tv),
        "tv_boundaries_only": _summary(tv_b),
        "label_agreement": _summary(agree),
        "label_agreement_dp_boundaries_of_one_axis": {a: _summary(x) for a, x in axis_agree.items()},
        "share_mae_pp": _summary(mae),
        "max_abs": _summary(worst),
        "targets": {
            "share_mae_pp_below_1": statistics.median(mae) < 1.0,
            "label_agreement_at_least_0.95": statistics.median(agree) >= 0.95,
        },
    }


def bench_kmeans(
    data: Mapping[str, np.ndarray], nodes: list[dict[str, np.ndarray]], eps: float, seeds: int
) -> dict[str, Any]:
    spec0 = JobSpec(analysis="kmeans", dataset="transactions", epsilon=eps, delta=DELTA, params=KMEANS)
    layout = dict(kmeans.plan(spec0, FIELDS, survivors_t=NODES, n_nodes=NODES).layout)
    _, x = kmeans.features(layout, data)
    t = kmeans.transformed(layout, x)
    mu, sd = t.mean(axis=0), t.std(axis=0)
    z = (t - mu) / sd
    k = int(KMEANS["k"])  # type: ignore[arg-type]
    reference = km.cost(z, km.best_of(z, k, rng=np.random.default_rng(0), tries=10, iterations=300))
    out: dict[str, Any] = {"customers": int(z.shape[0]), "nonprivate_cost": reference}
    for init in ("grid", "random"):
        ratios = []
        budget = None
        for seed in range(seeds):
            params = {**KMEANS, "init": init, "seed": seed}
            spec = JobSpec(analysis="kmeans", dataset="transactions", epsilon=eps, delta=DELTA, params=params)
            result = run(spec, nodes, seed)
            model = result["model"]
            centres = np.asarray(model["mean"]) + np.asarray(model["sd"]) * np.asarray(model["centroids_z"])
            ratios.append(km.cost(z, (centres - mu) / sd) / reference)
            budget = result["budget_split"]
        out[init] = {"cost_ratio": _summary(ratios), "budget_rho": budget}
    out["diffprivlib"] = {
        "cost_ratio": _summary(
            _diffprivlib(layout, t, mu=mu, sd=sd, z=z, eps=eps, seeds=seeds, reference=reference)
        )
    }
    out["total_variance"] = float((z**2).sum())
    out["nonprivate_normalised_variance"] = reference / out["total_variance"]
    out["target_grid_at_most_1.10x"] = out["grid"]["cost_ratio"]["median"] <= 1.10
    return out


def _diffprivlib(
    layout: Mapping[str, Any],
    t: np.ndarray,
    *,
    mu: np.ndarray,
    sd: np.ndarray,
    z: np.ndarray,
    eps: float,
    seeds: int,
    reference: float,
) -> list[float]:
    """diffprivlib's central KMeans (pure ε-DP, one curator holding every customer) on the same
    clipped and transformed features with the same public bounds, k and ε; its centroids are
    scored like ours, on the true standardised points."""
    import warnings

    from diffprivlib.models import KMeans as DpKMeans

    k = int(KMEANS["k"])  # type: ignore[arg-type]
    bounds = (np.asarray(layout["t_lower"]), np.asarray(layout["t_upper"]))
    ratios = []
    for seed in range(seeds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = DpKMeans(n_clusters=k, epsilon=eps, bounds=bounds, random_state=seed).fit(t)
        ratios.append(km.cost(z, (model.cluster_centers_ - mu) / sd) / reference)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--epsilons", default="1,4")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load(args.data)
    nodes = split(data)
    report: dict[str, Any] = {
        "data": str(args.data),
        "rows": int(data["customer"].size),
        "nodes": NODES,
        "delta": DELTA,
        "seeds": args.seeds,
        "min_cohort_size": MIN_COHORT,
        "rfm_params": RFM,
        "kmeans_params": KMEANS,
        "rfm_segments": {},
        "kmeans": {},
    }
    for eps in (float(e) for e in args.epsilons.split(",")):
        report["rfm_segments"][f"epsilon={eps:g}"] = bench_rfm(data, nodes, eps, args.seeds)
        report["kmeans"][f"epsilon={eps:g}"] = bench_kmeans(data, nodes, eps, args.seeds)
    report["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(report, sys.stdout, indent=2, default=list)
    print()


if __name__ == "__main__":
    main()
