"""Overlap (PSI cardinality) cost, printed as JSON.

Two measurements, both with the real code (libsodium ristretto255, a pool of ``--workers``
processes for scalar multiplications, DP dummies, 4 MiB frames):

* ``protocol``: every pair of ``--partners`` parties of ``--size`` identifiers (half of each set
  shared by all), one party at a time in this process, so each party's seconds are its own work
  with the whole machine, as on its own 2-core server. Bytes each party sends and receives.
  Plus the CPU microseconds per element of its three operations, and a linear projection of
  one party's time at 1M identifiers (what 2 idle cores would take).
* ``grpc`` (``--grpc``): the whole job end to end: a coordinator and one node agent per partner
  in this process (threads; their pools share the machine), real gRPC over mTLS on loopback, a
  dev PKI and CSV customers in a temporary folder; wall time from submit to result.

Run: .venv/bin/python scripts/bench_overlap.py [--size 100000] [--partners 2] [--workers 2]
     [--runs 3] [--grpc]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tessera.core.psi import group
from tessera.core.psi.noise import job_rho, plan_dummies
from tessera.core.psi.parallel import Blinder
from tessera.core.psi.protocol import PairSide, count_matches
from tessera.core.psi.wire import FrameKind, split


def _emails(party: int, size: int) -> list[str]:
    shared = size // 2
    return [f"shared{i}@example.com" for i in range(shared)] + [
        f"own{party}-{i}@example.com" for i in range(size - shared)
    ]


def _wire_bytes(kind: FrameKind, elements: bytes, public: bytes) -> int:
    return sum(len(f.encode()) for f in split(kind, 0, elements, public=public))


def _cpu_seconds(blinder: Blinder) -> float:
    """CPU seconds (user + system) of this process and the pool's workers so far, from /proc:
    what another process's load cannot inflate, unlike wall time on a shared machine."""
    pids = [os.getpid()]
    pool = blinder._pool
    if pool is not None:
        pids += list(getattr(pool, "_processes", {}) or {})
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def protocol(size: int, partners: int, workers: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    sets = {p: _emails(p, size) for p in range(partners)}
    plan = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=partners - 1, delta=1e-6)
    seconds = dict.fromkeys(range(partners), 0.0)
    cpu = dict.fromkeys(range(partners), 0.0)
    sent = dict.fromkeys(range(partners), 0)
    received = dict.fromkeys(range(partners), 0)
    counts, count_s = {}, 0.0
    wall = time.perf_counter()
    with Blinder(workers) as blinder:
        blinder.blind(group.random_scalar(), group.random_elements(40_000))  # start the pool
        wall = time.perf_counter()
        hashed: dict[int, bytes | None] = dict.fromkeys(range(partners))
        if partners > 2:  # as the node does: hash once per job, blind once per pair
            for p in range(partners):
                t, c = time.perf_counter(), _cpu_seconds(blinder)
                hashed[p] = blinder.hash("email", sets[p])
                seconds[p] += time.perf_counter() - t
                cpu[p] += _cpu_seconds(blinder) - c
        for a, b in itertools.combinations(range(partners), 2):
            sides, lists, final = {}, {}, {}
            for p in (a, b):
                t, c = time.perf_counter(), _cpu_seconds(blinder)
                sides[p], extra = PairSide.new(plan, rng=rng)
                lists[p] = sides[p].blinded("email", sets[p], extra=extra, blinder=blinder, hashed=hashed[p])
                seconds[p] += time.perf_counter() - t
                cpu[p] += _cpu_seconds(blinder) - c
                sent[p] += _wire_bytes(FrameKind.BLINDED, lists[p], sides[p].public)
            for p, q in ((a, b), (b, a)):
                received[p] += _wire_bytes(FrameKind.BLINDED, lists[q], sides[q].public)
                t, c = time.perf_counter(), _cpu_seconds(blinder)
                final[p] = sides[p].reblinded(sides[q].public, lists[q], blinder=blinder)
                seconds[p] += time.perf_counter() - t
                cpu[p] += _cpu_seconds(blinder) - c
                sent[p] += _wire_bytes(FrameKind.REBLINDED, final[p], sides[p].public)
            t = time.perf_counter()
            counts[f"{a}-{b}"] = count_matches(final[a], final[b])
            count_s += time.perf_counter() - t
    return {
        "party_seconds": {str(p): round(s, 2) for p, s in seconds.items()},
        "party_cpu_seconds": {str(p): round(s, 2) for p, s in cpu.items()},
        "party_bytes_sent": {str(p): n for p, n in sent.items()},
        "party_bytes_received": {str(p): n for p, n in received.items()},
        "coordinator_count_seconds": round(count_s, 3),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "matches_with_dummies": counts,
        "true_shared": size // 2,
        "dummy_cap_T": plan.cap,
    }


def cpu_per_element(n: int = 4000) -> dict[str, float]:
    values = _emails(0, n)
    a = group.random_scalar()
    t = time.process_time()
    hashed = group.hash_and_blind(a, "email", values)
    hash_blind = time.process_time() - t
    t = time.process_time()
    group.blind(a, hashed)
    blind = time.process_time() - t
    return {"hash_and_blind_us": round(hash_blind / n * 1e6, 1), "blind_us": round(blind / n * 1e6, 1)}


