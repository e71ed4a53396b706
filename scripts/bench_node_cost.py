#!/usr/bin/env python3
"""A node's cost for one round's private vector: clip + quantise + noise share + mask; prints JSON.

The vector (``--size`` float64 values, default 1,000,000) is one contribution row, e.g. a model
update. Each run times, with Tessera's own functions and in the order a node's runner calls them:

  secure_generator   dp.secure_generator(): the per-round generator for rounding and noise
  clip               dp.clip_l2 on the (1, size) row (finite check, norm, rescale)
  quantise           dp.quantise_sum: stochastic rounding at dp.fixed_point_scale(value_bits)
  noise              dp.distributed_gaussian_share: N_Z(0, sigma^2/t), sigma from
                     dp.distributed_gaussian_sigma for (epsilon, delta) and t survivors
  encode             dp.encode into Z_2^bits, bits from dp.choose_bits (wrap probability <= 2^-40)
  mask               SecAggClient.masked_input with --peers peers (complete graph): share
                     decryption, X25519 + HKDF per peer, AES-256-CTR self mask + pairwise masks,
                     modular adds and the reduction mod 2^bits

The mask floor is measured apart: the AES-CTR keystreams alone, the numpy adds alone, and
prg.add_keystreams (keystreams + adds, the least the mask step can cost). Medians over ``--runs``
(>= 7) runs after one warm-up; the round set-up (keys, Shamir shares) is not timed. Data and
secure-aggregation randomness are seeded for repeatability; rounding and noise use
secure_generator() as product code does. Not run by pytest. Usage:
``.venv/bin/python scripts/bench_node_cost.py [--size N] [--peers P] [--runs R]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cryptography
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tessera.core import dp
from tessera.core.secagg import prg
from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.messages import ForwardedShares
from tessera.core.secagg.testing import EpochHarness

TARGET_TOTAL_MS = 150.0
EPSILON, DELTA = 1.0, 1e-6
CLIP_L2 = 1.0
VALUE_BITS = 16
SEED = 20261123
# Same slice as prg.add_keystreams, so the keystream-only floor sees the same cache behaviour.
_SLICE = 1 << 16


def machine() -> dict[str, object]:
    """What the figures were measured on (they mean little without it)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "cpu": model or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_flags": sorted(f for f in flags if f in {"aes", "vaes", "avx2", "avx512f"}),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def median_ms(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``fn()`` over ``runs`` runs after one untimed warm-up, in ms."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return ms(statistics.median(times))


