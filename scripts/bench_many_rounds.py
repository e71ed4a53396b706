"""Jobs of many rounds over real node processes: per-round overhead, and a node killed mid-job.

A coordinator and ``--nodes`` `tessera node serve` processes on loopback (dev PKI, real mTLS), as
``bench_rounds.py`` starts them. Two measurements, each ``--runs`` times, medians reported:

* ``chained``: one ``mean_descent`` job of ``--rounds`` rounds whose vector has ``--length``
  values (``length/2`` public groups), timed from submit to result — beside the same work as
  ``--rounds`` separate one-round ``mean`` jobs over the same groups (same vector length), run one
  after the other. ``per_round_seconds`` is the chained job's time divided by its rounds.
* ``kill``: one job of ``--kill-rounds`` rounds in which one node process is SIGKILLed when round
  ``--kill-at`` starts; the job must finish with the others and report the node out of the job.

Progress goes to stderr, one JSON document to stdout. Not run by pytest.

    .venv/bin/python scripts/bench_many_rounds.py --nodes 4 --rounds 30 --length 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rounds import Federation

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo import ANALYST, _wait_enrolled
from tessera.core.types import JobSpec

EPSILON, DELTA = 0.5, 1e-7


def log(message: str) -> None:
    print(f"[bench_many_rounds {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _groups(length: int) -> tuple[str, ...]:
    return tuple(f"g{i:05d}" for i in range(length // 2 - 1))  # plus 'other': length/2 groups


def _spec(analysis: str, length: int, **params: Any) -> JobSpec:
    base: dict[str, Any] = {
        "field": "monthly_spend",
        "lower": 0.0,
        "upper": 1000.0,
        "group_by": "region",
        "groups": _groups(length),
        "max_customers": 100_000,
    }
    return JobSpec(
        analysis=analysis,
        dataset="customers",
        purpose="research",
        epsilon=EPSILON,
        delta=DELTA,
        params=base | params,
    )


def _run(client: AnalystClient, spec: JobSpec, timeout: float = 600) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    job_id = client.submit(spec)
    list(client.watch(job_id, timeout_s=timeout))
    doc = client.result_document(job_id)
    return time.perf_counter() - started, doc


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chained(client: AnalystClient, fed: Federation, *, rounds: int, length: int) -> dict[str, Any]:
    pids = {p.name: p.process.pid for p in fed.procs}
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    seconds, doc = _run(client, _spec("mean_descent", length, rounds=rounds))
    cpu_ms = {name: 1000 * (_cpu_seconds(pid) - before[name]) / rounds for name, pid in pids.items()}
    separate_started = time.perf_counter()
    statuses = []
    for _ in range(rounds):
        _, one = _run(client, _spec("mean", length))
        statuses.append(one["status"])
    separate = time.perf_counter() - separate_started
    result = doc.get("result") or {}
    return {
        "status": doc["status"],
        "rounds_run": result.get("rounds_run"),
        "job_seconds": seconds,
        "per_round_seconds": seconds / rounds,
        # Where a round's time goes: CPU milliseconds per round of the coordinator and of each node.
        "coordinator_cpu_ms_per_round": round(cpu_ms.pop("coordinator"), 1),
        "node_cpu_ms_per_round": {name: round(ms, 1) for name, ms in sorted(cpu_ms.items())},
        "separate_jobs_seconds": separate,
        "separate_per_job_seconds": separate / rounds,
        "separate_all_succeeded": all(s == "succeeded" for s in statuses),
        "chained_over_separate": seconds / separate,
    }


def kill_mid_job(
    client: AnalystClient, fed: Federation, *, rounds: int, kill_at: int, length: int
) -> dict[str, Any]:
    victim = fed.names[-1]
    spec = _spec("mean_descent", length, rounds=rounds, max_dropouts=1)
    started = time.perf_counter()
    job_id = client.submit(spec)
    killed_at = None
    for event in client.watch(job_id, timeout_s=600):
        if killed_at is None and event.message.startswith(f"round {kill_at} of {rounds}"):
            os.kill(fed.node(victim).process.pid, signal.SIGKILL)
            killed_at = time.perf_counter() - started
            log(f"killed {victim} at round {kill_at}")
    doc = client.result_document(job_id)
    result = doc.get("result") or {}
    sizes = [len(r["survivors"]) for r in result.get("rounds", [])]
    return {
        "status": doc["status"],
        "error": doc["error"],
        "victim": victim,
        "killed_after_seconds": killed_at,
        "job_seconds": time.perf_counter() - started,
        "rounds_run": result.get("rounds_run"),
        "out_of_job": result.get("out_of_job"),
        "survivors_first_last": [sizes[0], sizes[-1]] if sizes else None,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kill-rounds", type=int, default=100)
    parser.add_argument("--kill-at", type=int, default=40)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--stage-timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.length < 4 or args.length % 2:
        parser.error("--length must be an even number of at least 4")
    load_start = list(os.getloadavg())  # other work on the machine shows here
    with tempfile.TemporaryDirectory(prefix="tessera-bench-many-") as tmp:
        fed = Federation(Path(tmp), args.nodes, rows=args.rows, stage_timeout=args.stage_timeout, seed=11)
        try:
            address = fed.start(timeout=60)
            with AnalystClient.from_pki(address, fed.pki, ANALYST) as client:
                _wait_enrolled(client, fed.names, fed.procs, 60)
                log("warm-up job")
                _run(client, _spec("mean", args.length))
                runs = []
                for run in range(args.runs):
                    log(f"chained run {run + 1}/{args.runs}")
                    runs.append(chained(client, fed, rounds=args.rounds, length=args.length))
                log("kill run")
                kill = kill_mid_job(
                    client, fed, rounds=args.kill_rounds, kill_at=args.kill_at, length=args.length
                )
        finally:
            fed.close()
    doc = {
        "benchmark": "many_rounds",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "nodes": args.nodes,
        "rounds": args.rounds,
        "length": args.length,
        "runs": runs,
        "median": {
            key: _median(runs, key)
            for key in (
                "job_seconds",
                "per_round_seconds",
                "separate_jobs_seconds",
                "chained_over_separate",
                "coordinator_cpu_ms_per_round",
            )
        },
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "target": {"per_round_seconds_at_most": 0.1, "job_seconds_at_most": 3.0},
        "kill": kill,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
