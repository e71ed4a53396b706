#!/usr/bin/env python3
"""Quantise + mask without noise: Tessera vs Flower's SecAgg+ client primitives; prints JSON.

Both sides take the same ``--size`` float64 vector (default 1,000,000) and ``--peers`` peers
(default 10), with Flower's SecAggPlusWorkflow defaults: clipping range 8, quantisation range
2^22, modulus 2^32; Tessera uses the same resolution (value_bits 22 at clip bound 8, about 2^18
units per value unit) and 32-bit words. Runs alternate between the two sides in one process.

  tessera  quantise: dp.clip_coordinates + dp.quantise_sum (stochastic rounding) + dp.encode
           mask:     prg.add_keystreams, AES-256-CTR self mask + pairwise masks, adds mod 2^32
  flower   quantise: quantization.quantize (clip, shift, stochastic rounding) + factor_combine
           mask:     secaggplus_utils.pseudo_rand_gen for the self mask and each pairwise mask,
                     parameters_addition / parameters_subtraction, parameters_mod
           (the order and arguments of flwr.client.mod.secure_aggregation.secaggplus_mod, stage 2;
           its weighting by num_examples/max_weight is left out: Tessera has no counterpart)

``primitives`` uses pre-agreed seeds on both sides; ``with_key_agreement`` adds what each client
does per peer in the same stage: Tessera's SecAggClient.masked_input (share decryption, X25519 +
HKDF per peer) and Flower's generate_shared_key(bytes_to_private_key(sk1), ...) per peer (Flower's
share decryption is not included, which favours Flower).

The speed-up is taken per iteration, not from two unpaired medians: each run times both sides
back to back (alternating which goes first), and the ratio Flower/Tessera of that run is one
sample; the report gives the median and spread of those paired ratios over ``--runs`` (>= 5), in
CPU time of this process (``time.process_time``: what another process on the machine does
cannot inflate it) and in wall time. Both kernels run on one thread here.

flwr 1.41.0 is Tessera's coordinator extra and in ``dev`` (scripts/README.md says why this
benchmark once needed a venv of its own). Not run by pytest. Usage:
``.venv/bin/python scripts/bench_vs_flower.py [--size N] [--peers P] [--runs R]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import SimpleNamespace
from typing import TypeVar

import numpy as np
from bench_node_cost import machine, ms, node_round

from tessera.core import dp
from tessera.core.secagg import prg
from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.messages import ForwardedShares

CLIP_RANGE = 8.0  # SecAggPlusWorkflow(clipping_range=8.0)
TARGET_RANGE = 2**22  # SecAggPlusWorkflow(quantization_range=2**22)
MOD_BITS = 32  # SecAggPlusWorkflow(modulus_range=2**32)
TESSERA_VALUE_BITS = 22  # (2^21 - 1)/8 units per value unit, Flower's 2^22/16 = 2^18
TARGET_RATIO = 3.0
SEED = 20261123
T = TypeVar("T")

INSTALL_HINT = (
    "bench_vs_flower.py needs Flower, which is not installed here: install Tessera with its dev extras "
    "(`pip install -e '.[dev]'`, which brings flwr 1.41.0), as scripts/dev does."
)

NOTE = (
    "Flower's pseudo_rand_gen XOR-folds every seed into one 32-bit integer and seeds numpy's legacy "
    "RandomState, a Mersenne Twister (MT19937): not a cryptographically secure generator. A mask is "
    "one of at most 2^32 streams (pairwise seeds are base64url text, whose bytes all have the top "
    "bit clear, so 4 folded bits are always zero: at most 2^28), 624 raw outputs reveal the whole "
    "state, and randint(0, modulus - 1) never draws modulus - 1. Tessera expands a 256-bit seed "
    "(HKDF output or os.urandom) with AES-256-CTR (tessera/core/secagg/prg.py)."
)


def load_flower() -> SimpleNamespace:
    """Flower's SecAgg+ client functions; exits with an install hint when flwr is missing."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before any flwr import: no telemetry
    try:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
        from flwr.common.secure_aggregation.ndarrays_arithmetic import (
            factor_combine,
            parameters_addition,
            parameters_mod,
            parameters_subtraction,
        )
        from flwr.common.secure_aggregation.quantization import dequantize, quantize
        from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
        from flwr.supercore.primitives.asymmetric import (
            bytes_to_private_key,
            bytes_to_public_key,
            generate_key_pairs,
            private_key_to_bytes,
            public_key_to_bytes,
        )
    except ImportError:
        sys.exit(INSTALL_HINT)
    return SimpleNamespace(
        bytes_to_private_key=bytes_to_private_key,
        bytes_to_public_key=bytes_to_public_key,
        dequantize=dequantize,
        factor_combine=factor_combine,
        generate_key_pairs=generate_key_pairs,
        generate_shared_key=generate_shared_key,
        parameters_addition=parameters_addition,
        parameters_mod=parameters_mod,
        parameters_subtraction=parameters_subtraction,
        private_key_to_bytes=private_key_to_bytes,
        pseudo_rand_gen=pseudo_rand_gen,
        public_key_to_bytes=public_key_to_bytes,
        quantize=quantize,
    )


