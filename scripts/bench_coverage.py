"""Coverage of the DP intervals: how often a released 95% interval holds the true value.

Claim checked: "the demo's DP counts, sums and histograms fall inside their stated intervals about
95% of the time over repeated runs". No processes: the demo's synthetic data for 3 partners (the
demo's policies and seeds), each node's ``local_vector`` and ``add_noise`` share from the analyses'
real code (seeded generators), the sum of the shares, then ``release`` with ``truth`` = the sum of
the nodes' ``exact`` vectors. Every released (unsuppressed) estimate whose cell carries a ``true``
value counts once: inside its ``ci95`` or not. For the first ``--secagg-trials`` trials the noisy
vectors also go through ``simulate_round`` (encode, mask, unmask, decode) and must give the very
same total as the plain sum.

A Wilson score 95% band is given on each coverage: the cells' noises are independent draws, so
the hits are independent Bernoulli trials (estimates inside ONE cell, e.g. a group's count and
sum, share noise and are reported under separate keys).

    .venv/bin/python scripts/bench_coverage.py --trials 200 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tessera.cli.demo import BASE_PARTNERS, partner_names, policies_dir
from tessera.cli.demo_data import REGIONS, write_customers
from tessera.client.datasource import CsvDataSource, read_for_plan
from tessera.core.analyses import vector as v
from tessera.core.analyses.registry import get_vector_analysis
from tessera.core.policy import Policy, load_policy
from tessera.core.secagg.testing import simulate_round
from tessera.core.types import JobSpec

EPSILON, DELTA = 0.5, 1e-7  # within every example policy's per-job limits
SPEND = {"field": "monthly_spend", "lower": 0.0, "upper": 200.0}
BY_REGION = {"group_by": "region", "groups": REGIONS}
JOBS: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (analysis, params)
    "count_by_region": ("count", dict(BY_REGION)),
    "sum_spend_by_region": ("sum", SPEND | BY_REGION),
    "mean_spend": ("mean", dict(SPEND)),
    "histogram_spend_20": ("histogram", SPEND | {"bins": 20}),
}
CONTROL_SHIFT = 1_000_000  # customers added to every count cell of the control release
# The figure each analysis is about; its other estimates (e.g. a sum's count) are listed apart.
MAIN_KEY = {"count": "count", "sum": "sum", "mean": "mean", "histogram": "count"}


def log(message: str) -> None:
    print(f"[bench_coverage {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wilson(hits: int, n: int, z: float = v.Z95) -> list[float] | None:
    """Wilson score interval for a binomial proportion (better than Wald near 0.95)."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def demo_partners(work: Path, *, nodes: int, rows: int, seed: int) -> dict[str, tuple[Policy, Path]]:
    """The demo's policies and synthetic customers (same templates, rewrites and seeds)."""
    names = partner_names(nodes)
    out: dict[str, tuple[Policy, Path]] = {}
    for index, name in enumerate(names):
        doc = yaml.safe_load(
            (policies_dir() / f"{BASE_PARTNERS[index % len(BASE_PARTNERS)]}.yaml").read_text()
        )
        doc["partner"] = name
        doc["policy_id"] = f"{name}-v1"
        doc["allowed_partners"] = [n for n in names if n != name]
        path = work / name / "policy.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        policy = load_policy(path)
        csv = work / name / "customers.csv"
        write_customers(policy, "customers", csv, rows=rows, seed=seed + index)
        out[name] = (policy, csv)
    return out


def secagg_total(
    vectors: Sequence[np.ndarray], plan: v.VectorPlan, *, rng: np.random.Generator
) -> np.ndarray:
    """The decoded total after a full simulated masking round (no dropout)."""
    bits = v.bits_for(plan, max_customers=10_000_000)
    words = np.uint32 if bits <= 32 else np.uint64  # the round's word type, as the node casts it
    encoded = {f"node-{i}": v.encode(vec, bits=bits).astype(words) for i, vec in enumerate(vectors)}
    result = simulate_round(encoded, threshold=plan.survivors_t, bits=bits, rng=rng)
    return v.decode(result.total, bits=bits)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    partners = demo_partners(work, nodes=args.nodes, rows=args.rows, seed=args.data_seed)
    sources = [CsvDataSource({"customers": csv}, policy) for policy, csv in partners.values()]
    schema = next(d for d in sources[0].schemas() if d.name == "customers")
    fields = {f.name: f for f in schema.fields}
    min_cohort = max(policy.min_cohort_size for policy, _ in partners.values())
    n = len(partners)
    # No dropout: t = n (with 3 nodes the coordinator's floor of 3 makes t = 3 anyway).
    t = n
    root = np.random.default_rng(args.seed)
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # "job.key" -> [inside, released]
    suppressed: dict[str, int] = defaultdict(int)
    hits_all: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # same, no suppression
    secagg_checked = 0
    for label, (name, params) in JOBS.items():
        analysis = get_vector_analysis(name)
        spec = JobSpec(
            analysis=name,
            dataset="customers",
            purpose="research",
            epsilon=EPSILON,
            delta=DELTA,
            params=params,
        )
        plan = analysis.plan(spec, fields, survivors_t=t, n_nodes=n)
        data = [read_for_plan(src, "customers", plan.fields) for src in sources]
        truth = sum((analysis.exact(plan, d) for d in data), start=np.zeros(plan.length))
        for trial in range(args.trials):
            shares = [v.add_noise(plan, analysis.local_vector(plan, d, rng=root), rng=root) for d in data]
            total = np.asarray(np.sum(shares, axis=0, dtype=np.int64))
            if trial < args.secagg_trials:
                if not np.array_equal(secagg_total(shares, plan, rng=root), total):
                    raise SystemExit(f"{label}: the masked round's total differs from the plain sum")
                secagg_checked += 1
            doc = analysis.release(plan, total, summands=n, min_cohort_size=min_cohort, truth=truth)
            suppressed[label] += tally(doc, label, hits)
            tally(control_release(analysis, plan, total, truth, summands=n), label, hits_all)
        log(f"{label}: {args.trials} trials done")
    return {
        "hits": hits,
        "hits_all": hits_all,
        "suppressed": suppressed,
        "secagg_checked": secagg_checked,
        "min_cohort": min_cohort,
    }


