#!/usr/bin/env python3
"""RMSE of the distributed discrete Gaussian against a central discrete Gaussian; prints JSON.

For each (ε, δ = 1e-6, Δ, t): the job's ρ = rho_for(ε, δ); the central discrete Gaussian needs
σ_c = Δ/sqrt(2ρ) (Canonne-Kamath-Steinke 2020, Thm. 4: N_Z(0, σ²) is Δ²/(2σ²)-zCDP; the same ρ
currency the ledger composes, so this is the like-for-like central baseline; a central mechanism
calibrated by its exact privacy-loss distribution at one (ε, δ) would need a little less, but
would not compose in ρ). The distributed noise is t shares N_Z(0, σ²/t) with σ from
``analyses.vector.sigma_for`` (the tight accountant ``dp.ddg``); its RMSE is the EXACT sd of the
sum of exactly t shares, sqrt(t·Var N_Z(0, σ²/t)) (``dp.ddg_sum_variance``), not σ.

Reported per case: sigma_total, the real sd, rmse_ratio = sd/σ_c (target <= 1.06), the ρ the
accountant charges at that σ (<= ρ), the ratio the KLS 2021 bound alone would give (it needs
σ/√t >= 1/2, so it is calibrated under that constraint), and
the calibration time cold (first call) and warm (cached), in ms. Medians over --runs runs of the
cold time, each with emptied caches. Not run by pytest. Usage:
``.venv/bin/python scripts/bench_ddg_rmse.py [--runs 3]`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

from tessera.core.analyses.vector import sigma_for
from tessera.core.dp import ddg
from tessera.core.dp.accounting import distributed_gaussian_rho
from tessera.core.dp.calibrate import rho_for

DELTA = 1e-6
SURVIVORS = (3, 10, 100, 400, 1000)
CASES = [(1.0, 1), (1.0, 2**23), (0.1, 1), (4.0, 1), (0.1, 2**23), (4.0, 2**23)]


def kls_sigma(rho: float, delta_units: int, t: int) -> float:
    """Least σ meeting ρ under the KLS 2021 bound alone (σ/√t >= 1/2 enforced)."""

    def cost(sigma: float) -> float:
        return distributed_gaussian_rho(
            l1=delta_units, l2=delta_units, sigma_node=sigma / math.sqrt(t), summands=t, dim=1
        )

    lo = hi = max(delta_units / math.sqrt(2 * rho), 0.5 * math.sqrt(t))
    while cost(hi) > rho:
        lo, hi = hi, hi * 1.5
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if cost(mid) <= rho else (mid, hi)
    return hi


def clear_caches() -> None:
    # A benchmark measures the cold path on purpose.
    ddg._rho.cache_clear()
    ddg._sigma.cache_clear()


def one(epsilon: float, delta_units: int, t: int, runs: int) -> dict[str, object]:
    rho = rho_for(epsilon=epsilon, delta=DELTA)
    central = delta_units / math.sqrt(2 * rho)
    cold = []
    for _ in range(runs):
        clear_caches()
        start = time.perf_counter()
        sigma = sigma_for(rho=rho, l1=delta_units, l2=delta_units, survivors_t=t, dim=1)
        cold.append(time.perf_counter() - start)
    start = time.perf_counter()
    sigma_for(rho=rho, l1=delta_units, l2=delta_units, survivors_t=t, dim=1)
    warm = time.perf_counter() - start
    sd = math.sqrt(ddg.ddg_sum_variance(sigma_total=sigma, survivors_t=t))
    charged = ddg.ddg_rho(sigma_total=sigma, survivors_t=t, l1=delta_units, l2=delta_units, dim=1)
    kls = kls_sigma(rho, delta_units, t)
    kls_sd = math.sqrt(ddg.ddg_sum_variance(sigma_total=kls, survivors_t=t))
    return {
        "epsilon": epsilon,
        "delta": DELTA,
        "sensitivity": delta_units,
        "t": t,
        "rho": rho,
        "central_sigma": central,
        "sigma_total": sigma,
        "share_sigma": sigma / math.sqrt(t),
        "sum_sd": sd,
        "rmse_ratio": round(sd / central, 5),
        "rho_charged": charged,
        "meets_rho": bool(charged <= rho),
        "kls_only_rmse_ratio": round(kls_sd / central, 5),
        "calibration_ms_cold_median": round(1000 * statistics.median(cold), 2),
        "calibration_ms_warm": round(1000 * warm, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = [one(eps, d, t, args.runs) for eps, d in CASES for t in SURVIVORS]
    worst = max(float(r["rmse_ratio"]) for r in rows)  # type: ignore[arg-type]
    print(
        json.dumps(
            {"target_rmse_ratio": 1.06, "worst_rmse_ratio": worst, "cases": rows},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
