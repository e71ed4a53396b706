#!/usr/bin/env python3
"""Soak: DP jobs submitted without pause for ``--duration`` seconds while nodes are killed and
restarted at random; prints one JSON document. On demand only (an hour by default), never in CI.

Built on ``load_harness.py`` (real coordinator process, real ``NodeAgent``s in worker processes,
real mTLS and secure aggregation). ``--jobs`` jobs are kept in flight (DP histograms and counts);
every ``--kill-every`` seconds (on average) one live node is killed (its agent stops: connection
closed, nothing more answered) and started again ``--down`` seconds later with the same ledgers.

What it checks, and reports as ``violations`` (empty is a pass):

* every job ends, ``succeeded`` or ``failed``/``cancelled`` with a reason (none left running);
* memory: the coordinator's RSS is sampled every ``--sample-every`` seconds; the slope over the
  second half of the run (MiB per hour) is reported, and growth beyond ``--max-growth-mib``
  between the first and last quarter's medians is a violation;
* budgets, from every node's own ledger at the end (after all nodes are back and the jobs' end
  notices delivered): no round charged twice to one reservation, no reservation left open.

    .venv/bin/python scripts/soak.py --duration 3600 --nodes 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_harness import (  # type: ignore[import-not-found]
    Harness,
    histogram_spec,
    log,
    parser,
    proc_stats,
    run,
)

TERMINAL = ("succeeded", "failed", "cancelled")


def _state(job: Any) -> str:
    from tessera.v1 import common_pb2

    return str(common_pb2.JobState.Name(job.state)).removeprefix("JOB_STATE_").lower()


def count_spec(max_dropouts: int) -> Any:
    from tessera.core.types import JobSpec

    return JobSpec(
        analysis="count",
        dataset="customers",
        purpose="research",
        epsilon=0.5,
        delta=1e-7,
        params={"max_dropouts": max_dropouts},
    )


def soak(h: Harness) -> dict[str, Any]:
    args = h.args
    rng = random.Random(args.seed)
    h.start_nodes()
    n = len(h.names)
    max_drop = max(1, min(args.max_dropouts, n - max(3, n // 2 + 1)))
    specs = [histogram_spec(args.length, max_dropouts=max_drop), count_spec(max_drop)]
    where = {name: conn for _, conn, names in h.workers for name in names}
    in_flight: dict[str, float] = {}
    ended: dict[str, dict[str, Any]] = {}
    down: dict[str, float] = {}  # node -> when it comes back
    kills = restarts = 0
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    next_kill = started + rng.expovariate(1 / args.kill_every)
    next_sample = started
    with h.analyst() as client:
        while time.monotonic() - started < args.duration or in_flight:
            now = time.monotonic()
            running = now - started < args.duration
            for job_id in list(in_flight):
                job = client.job(job_id)
                state = _state(job)
                if state in TERMINAL:
                    doc = client.result_document(job_id)
                    ended[job_id] = {
                        "state": state,
                        "reason": doc["error"] or job.status_detail,
                        "seconds": round(now - in_flight.pop(job_id), 2),
                    }
            while running and len(in_flight) < args.jobs:
                try:
                    in_flight[client.submit(rng.choice(specs))] = now
                except Exception as exc:  # refused at submit (e.g. too many nodes down): noted
                    ended[f"refused-{len(ended)}"] = {"state": "refused", "reason": str(exc)[:200]}
                    break
            if running and now >= next_kill:
                live = [x for x in h.names if x not in down]
                if len(down) < max_drop and live:
                    victim = rng.choice(live)
                    h.ask(where[victim], "kill", [victim])
                    down[victim] = now + rng.uniform(1.0, args.down)
                    kills += 1
                next_kill = now + rng.expovariate(1 / args.kill_every)
            for name, back in list(down.items()):
                if now >= back or not running:
                    h.ask(where[name], "restart", [name])
                    del down[name]
                    restarts += 1
            if now >= next_sample:
                rss.append((now - started, proc_stats(h.pid)["rss_mib"]))
                next_sample = now + args.sample_every
                log(
                    f"t={now - started:.0f}s jobs ended {len(ended)} in flight {len(in_flight)} "
                    f"kills {kills} rss {rss[-1][1]:.0f} MiB"
                )
            time.sleep(0.5)  # the soak's own pace of polling, not a synchronisation
    h.wait_enrolled(n)
    # Let end notices reach every node (they were re-sent when it reconnected), then read ledgers.
    deadline = time.monotonic() + args.settle
    while True:
        ledgers = {k: v for doc in h.ask_all("ledgers") for k, v in doc.items()}
        if not any(v["open"] for v in ledgers.values()) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    return report(args, ended=ended, kills=kills, restarts=restarts, rss=rss, ledgers=ledgers)


def report(
    args: argparse.Namespace,
    *,
    ended: dict[str, dict[str, Any]],
    kills: int,
    restarts: int,
    rss: list[tuple[float, float]],
    ledgers: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    violations: list[str] = []
    states = Counter(e["state"] for e in ended.values())
    for job_id, e in ended.items():
        if e["state"] in ("failed", "cancelled") and not e["reason"]:
            violations.append(f"job {job_id} ended {e['state']} without a reason")
    reasons = Counter(e["reason"][:100] for e in ended.values() if e["state"] != "succeeded")
    quarter = max(1, len(rss) // 4)
    first = statistics.median(v for _, v in rss[:quarter]) if rss else 0.0
    last = statistics.median(v for _, v in rss[-quarter:]) if rss else 0.0
    half = rss[len(rss) // 2 :]
    slope = 0.0
    if len(half) >= 2:
        xs, ys = [t for t, _ in half], [v for _, v in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600 if den else 0.0
    if last - first > args.max_growth_mib:
        violations.append(f"coordinator RSS grew {last - first:.0f} MiB (first to last quarter)")
    open_left = {k: v["open"] for k, v in ledgers.items() if v["open"]}
    twice = {k: v["charged_twice"] for k, v in ledgers.items() if v["charged_twice"]}
    if open_left:
        violations.append(f"reservations left open on {len(open_left)} node(s)")
    if twice:
        violations.append(f"rounds charged twice on {len(twice)} node(s)")
    return {
        "duration_seconds": args.duration,
        "jobs": {"ended": len(ended), "by_state": dict(states), "not_succeeded_reasons": dict(reasons)},
        "kills": kills,
        "restarts": restarts,
        "coordinator_rss_mib": {
            "first_quarter_median": round(first, 1),
            "last_quarter_median": round(last, 1),
            "max": round(max((v for _, v in rss), default=0.0), 1),
            "slope_second_half_mib_per_hour": round(slope, 1),
            "samples": [(round(t), round(v, 1)) for t, v in rss],
        },
        "ledgers": {
            "nodes": len(ledgers),
            "reservations": sum(v["reservations"] for v in ledgers.values()),
            "open_at_end": open_left,
            "charged_twice": twice,
        },
        "violations": violations,
    }


def main() -> None:
    p = parser()
    p.description = (__doc__ or "").split("\n\n")[0]
    p.set_defaults(scenario="soak", nodes=20, workers=2, length=1000, heartbeat_ms=1000, stage_timeout=30.0)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--jobs", type=int, default=2, help="jobs kept in flight")
    p.add_argument("--kill-every", type=float, default=20.0, help="mean seconds between kills")
    p.add_argument("--down", type=float, default=10.0, help="longest seconds a killed node stays down")
    p.add_argument("--max-dropouts", type=int, default=3)
    p.add_argument("--sample-every", type=float, default=30.0)
    p.add_argument("--max-growth-mib", type=float, default=64.0)
    p.add_argument("--settle", type=float, default=120.0, help="seconds to wait for end notices")
    p.add_argument("--seed", type=int, default=20261129)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    doc = {
        "benchmark": "soak",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "nodes": args.nodes,
        **run(args, soak),
    }
    doc["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
