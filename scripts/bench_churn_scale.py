#!/usr/bin/env python3
"""One churn_model training over real processes: a coordinator and ``--nodes`` node processes on
loopback (mTLS), ``--customers`` customers in all (one CSV of one row per customer per node),
``--rounds`` gradient rounds; prints JSON: wall time, and where it went.

Where it goes: the coordinator's job events give each stage's seconds (``bench_rounds``'s
``stage_seconds``), summed over all rounds per stage; the first masked input includes the node's
one read and parse of its CSV (every later round reuses it). A node's own compute per round is
timed apart in this process on one node's data (the round's ``local_vector`` and noise share).
Not run by pytest. Usage:
``.venv/bin/python scripts/bench_churn_scale.py [--customers 1000000] [--nodes 4] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_rounds import Federation, stage_seconds

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo import ANALYST
from tessera.core.analyses import churn_model
from tessera.core.analyses.vector import add_noise
from tessera.core.dp import secure_generator
from tessera.core.types import FieldSchema, JobSpec, Tier

REGIONS = ("north", "south", "east", "west", "central")


def write_csv(path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tenure = np.clip(rng.normal(24, 10, n), 0, 120).round()
    spend = rng.gamma(2.0, 30.0, n).round(2)
    region = rng.choice(REGIONS, n)
    logit = -1.0 + 0.8 * (tenure - 24) / 10 - 0.6 * (np.log1p(spend) - 3.8) / 0.6
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    with path.open("w", encoding="utf-8") as out:
        out.write("customer_id,region,tenure_months,monthly_spend,churned\n")
        out.writelines(
            f"S{seed}-{i},{region[i]},{tenure[i]:g},{spend[i]:g},{'true' if churned[i] else 'false'}\n"
            for i in range(n)
        )
    return {
        "tenure_months": tenure,
        "monthly_spend": spend,
        "region": region.astype(object),
        "churned": churned * 1.0,
    }


def spec(rounds: int, per_node: int) -> JobSpec:
    return JobSpec(
        analysis="churn_model",
        dataset="customers",
        purpose="research",
        epsilon=0.5,
        delta=1e-7,
        params={
            "label": "churned",
            "features": ("tenure_months", "monthly_spend", "region"),
            "lower": (0.0, 0.0),
            "upper": (120.0, 1000.0),
            "log_features": ("monthly_spend",),
            "categories": tuple(f"region={r}" for r in REGIONS),
            "rounds": rounds,
            "max_customers": per_node + 1,
        },
    )


def node_compute(job: JobSpec, data: dict[str, np.ndarray], nodes: int) -> dict[str, float]:
    """One node's local_vector + noise share for a training round, in this process (seconds)."""
    fields = {
        "tenure_months": FieldSchema("tenure_months", "int", Tier.GENERAL_SENSITIVE),
        "monthly_spend": FieldSchema("monthly_spend", "float", Tier.GENERAL_SENSITIVE),
        "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
        "churned": FieldSchema("churned", "bool", Tier.GENERAL_SENSITIVE),
    }
    plain = JobSpec(
        analysis=job.analysis,
        dataset=job.dataset,
        epsilon=job.epsilon,
        delta=job.delta,
        params={k: v for k, v in job.params.items() if k != "max_customers"},
    )
    public = {
        "mean": [24.0, 3.8],
        "sd": [10.0, 0.6],
        "kept": [list(REGIONS)],
        "w": [0.0] * 8,
        "clip": 1.0,
        "prep": {"customers": 1.0, "churners": 0.0, "category_counts": [[0.0] * 6]},
    }
    plan = churn_model.plan(plain, fields, survivors_t=nodes, n_nodes=nodes, round_no=2, public=public)
    rng = secure_generator()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        add_noise(plan, churn_model.local_vector(plan, data, rng=rng), rng=rng)
        times.append(time.perf_counter() - started)
    return {"train_round_local_vector_and_noise_s": float(np.median(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    per_node = args.customers // args.nodes
    job = spec(args.rounds, per_node)
    out: dict[str, Any] = {
        "customers": per_node * args.nodes,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "load_1min_at_start": os.getloadavg()[0]},
    }
    with tempfile.TemporaryDirectory(prefix="tessera-churn-scale-") as tmp:
        work = Path(tmp)
        fed = Federation(work, args.nodes, rows=5, stage_timeout=600.0, seed=1)
        data = {}
        started = time.perf_counter()
        for i, name in enumerate(fed.names):
            data[name] = write_csv(work / "nodes" / name / "customers.csv", per_node, seed=i)
        out["write_csv_s"] = time.perf_counter() - started
        try:
            address = fed.start(timeout=120.0)
            with AnalystClient.from_pki(address, fed.pki, ANALYST) as client:
                deadline = time.monotonic() + 120
                while {n.node_id for n in client.nodes() if n.online} < set(fed.names):
                    if time.monotonic() > deadline:
                        raise SystemExit("nodes did not enrol")
                    time.sleep(0.2)
                started = time.perf_counter()
                job_id = client.submit(job)
                events = list(client.watch(job_id, timeout_s=args.timeout))
                wall = time.perf_counter() - started
                doc = client.result_document(job_id)
        finally:
            out["had_to_kill"] = fed.close()
    out["status"] = doc["status"]
    out["error"] = doc.get("error")
    out["wall_s"] = wall
    rounds_done = len((doc.get("result") or {}).get("rounds") or [])
    out["rounds_released"] = rounds_done
    out["per_round_s"] = wall / rounds_done if rounds_done else None
    # Stage seconds per round from the events; sum by stage over the whole job.
    by_round: dict[int, list[Any]] = {}
    for event in events:
        by_round.setdefault(int(event.round), []).append(event)
    totals: dict[str, float] = {}
    first: dict[str, float] = {}
    for r, evs in sorted(by_round.items()):
        for stage, sec in stage_seconds(evs).items():
            totals[stage] = totals.get(stage, 0.0) + sec
            if r == 1:
                first[stage] = sec
    out["stage_seconds_total"] = {k: round(v, 3) for k, v in totals.items()}
    # One middle round's events, as offsets from its first: what the stage totals are made of.
    middle = by_round.get(max(2, len(by_round) // 2), [])
    if middle:
        t0 = middle[0].at.seconds + middle[0].at.nanos / 1e9
        out["middle_round_events"] = [
            [round(e.at.seconds + e.at.nanos / 1e9 - t0, 3), e.message] for e in middle
        ]
    out["round1_stage_seconds"] = first
    out["auc"] = ((doc.get("result") or {}).get("evaluation") or {}).get("auc")
    out |= node_compute(job, data[fed.names[0]], args.nodes)
    out["machine"]["load_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
