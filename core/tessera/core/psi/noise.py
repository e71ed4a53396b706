"""How many dummy elements a party adds, so the overlap counts it takes part in are DP.

Each party of a pair adds ``d`` dummies that are certain to match and ``m`` that never match,
``d`` and ``m`` independent, each ``T + Z`` with ``Z`` a discrete Gaussian ``N_Z(0, σ²)``
truncated to ``[-T, T]`` (so never negative). Why that gives each party, by its own noise alone,
``ρ = k / (2σ²)`` zCDP over its ``k`` pairs (up to the truncation's δ), and why the coordinator's
and the partner's views are covered, is argued in ``tessera.core.psi.protocol``.

The job's ``(ε, δ)`` is split: ``ρ`` is the largest zCDP cost whose conversion gives ``ε`` at
``(1 - TAIL_SHARE)·δ``; ``T`` is the smallest cap whose total truncation mass over the ``2k``
draws is at most ``TAIL_SHARE·δ`` (a truncated draw is within that total variation distance of
an untruncated one, which adds it to δ). Both sides compute this from public values only: a node
from its reservation, the coordinator from the job's ε and δ and the pairs of each node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tessera.core.dp.calibrate import rho_for
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.noise import discrete_gaussian

TAIL_SHARE = 0.1  # of the job's δ, spent on truncating the dummy counts at ±T


@dataclass(frozen=True, slots=True)
class DummyPlan:
    """One party's dummy counts for every pair of a job."""

    rho: float  # the party's total zCDP cost over its pairs
    pairs: int
    sigma: float
    cap: int  # T: each count is T + Z with |Z| <= T, so 0 <= count <= 2T
    tail_delta: float  # total truncation mass over the party's 2·pairs draws

    @property
    def expected(self) -> int:
        return self.cap


def job_rho(*, epsilon: float, delta: float) -> float:
    """The zCDP cost an overlap job of ``(ε, δ)`` charges each node."""
    return rho_for(epsilon=epsilon, delta=delta * (1 - TAIL_SHARE))


def plan_dummies(*, rho: float, pairs: int, delta: float) -> DummyPlan:
    """σ and T for a party with ``pairs`` pairs, total cost ``rho``, job δ ``delta``."""
    if pairs < 1:
        raise DpParameterError("a dummy plan needs at least one pair")
    if not (math.isfinite(rho) and rho > 0):
        raise DpParameterError("a dummy plan needs a positive rho")
    if not 0 < delta < 1:
        raise DpParameterError("a dummy plan needs delta in (0, 1)")
    # Per pair the party's view changes in one coordinate by one (see protocol): 1/(2σ²) per pair.
    sigma = math.sqrt(pairs / (2.0 * rho))
    budget = TAIL_SHARE * delta / (2 * pairs)
    cap = 1
    while _tail(sigma, cap) > budget:
        cap += 1
    return DummyPlan(rho=rho, pairs=pairs, sigma=sigma, cap=cap, tail_delta=2 * pairs * _tail(sigma, cap))


def _weights(sigma: float, cap: int, extra: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.arange(-cap - extra, cap + extra + 1, dtype=np.float64)
    return z, np.exp(-(z * z) / (2 * sigma * sigma))


def _tail(sigma: float, cap: int) -> float:
    """P(|Z| > cap) for the (untruncated) discrete Gaussian, summed term by term (no cancellation)."""
    extra = int(40 * sigma) + 50
    z, w = _weights(sigma, cap, extra)
    return float(w[np.abs(z) > cap].sum() / w.sum())


def draw_counts(plan: DummyPlan, size: int, *, rng: np.random.Generator) -> np.ndarray:
    """``size`` independent counts ``T + Z`` (Z truncated to [-T, T] by rejection: exact)."""
    out = discrete_gaussian(sigma=plan.sigma, size=size, rng=rng)
    bad = np.abs(out) > plan.cap
    while bad.any():
        out[bad] = discrete_gaussian(sigma=plan.sigma, size=int(bad.sum()), rng=rng)
        bad = np.abs(out) > plan.cap
    return (out + plan.cap).astype(np.int64)


def truncated_pmf(plan: DummyPlan) -> np.ndarray:
    """P(Z = z) for z = -T..T of one party's truncated noise."""
    _, w = _weights(plan.sigma, plan.cap, 0)
    out: np.ndarray = w / w.sum()
    return out


def interval(
    count: int, plans: tuple[DummyPlan, DummyPlan], *, level: float = 0.95
) -> tuple[float, int, int]:
    """The estimate of the true overlap and an exact ``level`` interval, from a noisy ``count``.

    ``count = n + d_A + d_B``; the estimate removes the expected dummies ``T_A + T_B``; the
    interval inverts the exact distribution of ``Z_A + Z_B`` (a convolution), clipped at 0.
    """
    a, b = plans
    pmf = np.convolve(truncated_pmf(a), truncated_pmf(b))
    offsets = np.arange(-(a.cap + b.cap), a.cap + b.cap + 1)
    cdf = np.cumsum(pmf)
    tail = (1 - level) / 2
    lo_noise = int(offsets[int(np.searchsorted(cdf, tail))])
    hi_noise = int(offsets[min(len(offsets) - 1, int(np.searchsorted(cdf, 1 - tail)))])
    centre = count - (a.cap + b.cap)
    return float(centre), max(0, centre - hi_noise), max(0, centre - lo_noise)
