"""Benchmark of the DP kernels: sampler throughput and the accuracy cost of distributing noise.

Prints one JSON object. Not run by pytest. Usage: ``.venv/bin/python scripts/bench_dp.py``
(about 30-60 s on one core). Every figure is the median of ``--runs`` (default 7) repetitions.

Accuracy set-up (the design's default round): 10 nodes, one may drop (t = 9), ε = 1, δ = 1e-6,
a count (L1 = L2 = 1). Each trial draws every node's share and sums all 10; the RMSE of that sum's
noise is compared with a central mechanism calibrated to the same privacy. Because shares are
sized for 9 survivors, a sum of 10 carries 10/9 of the variance: the floor of the ratio is
sqrt(10/9) ≈ 1.054. Pólya with r = 1/n (no dropout allowed) sums to exactly the central discrete
Laplace, so its ratio should be 1.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import numpy as np

from tessera.core.dp import (
    Mechanism,
    NoisePlan,
    choose_bits,
    interval95,
    noise,
    rho_for,
    rho_to_epsilon_simple,
)
from tessera.core.dp.calibrate import distributed_gaussian_sigma, gaussian_sigma, polya_scale, skellam_sigma

SAMPLES = 1_000_000
NODES, SURVIVORS, EPSILON, DELTA = 10, 9, 1.0, 1e-6


def _throughput(draw: Callable[[np.random.Generator], np.ndarray], runs: int, seed: int) -> float:
    rng = np.random.Generator(np.random.PCG64DXSM(seed))
    draw(rng)  # warm-up
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        out = draw(rng)
        rates.append(out.size / (time.perf_counter() - start))
    return statistics.median(rates)


def _rmse(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def _ratio(
    distributed: Callable[[np.random.Generator, int], np.ndarray],
    central: Callable[[np.random.Generator, int], np.ndarray],
    *,
    trials: int,
    runs: int,
    seed: int,
) -> dict[str, float]:
    rng = np.random.Generator(np.random.PCG64DXSM(seed))
    ratios, dist_all, cent_all = [], [], []
    for _ in range(runs):
        d = distributed(rng, trials)
        c = central(rng, trials)
        ratios.append(_rmse(d) / _rmse(c))
        dist_all.append(d)
        cent_all.append(c)
    return {
        "rmse_ratio_median": round(statistics.median(ratios), 4),
        "rmse_ratio_pooled": round(_rmse(np.concatenate(dist_all)) / _rmse(np.concatenate(cent_all)), 4),
        "rmse_distributed": round(_rmse(np.concatenate(dist_all)), 4),
        "rmse_central": round(_rmse(np.concatenate(cent_all)), 4),
    }


def _sum_of_shares(share: Callable[[np.random.Generator, int], np.ndarray]):
    def draw(rng: np.random.Generator, trials: int) -> np.ndarray:
        total = np.zeros(trials, dtype=np.int64)
        for _ in range(NODES):
            total += share(rng, trials)
        return total

    return draw


def throughput(runs: int) -> dict[str, float]:
    n = SAMPLES
    cases: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
        "discrete_gaussian_sigma_1.5": lambda g: noise.discrete_gaussian(sigma=1.5, size=n, rng=g),
        "discrete_gaussian_sigma_1000": lambda g: noise.discrete_gaussian(sigma=1000.0, size=n, rng=g),
        "skellam_variance_100": lambda g: noise.skellam(variance=100.0, size=n, rng=g),
        "skellam_variance_1e6": lambda g: noise.skellam(variance=1e6, size=n, rng=g),
        "polya_share_r_0.1_scale_1": lambda g: noise.polya_share(scale=1.0, parties=10, size=n, rng=g),
        "polya_share_r_0.1_scale_1000": lambda g: noise.polya_share(scale=1000.0, parties=10, size=n, rng=g),
        "discrete_laplace_scale_1": lambda g: noise.discrete_laplace(scale=1.0, size=n, rng=g),
    }
    return {name: round(_throughput(draw, runs, seed=i)) for i, (name, draw) in enumerate(cases.items())}


def accuracy(runs: int, trials: int) -> dict[str, object]:
    sigma_c = gaussian_sigma(epsilon=EPSILON, delta=DELTA, l2=1.0)
    sigma_d = distributed_gaussian_sigma(
        epsilon=EPSILON, delta=DELTA, l1=1.0, l2=1.0, survivors_t=SURVIVORS, dim=1
    )
    node_sigma = sigma_d / math.sqrt(SURVIVORS)
    result: dict[str, object] = {}
    dg = _ratio(
        _sum_of_shares(lambda g, k: noise.discrete_gaussian(sigma=node_sigma, size=k, rng=g)),
        lambda g, k: noise.discrete_gaussian(sigma=sigma_c, size=k, rng=g),
        trials=trials,
        runs=runs,
        seed=101,
    )
    dg.update(
        sigma_central=round(sigma_c, 4),
        sigma_total_distributed=round(sigma_d, 4),
        expected_ratio=round(math.sqrt(NODES / SURVIVORS) * sigma_d / sigma_c, 4),
        floor=round(math.sqrt(NODES / SURVIVORS), 4),
        target=1.06,
    )
    result["distributed_discrete_gaussian_vs_central"] = dg

    scale = polya_scale(epsilon=EPSILON, l1=1.0)
    central_lap = lambda g, k: noise.discrete_laplace(scale=scale, size=k, rng=g)  # noqa: E731
    exact = _ratio(
        _sum_of_shares(lambda g, k: noise.polya_share(scale=scale, parties=NODES, size=k, rng=g)),
        central_lap,
        trials=trials,
        runs=runs,
        seed=202,
    )
    exact.update(parties=NODES, expected_ratio=1.0, target=1.02)
    result["polya_r_1_over_n_vs_central_discrete_laplace"] = exact
    tolerant = _ratio(
        _sum_of_shares(lambda g, k: noise.polya_share(scale=scale, parties=SURVIVORS, size=k, rng=g)),
        central_lap,
        trials=trials,
        runs=runs,
        seed=303,
    )
    tolerant.update(parties=SURVIVORS, expected_ratio=round(math.sqrt(NODES / SURVIVORS), 4))
    result["polya_r_1_over_t_vs_central_discrete_laplace"] = tolerant

    for sens in (1.0, 64.0):
        sk = skellam_sigma(epsilon=EPSILON, delta=DELTA, l1=sens, l2=sens)
        central_sigma = gaussian_sigma(epsilon=EPSILON, delta=DELTA, l2=sens)
        skr = _ratio(
            _sum_of_shares(
                lambda g, k, sk=sk: noise.skellam_share(
                    variance_total=sk * sk, survivors_t=SURVIVORS, size=k, rng=g
                )
            ),
            lambda g, k, cs=central_sigma: noise.discrete_gaussian(sigma=cs, size=k, rng=g),
            trials=trials,
            runs=runs,
            seed=404 + int(sens),
        )
        skr.update(
            sensitivity=sens,
            expected_ratio=round(math.sqrt(NODES / SURVIVORS) * sk / central_sigma, 4),
            note="Skellam priced by AKL21 Thm 3.5; its O(1/V^2) terms cost more at small variance",
        )
        result[f"skellam_vs_central_discrete_gaussian_sensitivity_{int(sens)}"] = skr
    return result


def sizing() -> dict[str, object]:
    """What the default round costs and needs: privacy figures and the modular width."""
    sigma_d = distributed_gaussian_sigma(
        epsilon=EPSILON, delta=DELTA, l1=1.0, l2=1.0, survivors_t=SURVIVORS, dim=1
    )
    plan = NoisePlan(
        mechanism=Mechanism.DISCRETE_GAUSSIAN, survivors_t=SURVIVORS, n_nodes=NODES, sigma_total=sigma_d
    )
    rho = rho_for(epsilon=EPSILON, delta=DELTA)
    width = choose_bits(plan=plan, max_abs_node=100_000, dim=1_000)
    return {
        "rho_for_epsilon_1_delta_1e-6": round(rho, 6),
        "epsilon_simple_conversion_of_that_rho": round(rho_to_epsilon_simple(rho, delta=DELTA), 4),
        "bits_for_100k_customers_per_node_dim_1000": width.bits,
        "wrap_probability_bound_log2": round(width.log2_wrap_probability, 1),
        "interval95_half_width_of_count": round(interval95(plan.mechanism, plan.as_params()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="repetitions per figure (median reported)")
    parser.add_argument("--trials", type=int, default=10_000, help="trials per accuracy repetition")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("use at least 5 runs so medians mean something")
    report = {
        "setup": {
            "numpy": np.__version__,
            "bit_generator": "PCG64DXSM",
            "samples_per_throughput_run": SAMPLES,
            "runs": args.runs,
            "trials_per_accuracy_run": args.trials,
            "nodes": NODES,
            "survivors_t": SURVIVORS,
            "epsilon": EPSILON,
            "delta": DELTA,
        },
        "samples_per_second": throughput(args.runs),
        "accuracy": accuracy(args.runs, args.trials),
        "sizing": sizing(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
