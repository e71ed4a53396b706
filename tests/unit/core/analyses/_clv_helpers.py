"""Shared pieces of the CLV tests: the CDNOW files (located lazily, never at import), a BG/NBD
simulator for data-free tests, the in-memory driver and an independent central fit (scipy)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera.core.analyses import clv_fit
from tessera.core.analyses import clv_math as cm
from tessera.core.analyses.clv_summary import Summary
from tessera.core.analyses.vector import add_noise
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

# The shared data sits beside the checkout (``../shared``), in CI and on developer machines.
CDNOW_DIR = Path(__file__).resolve().parents[4].parent / "shared" / "data" / "cdnow"
FIELDS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
}
EPOCH = date(1970, 1, 1).toordinal()


def cdnow(name: str) -> dict[str, np.ndarray]:
    """CDNOW rows as the vault gives them (customer id, days since 1970 at noon, amount).

    Skips when the file is absent, except under CI=true, where the data is always there.
    """
    path = CDNOW_DIR / name
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must find the CDNOW data at {path}")
        pytest.skip(f"CDNOW data not found at {path} (it lives in ../shared beside the checkout)")
    ids, days, amounts = [], [], []
    sample = name == "CDNOW_sample.txt"
    for line in path.read_text(encoding="ascii").splitlines():
        cols = line.split()
        if not cols or not cols[0].isdigit():
            continue
        cid, when, amount = (cols[0], cols[2], cols[4]) if sample else (cols[0], cols[1], cols[3])
        ids.append(int(cid))
        days.append(date(int(when[:4]), int(when[4:6]), int(when[6:])).toordinal() - EPOCH + 0.5)
        amounts.append(float(amount))
    return {"customer": np.array(ids, dtype=np.int64), "time": np.array(days), "amount": np.array(amounts)}


def day(text: str) -> float:
    return float(date.fromisoformat(text).toordinal() - EPOCH)


def simulate(
    rng: np.random.Generator, n: int, *, bgnbd: tuple[float, ...], gg: tuple[float, ...], weeks: float = 78
) -> dict[str, np.ndarray]:
    """Purchase rows of ``n`` customers drawn from BG/NBD and Gamma-Gamma, first purchases spread
    over the first 12 weeks from 2020-01-01, followed for ``weeks`` weeks."""
    r, alpha, a, b = bgnbd
    p, q, gamma = gg
    start = day("2020-01-01")
    ids, times, amounts = [], [], []
    for cid in range(n):
        lam = rng.gamma(r, 1 / alpha)
        drop = rng.beta(a, b)
        nu = rng.gamma(q, 1 / gamma)
        t = float(rng.uniform(0, 12))
        while t < weeks:
            ids.append(cid)
            times.append(start + 7 * t)
            amounts.append(float(rng.gamma(p, 1 / nu)))
            if len(ids) > 1 and ids[-2] == cid and rng.random() < drop:
                break
            t += rng.exponential(1 / lam) if lam > 0 else weeks
    return {"customer": np.array(ids, dtype=np.int64), "time": np.array(times), "amount": np.array(amounts)}


def split(data: dict[str, np.ndarray], nodes: int) -> list[dict[str, np.ndarray]]:
    home = data["customer"] % nodes
    return [{k: v[home == i] for k, v in data.items()} for i in range(nodes)]


def spec(*, epsilon: float = 1.0, **params: ParamValue) -> JobSpec:
    return JobSpec(analysis="clv_fit", dataset="transactions", epsilon=epsilon, delta=1e-6, params=params)


def run(
    job: JobSpec, nodes: list[dict[str, np.ndarray]], *, noise: bool, seed: int = 0
) -> tuple[dict[str, Any], float]:
    """The program in memory, as test_program runs mean_descent: (result, ρ spent)."""
    rng = np.random.default_rng(seed)
    public = clv_fit.start(job)
    spent = 0.0
    for round_no in range(1, clv_fit.max_rounds(job) + 1):
        plan = clv_fit.plan(
            job, FIELDS, survivors_t=len(nodes), n_nodes=len(nodes), round_no=round_no, public=public
        )
        spent += plan.rho
        vectors = [clv_fit.local_vector(plan, d, rng=rng) for d in nodes]
        if noise:
            vectors = [add_noise(plan, vec, rng=rng) for vec in vectors]
        released = clv_fit.release(plan, np.sum(vectors, axis=0), summands=len(nodes), min_cohort_size=10)
        step = clv_fit.step(job, round_no=round_no, public=public, released=released)
        if step.result is not None:
            return step.result, spent
        assert step.next_public is not None
        public = step.next_public
    raise AssertionError("the program did not end within max_rounds")


def central_fit(s: Summary) -> tuple[np.ndarray, np.ndarray]:
    """Maximum likelihood on all customers at once with scipy (an independent optimiser)."""
    optimize = pytest.importorskip("scipy.optimize")
    spend = clv_fit.spend_customers(s)

    def fit(fun: Any, x0: list[float]) -> np.ndarray:
        res = optimize.minimize(
            lambda t: -fun(t, 1)[0].sum(),
            np.log(x0),
            jac=lambda t: -fun(t, 1)[1].sum(axis=0),
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000},
        )
        return np.exp(res.x)

    bg = fit(lambda t, o: cm.bgnbd_terms(t, s.x, s.t_x, s.big_t, order=o), [1.0, 1.0, 1.0, 1.0])
    gg = fit(lambda t, o: cm.gg_terms(t, s.x[spend], s.mean_spend[spend], order=o), [1.0, 2.0, 10.0])
    return bg, gg


def values(result: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    bg = np.array([result["bgnbd"][k]["value"] for k in cm.BGNBD_PARAMS])
    gg = np.array([result["gamma_gamma"][k]["value"] for k in cm.GG_PARAMS])
    return bg, gg
