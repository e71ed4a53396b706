#!/usr/bin/env python3
"""Benchmark of the secure-aggregation kernel; prints JSON (medians over --runs runs, in ms).

node_mask: one node masks 1,000,000 uint32 values with 10 peers (complete graph of 11 nodes):
  keystream_ms   AES-256-CTR keystreams alone (1 self mask + 10 pairwise), sliced as in the kernel
  add_ms         the 11 numpy modular adds alone, on precomputed keystreams
  floor_ms       prg.add_keystreams: keystreams + adds, the masking part proper
  unsliced_...   the same with whole-vector keystreams (what slicing for the cache saves)
  total_ms       SecAggClient.masked_input: + share decryption, 10 X25519/HKDF, checks, copy
server_unmask: SecAggServer.finish for 10 nodes with 1 dropout (Shamir rebuilds, 9 self-mask and
  9 pairwise keystreams removed). Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from tessera.core.secagg import prg
from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.messages import ForwardedShares
from tessera.core.secagg.protocol import EpochConfig
from tessera.core.secagg.server import SecAggServer
from tessera.core.secagg.testing import EpochHarness

T = TypeVar("T")


def _median_ms(fn: Callable[[T], object], runs: int, setup: Callable[[], T]) -> float:
    """Median wall time of ``fn(setup())`` in ms; the setup is not timed."""
    times = []
    for _ in range(runs):
        state = setup()
        start = time.perf_counter()
        fn(state)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def _nothing() -> None:
    return None


def _round(
    n: int, length: int, dtype_bits: int, rng: np.random.Generator
) -> tuple[EpochConfig, dict[str, SecAggClient], SecAggServer, dict[str, ForwardedShares]]:
    nodes = [f"node{i:02d}" for i in range(n)]
    harness = EpochHarness(nodes, threshold=n // 2 + 1, rng=rng, bits=dtype_bits, length=length)
    forwarded = harness.share(harness.advertise())
    return harness.config, harness.clients, harness.server, forwarded


def bench_node(length: int, peers: int, runs: int, rng: np.random.Generator) -> dict[str, float]:
    seeds = [(rng.bytes(32), 1 if i % 2 else -1) for i in range(peers + 1)]
    x = rng.integers(0, 2**32, size=length, dtype=np.uint64).astype(np.uint32)
    streams = [prg.expand(s, length, dtype=np.uint32) for s, _ in seeds]

    def keystream_only(_: None) -> None:
        zeros = np.zeros(4 * 65536, dtype=np.uint8).data
        out = np.empty(4 * 65536 + 15, dtype=np.uint8)
        ctxs = [prg._encryptor(s) for s, _ in seeds]
        for start in range(0, length, 65536):
            nbytes = 4 * (min(start + 65536, length) - start)
            for ctx in ctxs:
                ctx.update_into(zeros[:nbytes], out.data)

    def add_only(_: None) -> None:
        acc = x.copy()
        for w in streams:
            np.add(acc, w, out=acc)

    def naive(_: None) -> None:
        acc = x.copy()
        for seed, _sign in seeds:
            np.add(acc, prg.expand(seed, length, dtype=np.uint32), out=acc)

    def floor(_: None) -> None:
        prg.add_keystreams(x.copy(), seeds)

    def setup() -> tuple[SecAggClient, ForwardedShares]:
        _, clients, _, fwd = _round(peers + 1, length, 32, rng)
        return clients["node00"], fwd["node00"]

    return {
        "keystream_ms": _median_ms(keystream_only, runs, _nothing),
        "add_ms": _median_ms(add_only, runs, _nothing),
        "floor_ms": _median_ms(floor, runs, _nothing),
        "unsliced_expand_then_add_ms": _median_ms(naive, runs, _nothing),
        "total_ms": _median_ms(lambda s: s[0].masked_input(s[1], x, 1), runs, setup),
    }


def bench_server(length: int, n: int, runs: int, rng: np.random.Generator) -> dict[str, float]:
    x = {
        f"node{i:02d}": rng.integers(0, 2**32, size=length, dtype=np.uint64).astype(np.uint32)
        for i in range(n)
    }

    def setup() -> SecAggServer:
        _, clients, server, fwd = _round(n, length, 32, rng)
        for v in list(clients)[1:]:  # node00 drops after sharing its keys
            server.receive_masked_input(clients[v].masked_input(fwd[v], x[v], 1), peer=v)
        check = server.close_masked_inputs()
        for v in check.survivors:
            server.receive_consistency(clients[v].consistency(check), peer=v)
        request = server.close_consistency()
        for v in request.survivors:
            server.receive_unmask(clients[v].unmask(request), peer=v)
        return server

    return {"finish_ms": _median_ms(lambda s: s.finish(), runs, setup)}


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f in {"aes", "vaes", "avx2", "avx512f"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(20261123)
    report = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpu_flags": _cpu_flags(),
        },
        "length": args.length,
        "runs": args.runs,
        "node_mask_uint32_10_peers": bench_node(args.length, 10, args.runs, rng),
        "server_unmask_10_nodes_1_dropout": bench_server(args.length, 10, args.runs, rng),
        "target_masking_ms": 150,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