@dataclass(frozen=True)
class FlowerSteps:
    """Node 0's stage-2 work in Flower's SecAgg+ client, as callables (key pairs made untimed)."""

    quantise: Callable[[], list[np.ndarray]]
    mask: Callable[[list[np.ndarray]], list[np.ndarray]]  # pre-agreed pairwise seeds
    mask_with_key_agreement: Callable[[list[np.ndarray]], list[np.ndarray]]
    pairwise_seeds_ascii: bool  # every byte of every pairwise seed is below 0x80


def flower_side(fl: SimpleNamespace, x: np.ndarray, peers: int, rng: np.random.Generator) -> FlowerSteps:
    modulus = 2**MOD_BITS
    nid = 0
    sk1, _ = fl.generate_key_pairs()
    sk1_bytes = fl.private_key_to_bytes(sk1)
    peer_pk = {i: fl.public_key_to_bytes(fl.generate_key_pairs()[1]) for i in range(1, peers + 1)}
    shared: dict[int, bytes] = {
        i: fl.generate_shared_key(sk1, fl.bytes_to_public_key(pk)) for i, pk in peer_pk.items()
    }
    rd_seed = rng.bytes(32)  # the client draws os.urandom(32); seeded here for repeatability

    def quantise() -> list[np.ndarray]:
        # num_examples == max_weight: q_ratio is the full target range, dq_ratio is 1.
        out: list[np.ndarray] = fl.factor_combine(TARGET_RANGE, fl.quantize([x], CLIP_RANGE, TARGET_RANGE))
        return out

    def mask(quantised: list[np.ndarray], keys: Callable[[int], bytes]) -> list[np.ndarray]:
        dims = [a.shape for a in quantised]
        out: list[np.ndarray] = fl.parameters_addition(quantised, fl.pseudo_rand_gen(rd_seed, modulus, dims))
        for peer in peer_pk:
            pairwise = fl.pseudo_rand_gen(keys(peer), modulus, dims)
            if nid > peer:
                out = fl.parameters_addition(out, pairwise)
            else:
                out = fl.parameters_subtraction(out, pairwise)
        out = fl.parameters_mod(out, modulus)
        return out

    def agree(peer: int) -> bytes:
        # As the client does per peer: deserialise its own key, then ECDH (SECP384R1) + HKDF.
        key: bytes = fl.generate_shared_key(
            fl.bytes_to_private_key(sk1_bytes), fl.bytes_to_public_key(peer_pk[peer])
        )
        return key

    return FlowerSteps(
        quantise=quantise,
        mask=lambda q: mask(q, shared.__getitem__),
        mask_with_key_agreement=lambda q: mask(q, agree),
        pairwise_seeds_ascii=all(b < 0x80 for key in shared.values() for b in key),
    )


