"""Cost of the consistency check per round, and of whole rounds of a many-round epoch; prints JSON.

Real code throughout (``SecAggClient`` / ``SecAggServer`` through the in-memory harness, ECDSA
P-256 certificate keys), one process, no transport. For n = 10 and n = 100 nodes (threshold
n - 1, the coordinator's default; complete graph at 10, the nodes' own SecAgg+ graph at 100), each
timed round of an epoch measures:

  node_sign_ms          SecAggClient.consistency for one node: checks, payload, one ECDSA sign
  node_verify_ms        consistency.verify_quorum for one node: all n signatures (>= t needed)
  node_unmask_ms        SecAggClient.unmask for one node: the verification plus share release
                        and the next round's seed shares (Shamir split, AES-GCM per holder)
  coordinator_collect_ms  SecAggServer.receive_consistency for every survivor (each signature
                        verified on arrival) plus close_consistency

Per-node figures are medians over nodes and rounds; coordinator figures medians over rounds.
Then a 30-round epoch of 4 nodes with 1000-value vectors (threshold 3): the kernel time of one
later round (MASKED_INPUT -> CONSISTENCY_CHECK -> UNMASK, all four nodes and the coordinator,
summed since they share this process), median and total over rounds 2..30.

    .venv/bin/python scripts/bench_consistency.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from tessera.core.secagg import SecurityParams, consistency
from tessera.core.secagg.testing import EpochHarness, wire

T = TypeVar("T")
POLICY = SecurityParams(min_participants=3, collusion_tolerance=1)


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def _ms(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def consistency_cost(n: int, rounds: int, seed: int) -> dict[str, float | int]:
    nodes = [f"node{i:03d}" for i in range(n)]
    t = n - 1
    graph = POLICY.graph(nodes, threshold=t, seed=bytes(range(32))) if n >= 20 else None
    rng = np.random.default_rng(seed)
    h = EpochHarness(nodes, threshold=t, rng=rng, length=16, graph=graph, security=POLICY)
    forwarded = h.share(h.advertise())
    sign, verify, unmask, collect = [], [], [], []
    clock = time.perf_counter
    for r in range(rounds):
        check = h.mask(forwarded, h.vectors())
        signed = {}
        for v in check.survivors:
            t0 = clock()
            signed[v] = h.clients[v].consistency(check)
            sign.append((clock() - t0) * 1000)
        t0 = clock()
        for v in check.survivors:
            h.server.receive_consistency(signed[v], peer=v)
        request = h.server.close_consistency(next_round=r + 1 < rounds)
        collect.append((clock() - t0) * 1000)
        payload = consistency.payload(
            h.config, round_no=h.server.round_no, active=h.server.active, survivors=check.survivors
        )
        t0 = clock()
        consistency.verify_quorum(
            payload, request.signatures, eligible=frozenset(check.survivors), peer_keys=h.certs, threshold=t
        )
        verify.append((clock() - t0) * 1000)
        for v in h.server.signers:
            t0 = clock()
            response = h.clients[v].unmask(request)
            unmask.append((clock() - t0) * 1000)
            h.server.receive_unmask(response, peer=v)
        forwarded = h.server.finish().forward
    return {
        "nodes": n,
        "threshold": t,
        "degree": h.config.mask_graph.degree,
        "signatures_per_round": n,
        "node_sign_ms": _ms(sign),
        "node_verify_ms": _ms(verify),
        "node_unmask_ms": _ms(unmask),
        "coordinator_collect_ms": _ms(collect),
    }


def many_rounds(rounds: int, seed: int) -> dict[str, float | int]:
    nodes = [f"node{i}" for i in range(4)]
    rng = np.random.default_rng(seed)
    h = EpochHarness(nodes, threshold=3, rng=rng, length=1000, security=POLICY)
    first, forwarded = _timed(lambda: h.share(h.advertise()))
    per_round, consistency_part = [], []
    for r in range(rounds):
        vectors = h.vectors()
        start = time.perf_counter()
        check = h.mask(forwarded, vectors)
        c0 = time.perf_counter()
        request = h.sign(check, next_round=r + 1 < rounds)
        c1 = time.perf_counter()
        outcome = h.unmask(request)
        per_round.append((time.perf_counter() - start) * 1000)
        consistency_part.append((c1 - c0) * 1000)
        assert outcome.result.total.tolist() == h.expected(vectors, nodes)
        forwarded = {v: wire(f) for v, f in outcome.forward.items()}
    later = per_round[1:]
    return {
        "nodes": 4,
        "length": 1000,
        "rounds": rounds,
        "key_setup_ms": round(first, 3),
        "first_round_ms": round(per_round[0], 3),
        "later_round_median_ms": _ms(later),
        "later_rounds_total_ms": round(sum(later), 3),
        "consistency_stage_median_ms": _ms(consistency_part[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per size (median)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    out = {
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "consistency": [consistency_cost(n, args.rounds, args.seed) for n in (10, 100)],
        "epoch_30_rounds_4_nodes": many_rounds(30, args.seed),
        "target": "per-round overhead of a 30-round job, 4 nodes, 1000 values: well under 100 ms in total",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