def grpc_job(size: int, partners: int, workers: int) -> dict[str, Any]:
    import csv

    import yaml

    from tessera.cli.analyst_client import AnalystClient
    from tessera.client.agent import NodeAgent, NodeConfig
    from tessera.client.datasource import CsvDataSource
    from tessera.client.db import node_engine
    from tessera.client.outgoing import open_ledgers
    from tessera.core.pki import TlsFiles, init_ca, issue
    from tessera.core.policy import load_policy
    from tessera.core.types import JobSpec
    from tessera.server.app import Coordinator, CoordinatorConfig
    from tessera.server.store import open_store

    names = [f"p{i}" for i in range(partners)]
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init_ca(work / "pki", consortium="bench")
        issue(work / "pki", kind="coordinator", name="coordinator")
        issue(work / "pki", kind="analyst", name="analyst", role="analyst")
        store = open_store(f"sqlite:///{work / 'coordinator.db'}")
        config = CoordinatorConfig(
            listen="127.0.0.1:0",
            tls=TlsFiles.for_identity(work / "pki", "coordinator", "coordinator"),
            stage_timeout=timedelta(minutes=30),
            tick_seconds=0.5,
        )
        coordinator = Coordinator(config, store)
        address = f"127.0.0.1:{coordinator.start()}"
        agents, threads = [], []
        for i, name in enumerate(names):
            issue(work / "pki", kind="node", name=name)
            doc = yaml.safe_load((repo / "policies" / "bank.yaml").read_text())
            doc |= {"partner": name, "policy_id": name, "allowed_partners": ["*"]}
            doc["privacy"]["delta"] = 1e-6
            (work / f"{name}.yaml").write_text(yaml.safe_dump(doc))
            policy = load_policy(work / f"{name}.yaml")
            path = work / f"{name}.csv"
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["customer_id", "email"])
                writer.writerows([f"{name}-{k}", e] for k, e in enumerate(_emails(i, size)))
            engine = node_engine(f"sqlite:///{work / name}.db")
            agent = NodeAgent(
                NodeConfig(
                    node_id=name, coordinator=address, tls=TlsFiles.for_identity(work / "pki", "node", name)
                ),
                policy,
                CsvDataSource({"customers": path}, policy),
                open_ledgers(engine, policy),
            )
            agent.runner.overlap.blinder.workers = workers
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            agent.enrolled.wait(30)
            agents.append(agent)
            threads.append(thread)
        try:
            with AnalystClient.from_pki(address, work / "pki", "analyst") as client:
                start = time.perf_counter()
                job_id = client.submit(
                    JobSpec(analysis="overlap", purpose="research", epsilon=0.5, delta=1e-7, params={})
                )
                events = list(client.watch(job_id, timeout_s=3600))
                wall = time.perf_counter() - start
                doc = client.result_document(job_id)
        finally:
            for agent in agents:
                agent.runner.overlap.blinder.close()
                agent.stop()
            for thread in threads:
                thread.join(timeout=10)
            coordinator.stop(grace=1.0)
            store.close()
    result = doc.get("result") or {}
    return {
        "status": doc["status"],
        "error": doc.get("error", ""),
        "wall_seconds": round(wall, 2),
        "events": len(events),
        "pairs": result.get("pairs"),
        "bytes_received_by_coordinator": result.get("bytes_received"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--partners", type=int, default=2)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--grpc", action="store_true")
    args = parser.parse_args()
    doc: dict[str, Any] = {
        "size_per_party": args.size,
        "partners": args.partners,
        "workers": args.workers,
        "load_average_at_start": os.getloadavg(),
        "cpu_per_element": cpu_per_element(),
    }
    if args.grpc:
        runs = [grpc_job(args.size, args.partners, args.workers) for _ in range(args.runs)]
        doc["grpc_runs"] = runs
        doc["median_job_wall_seconds"] = statistics.median(r["wall_seconds"] for r in runs)
    else:
        runs = [protocol(args.size, args.partners, args.workers) for _ in range(args.runs)]
        slowest = [max(r["party_seconds"].values()) for r in runs]
        slowest_cpu = [max(r["party_cpu_seconds"].values()) for r in runs]
        per_pair = statistics.median(slowest) / (args.partners - 1)
        cpu = doc["cpu_per_element"]
        doc |= {
            "runs": runs,
            "median_slowest_party_seconds": statistics.median(slowest),
            "median_slowest_party_cpu_seconds": statistics.median(slowest_cpu),
            # What one party would take alone on 2 idle cores: its CPU seconds over 2 (the pool
            # splits the scalar multiplications evenly; the serial rest is a few per cent).
            "projected_party_seconds_1m_per_pair_from_measured_cpu_on_2_idle_cores": round(
                statistics.median(slowest_cpu) / 2 / (args.partners - 1) * 1_000_000 / args.size, 1
            ),
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            # Linear in the elements: one hash and two scalar multiplications each per pair.
            "projected_party_seconds_1m_per_pair_measured": round(per_pair * 1_000_000 / args.size, 1),
            "projected_party_seconds_1m_per_pair_from_cpu_on_2_idle_cores": round(
                (cpu["hash_and_blind_us"] + cpu["blind_us"]) * 1e6 / 1e6 / 2, 1
            ),
            "bytes_per_direction_1m": {
                "node_to_coordinator": 2 * 32 * 1_000_000,
                "coordinator_to_node": 32 * 1_000_000,
            },
        }
    doc["load_average_at_end"] = os.getloadavg()
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