_CPU: dict[str, float] = {}  # step name -> CPU seconds of its last timing (see ``timed``)


def timed(fn: Callable[[], T], name: str = "") -> tuple[float, T]:
    """Wall time of ``fn()`` in seconds, and its result; its CPU time goes to ``_CPU[name]``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if name:
        _CPU[name] = time.process_time() - cpu
    return time.perf_counter() - start, out


def paired(flower: list[float], tessera: list[float]) -> dict[str, float]:
    """Median, min and max of the per-iteration ratios flower[i] / tessera[i]."""
    ratios = sorted(f / t for f, t in zip(flower, tessera, strict=True) if t > 0)
    return {
        "median": round(statistics.median(ratios), 2),
        "min": round(ratios[0], 2),
        "max": round(ratios[-1], 2),
        "q1": round(ratios[len(ratios) // 4], 2),
        "q3": round(ratios[(3 * len(ratios)) // 4], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per side (median, >= 5)")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("use at least 5 runs so the medians mean something")
    fl = load_flower()
    rng = np.random.default_rng(SEED)
    x = rng.normal(0.0, 3.0, size=args.size)  # a few values beyond +-8, so clipping does work
    # Flower's stochastic rounding draws from the global numpy generator; seed it for repeatability.
    np.random.seed(SEED)
    fl_steps = flower_side(fl, x, args.peers, rng)
    gen = np.random.Generator(np.random.PCG64DXSM(SEED))
    scale = dp.fixed_point_scale(clip_bound=CLIP_RANGE, value_bits=TESSERA_VALUE_BITS)
    seeds = [(rng.bytes(prg.SEED_BYTES), 1 if i % 2 else -1) for i in range(args.peers + 1)]

    def t_quantise() -> tuple[dict[str, float], np.ndarray]:
        """Tessera's quantise step, timed in its three parts (seconds) and its encoded output."""
        cpu = time.process_time()
        start = time.perf_counter()
        clipped = dp.clip_coordinates(x.reshape(1, -1), lower=-CLIP_RANGE, upper=CLIP_RANGE)
        clipped_at = time.perf_counter()
        quantised = dp.quantise_sum(clipped, scale=scale, rng=gen)
        rounded_at = time.perf_counter()
        encoded = dp.encode(quantised.values, bits=MOD_BITS)
        done = time.perf_counter()
        _CPU["tessera_quantise"] = time.process_time() - cpu
        parts = {"clip": clipped_at - start, "round": rounded_at - clipped_at, "encode": done - rounded_at}
        return parts, encoded

    def tessera(client: SecAggClient, fwd: ForwardedShares) -> dict[str, float]:
        parts, encoded = t_quantise()
        quantise_s = sum(parts.values())
        quantise_cpu = _CPU["tessera_quantise"]
        mask_s, _ = timed(lambda: prg.add_keystreams(encoded, seeds), "mask")
        mask_cpu = _CPU["mask"]
        parts2, encoded2 = t_quantise()
        quantise2_cpu = _CPU["tessera_quantise"]
        keyed_s, _ = timed(lambda: client.masked_input(fwd, encoded2, 1), "keyed")
        return {
            "cpu_tessera_total": quantise_cpu + mask_cpu,
            "cpu_tessera_total_with_key_agreement": quantise2_cpu + _CPU["keyed"],
            "tessera_quantise": quantise_s,
            **{f"tessera_quantise_{name}": seconds for name, seconds in parts.items()},
            "tessera_mask": mask_s,
            "tessera_total": quantise_s + mask_s,
            "tessera_total_with_key_agreement": sum(parts2.values()) + keyed_s,
        }

    def flower(_client: SecAggClient, _fwd: ForwardedShares) -> dict[str, float]:
        quantise_s, quantised = timed(fl_steps.quantise, "q")
        quantise_cpu = _CPU["q"]
        mask_s, _ = timed(lambda: fl_steps.mask(quantised), "m")
        mask_cpu = _CPU["m"]
        quantise2_s, quantised2 = timed(fl_steps.quantise, "q")
        quantise2_cpu = _CPU["q"]
        keyed_s, _ = timed(lambda: fl_steps.mask_with_key_agreement(quantised2), "k")
        return {
            "cpu_flower_total": quantise_cpu + mask_cpu,
            "cpu_flower_total_with_key_agreement": quantise2_cpu + _CPU["k"],
            "flower_quantise": quantise_s,
            "flower_mask": mask_s,
            "flower_total": quantise_s + mask_s,
            "flower_total_with_key_agreement": quantise2_s + keyed_s,
        }

    samples: dict[str, list[float]] = {}
    for run in range(args.runs + 1):  # run 0 is the warm-up
        client, fwd = node_round(peers=args.peers, bits=MOD_BITS, length=args.size, rng=rng)
        # Alternate which side goes first so allocator and cache state favour neither.
        for side in (tessera, flower) if run % 2 else (flower, tessera):
            for name, seconds in side(client, fwd).items():
                if run:
                    samples.setdefault(name, []).append(seconds)
    med = {name: ms(statistics.median(values)) for name, values in samples.items()}

    # Quantisation error in value units (untimed): both must stay below one quantisation step.
    clipped = np.clip(x, -CLIP_RANGE, CLIP_RANGE)
    t_values = dp.quantise_sum(
        dp.clip_coordinates(x.reshape(1, -1), lower=-CLIP_RANGE, upper=CLIP_RANGE), scale=scale, rng=gen
    )
    f_values = fl.dequantize(fl.quantize([x], CLIP_RANGE, TARGET_RANGE), CLIP_RANGE, TARGET_RANGE)[0]
    ratios = {
        "primitives_cpu": paired(samples["cpu_flower_total"], samples["cpu_tessera_total"]),
        "primitives_wall": paired(samples["flower_total"], samples["tessera_total"]),
        "with_key_agreement_cpu": paired(
            samples["cpu_flower_total_with_key_agreement"], samples["cpu_tessera_total_with_key_agreement"]
        ),
        "with_key_agreement_wall": paired(
            samples["flower_total_with_key_agreement"], samples["tessera_total_with_key_agreement"]
        ),
        "quantise_wall": paired(samples["flower_quantise"], samples["tessera_quantise"]),
        "mask_wall": paired(samples["flower_mask"], samples["tessera_mask"]),
    }
    ratio = ratios["primitives_cpu"]["median"]
    report = {
        "machine": machine(),
        "versions": {"flwr": metadata.version("flwr"), "tessera": metadata.version("tessera")},
        "setup": {
            "size": args.size,
            "peers": args.peers,
            "runs": args.runs,
            "noise": "none",
            "clip_range": CLIP_RANGE,
            "flower_quantisation_range": TARGET_RANGE,
            "tessera_value_bits": TESSERA_VALUE_BITS,
            "modulus_bits": MOD_BITS,
        },
        "median_ms": med,
        # How many times faster Tessera is: per-iteration ratios Flower/Tessera (both sides timed
        # back to back in the same run), their median and spread; CPU time of this process and
        # wall time. The target is judged on the paired CPU-time median of the primitives.
        "tessera_speedup_paired": ratios,
        # The old figure, kept for comparison: ratio of the two unpaired medians (wall time).
        "tessera_speedup_unpaired_medians_wall": round(med["flower_total"] / med["tessera_total"], 2),
        "quantisation_max_abs_error": {
            "tessera": float(np.max(np.abs(dp.dequantise(t_values.values, scale=scale) - clipped))),
            "flower": float(np.max(np.abs(f_values - clipped))),
            "step_tessera": 1 / scale,
            "step_flower": 2 * CLIP_RANGE / TARGET_RANGE,
        },
        "flower_pairwise_seeds_are_ascii_text": fl_steps.pairwise_seeds_ascii,
        "note": NOTE,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