def node_round(
    *, peers: int, bits: int, length: int, rng: np.random.Generator
) -> tuple[SecAggClient, ForwardedShares]:
    """Run a complete-graph round of ``peers + 1`` nodes up to MASKED_INPUT; node00's side of it."""
    nodes = [f"node{i:02d}" for i in range(peers + 1)]
    harness = EpochHarness(nodes, threshold=len(nodes) // 2 + 1, rng=rng, bits=bits, length=length)
    return harness.clients["node00"], harness.share(harness.advertise())["node00"]


def plan_round(*, size: int, peers: int) -> dict[str, float | int]:
    """The public parameters a planner fixes before the round (not part of the node's cost)."""
    survivors_t = (peers + 1) // 2 + 1  # the secure-aggregation threshold: noise sized for it
    scale = dp.fixed_point_scale(clip_bound=CLIP_L2, value_bits=VALUE_BITS)
    row = dp.Sensitivity(l1=CLIP_L2 * math.sqrt(size), l2=CLIP_L2, linf=CLIP_L2)
    sens = dp.integer_sensitivity(row, scale=scale, dim=size)
    sigma = dp.distributed_gaussian_sigma(
        epsilon=EPSILON, delta=DELTA, l1=sens.l1, l2=sens.l2, survivors_t=survivors_t, dim=size
    )
    plan = dp.NoisePlan(
        mechanism=dp.Mechanism.DISCRETE_GAUSSIAN,
        survivors_t=survivors_t,
        n_nodes=peers + 1,
        sigma_total=sigma,
    )
    cap = dp.max_abs_node_for(linf_bound=CLIP_L2, scale=scale, max_customers=1)
    width = dp.choose_bits(plan=plan, max_abs_node=cap, dim=size)
    return {"survivors_t": survivors_t, "scale": scale, "sigma_total": sigma, "bits": width.bits}


def pipeline_once(
    x: np.ndarray, params: dict[str, float | int], client: SecAggClient, fwd: ForwardedShares
) -> tuple[dict[str, float], np.ndarray]:
    """One node's full path for one round: wall seconds per step (and ``cpu_total``, process CPU
    seconds of the whole path) and the noise that was added."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    cpu_start = time.process_time()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        times[name] = now - start
        start = now

    gen = dp.secure_generator()
    lap("secure_generator")
    clipped = dp.clip_l2(x.reshape(1, -1), bound=CLIP_L2)
    lap("clip")
    quantised = dp.quantise_sum(clipped, scale=float(params["scale"]), rng=gen)
    lap("quantise")
    noisy = dp.distributed_gaussian_share(
        quantised.values,
        sigma_total=float(params["sigma_total"]),
        survivors_t=int(params["survivors_t"]),
        rng=gen,
    )
    lap("noise")
    encoded = dp.encode(noisy, bits=int(params["bits"]))
    lap("encode")
    client.masked_input(fwd, encoded, 1)
    lap("mask")
    # CPU time of the whole path: unlike wall time, barely moved by other jobs on a shared machine.
    times["cpu_total"] = time.process_time() - cpu_start
    return times, noisy - quantised.values


def mask_floor(size: int, peers: int, runs: int, rng: np.random.Generator) -> dict[str, float]:
    """AES-CTR keystreams and numpy adds for 1 self + ``peers`` pairwise masks on uint32 words."""
    seeds = [(rng.bytes(prg.SEED_BYTES), 1 if i % 2 else -1) for i in range(peers + 1)]
    x = rng.integers(0, 2**32, size=size, dtype=np.uint64).astype(np.uint32)
    streams = [prg.expand(seed, size, dtype=np.uint32) for seed, _ in seeds]

    def keystreams_only() -> None:
        zeros = np.zeros(4 * _SLICE, dtype=np.uint8).data
        out = np.empty(4 * _SLICE + 15, dtype=np.uint8)
        contexts = [Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor() for seed, _ in seeds]
        for begin in range(0, size, _SLICE):
            nbytes = 4 * (min(begin + _SLICE, size) - begin)
            for ctx in contexts:
                ctx.update_into(zeros[:nbytes], out.data)

    def adds_only() -> None:
        acc = x.copy()
        for words in streams:
            np.add(acc, words, out=acc)

    return {
        "aes_ctr_keystreams_ms": median_ms(keystreams_only, runs),
        "numpy_modular_adds_ms": median_ms(adds_only, runs),
        "floor_add_keystreams_ms": median_ms(lambda: prg.add_keystreams(x.copy(), seeds), runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="float values in the vector")
    parser.add_argument("--peers", type=int, default=10, help="pairwise masks (complete graph of peers+1)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (median, >= 7)")
    args = parser.parse_args()
    if args.runs < 7:
        parser.error("use at least 7 runs so the medians mean something")
    if args.peers < 2 or args.size < 1:
        parser.error("a round needs at least 2 peers and a non-empty vector")
    rng = np.random.default_rng(SEED)
    x = rng.normal(0.0, 1.0, size=args.size)  # norm ~ sqrt(size): the L2 clip really rescales
    params = plan_round(size=args.size, peers=args.peers)

    per_step: dict[str, list[float]] = {}
    totals: list[float] = []
    cpu_totals: list[float] = []
    noise_sd: list[float] = []
    for run in range(args.runs + 1):  # run 0 is the warm-up
        client, fwd = node_round(peers=args.peers, bits=int(params["bits"]), length=args.size, rng=rng)
        times, noise = pipeline_once(x, params, client, fwd)
        if run == 0:
            continue
        cpu_totals.append(times.pop("cpu_total"))
        for name, seconds in times.items():
            per_step.setdefault(name, []).append(seconds)
        totals.append(sum(times.values()))
        noise_sd.append(float(np.std(noise)))

    steps = {f"{name}_ms": ms(statistics.median(values)) for name, values in per_step.items()}
    total = ms(statistics.median(totals))
    expected_sd = float(params["sigma_total"]) / math.sqrt(int(params["survivors_t"]))
    floor = mask_floor(args.size, args.peers, args.runs, rng)
    report = {
        "machine": machine(),
        "setup": {
            "size": args.size,
            "peers": args.peers,
            "graph": "complete",
            "runs": args.runs,
            "noise": "discrete_gaussian_share",
            "noise_generator": "dp.secure_generator() (AES-256-CTR keystream, 256-bit os.urandom key)",
            "epsilon": EPSILON,
            "delta": DELTA,
            "clip_l2_bound": CLIP_L2,
            "value_bits": VALUE_BITS,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in params.items()},
        },
        "steps_median_ms": steps,
        "total_median_ms": total,
        "total_cpu_median_ms": ms(statistics.median(cpu_totals)),
        "total_min_ms": ms(min(totals)),
        "mask_floor_median_ms": floor,
        "mask_over_floor_ms": round(steps["mask_ms"] - floor["floor_add_keystreams_ms"], 2),
        # The sampler's sd is sigma/sqrt(t) to within 1e-12; the estimate from n draws has a
        # relative standard error of about 1/sqrt(2n) (7e-4 at a million values).
        "check_noise_share_sd": {
            "measured_median": round(statistics.median(noise_sd), 1),
            "expected": round(expected_sd, 1),
            "relative_error": round(statistics.median(noise_sd) / expected_sd - 1, 5),
        },
        "target_total_ms": TARGET_TOTAL_MS,
        "target_met": total <= TARGET_TOTAL_MS,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