def control_release(
    analysis: Any, plan: v.VectorPlan, total: np.ndarray, truth: np.ndarray, *, summands: int
) -> dict[str, Any]:
    """The same draw released so that NO cell is suppressed: the control without selection.

    A cohort floor of 0 is not enough (a negative noisy count is still suppressed, which drops
    misses of near-empty cells), so the count part of both the noisy total and the truth is
    shifted by ``CONTROL_SHIFT``. Counts, histogram bins and sums (``S + offset·C``) move by the
    same amount in value and truth, with unchanged interval widths, so hit or miss is unchanged.
    A mean would change, so a mean is released as is (its single cell is never near the floor).
    """
    if plan.analysis == "mean":
        return dict(analysis.release(plan, total, summands=summands, min_cohort_size=0, truth=truth))
    part = plan.part("count")
    shift = np.zeros(plan.length, dtype=np.int64)
    shift[part.start : part.stop] = CONTROL_SHIFT
    return dict(
        analysis.release(plan, total + shift, summands=summands, min_cohort_size=0, truth=truth + shift)
    )


def tally(doc: Mapping[str, Any], label: str, hits: dict[str, list[int]]) -> int:
    """Add each released estimate's hit or miss to ``hits``; return the number of suppressed cells."""
    suppressed = 0
    for cell in doc["cells"]:
        if cell["suppressed"]:
            suppressed += 1
            continue
        for key, true in cell["true"].items():
            estimate = cell.get(key)
            if not isinstance(estimate, Mapping) or true is None:
                continue
            low, high = estimate["ci95"]
            counts = hits[f"{label}.{key}"]
            counts[0] += int(low <= true <= high)
            counts[1] += 1
    return suppressed


def summarise(hits: Mapping[str, list[int]]) -> dict[str, Any]:
    def entry(inside: int, released: int) -> dict[str, Any]:
        return {
            "released": released,
            "inside_ci95": inside,
            "coverage": round(inside / released, 4) if released else None,
            "band95": wilson(inside, released),
        }

    per_estimate = {key: entry(*tally) for key, tally in sorted(hits.items())}
    main = {label: entry(*hits[f"{label}.{MAIN_KEY[name]}"]) for label, (name, _) in JOBS.items()}
    # Overall over the main figures only: their cells' noises are independent, so the Wilson band
    # holds; the pool of every estimate (a cell's count and sum share noise) is given beside it.
    inside = sum(m["inside_ci95"] for m in main.values())
    released = sum(m["released"] for m in main.values())
    every = [sum(h[i] for h in hits.values()) for i in (0, 1)]
    return {
        "per_analysis": main,
        "per_estimate": per_estimate,
        "overall": entry(inside, released),
        "overall_every_estimate": entry(*every),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1, help="seed of the noise and rounding")
    parser.add_argument("--data-seed", type=int, default=7, help="the demo's data seed")
    parser.add_argument("--rows", type=int, default=500, help="customers per partner (demo default)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--secagg-trials", type=int, default=3, help="trials also run through masking")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tessera-coverage-") as tmp:
        raw = run(args, Path(tmp))
    doc = {
        "benchmark": "bench_coverage",
        "what": "share of released 95% intervals that hold the true value",
        "nodes": args.nodes,
        "rows_per_node": args.rows,
        "trials": args.trials,
        "seed": args.seed,
        "epsilon": EPSILON,
        "delta": DELTA,
        "min_cohort_size": raw["min_cohort"],
        "suppressed_cells": dict(raw["suppressed"]),
        "secagg_trials_identical": raw["secagg_checked"],
        **summarise(raw["hits"]),
        # Control: the same draws with every cell released (see control_release).
        "without_suppression": summarise(raw["hits_all"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
