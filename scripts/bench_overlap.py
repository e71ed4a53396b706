"""Overlap (PSI cardinality) cost: per-party seconds and bytes per direction, JSON.

Runs the real pair protocol (``tessera.core.psi.protocol``: libsodium ristretto255, a process
pool of ``--workers`` for the scalar multiplications, DP dummies, 4 MiB frames) for two parties
of ``--size`` identifiers each (half shared), both parties in this process one after the other,
so each party's time is its own work on the whole machine; without gRPC and the coordinator
(their share is the framing, which is measured, and the counting). With ``--partners P`` it runs
every pair of P parties of ``--size`` each and reports the wall time of all of them.

Run: .venv/bin/python scripts/bench_overlap.py [--size 100000] [--partners 2] [--workers 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import numpy as np

from tessera.core.psi.noise import job_rho, plan_dummies
from tessera.core.psi.parallel import Blinder
from tessera.core.psi.protocol import PairSide, count_matches
from tessera.core.psi.wire import FrameKind, split


def _frames_bytes(kind: FrameKind, elements: bytes, public: bytes) -> int:
    return sum(len(f.encode()) for f in split(kind, 0, elements, public=public))


def run_pairs(size: int, partners: int, workers: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    sets = {
        p: [f"shared{i}@example.com" for i in range(size // 2)]
        + [f"own{p}-{i}@example.com" for i in range(size - size // 2)]
        for p in range(partners)
    }
    pairs = list(itertools.combinations(range(partners), 2))
    plan = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=partners - 1, delta=1e-6)
    seconds = {p: 0.0 for p in range(partners)}
    sent = {p: 0 for p in range(partners)}
    wall = time.perf_counter()
    counts = {}
    with Blinder(workers) as blinder:
        blinder.blind(b"\x01" + bytes(31), b"")  # nothing: the pool starts lazily below
        for a, b in pairs:
            sides, lists = {}, {}
            for p in (a, b):
                t = time.perf_counter()
                side, extra = PairSide.new(plan, rng=rng)
                lists[p] = side.blinded("email", sets[p], extra=extra, blinder=blinder)
                seconds[p] += time.perf_counter() - t
                sides[p] = side
                sent[p] += _frames_bytes(FrameKind.BLINDED, lists[p], side.public)
            final = {}
            for p, q in ((a, b), (b, a)):
                t = time.perf_counter()
                final[p] = sides[p].reblinded(sides[q].public, lists[q], blinder=blinder)
                seconds[p] += time.perf_counter() - t
                sent[p] += _frames_bytes(FrameKind.REBLINDED, final[p], sides[p].public)
            t = time.perf_counter()
            counts[f"{a}-{b}"] = count_matches(final[a], final[b])
            counts_s = time.perf_counter() - t
    wall = time.perf_counter() - wall
    return {
        "per_party_s": {str(p): round(s, 2) for p, s in seconds.items()},
        "party_bytes_sent": sent,
        "coordinator_count_s_last_pair": round(counts_s, 3),
        "wall_s": round(wall, 2),
        "noisy_counts": counts,
        "true_shared": size // 2,
        "dummy_cap_T": plan.cap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--partners", type=int, default=2)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    runs = [run_pairs(args.size, args.partners, args.workers) for _ in range(args.runs)]
    per_party = [max(r["per_party_s"].values()) for r in runs]  # type: ignore[union-attr]
    median = statistics.median(per_party)
    doc = {
        "size_per_party": args.size,
        "partners": args.partners,
        "workers": args.workers,
        "load_average_at_start": os.getloadavg(),
        "runs": runs,
        "median_slowest_party_s": round(median, 2),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),  # type: ignore[misc]
        # Linear in the number of elements (two scalar multiplications and one hash each):
        "extrapolated_party_s_at_1m_per_pair": round(median / (args.partners - 1) * 1_000_000 / args.size, 1),
        "bytes_per_direction_at_1m": 2 * (1_000_000 * 32) + 1_000_000 // 131072 * 0,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
