"""Vectorised samplers of discrete noise; every one takes an injected ``numpy.random.Generator``.

Distributions (all on the integers, all symmetric about 0):

* discrete Laplace ``DLap(b)``: ``P(x) ∝ exp(-|x|/b)``, drawn as the difference of two iid
  geometric variables (Inusah & Kozubowski 2006), which is exact;
* discrete Gaussian ``N_Z(0, σ²)``: ``P(x) ∝ exp(-x²/(2σ²))`` (Canonne, Kamath & Steinke,
  "The Discrete Gaussian for Differential Privacy", NeurIPS 2020);
* Skellam ``Sk(V)``: difference of two iid ``Poisson(V/2)``, variance ``V`` (Agarwal, Kairouz &
  Liu, "The Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021);
* Pólya: difference of two iid negative binomials ``NB(r, 1 - e^(-1/b))``; the sum of ``n`` such
  shares with ``r = 1/n`` is exactly ``DLap(b)`` because negative binomials with the same success
  probability add their ``r`` and ``NB(1, p)`` is geometric (the infinite divisibility of the
  discrete Laplace; used for distributed summation by Balle, Bell, Gascón & Nissim, "Private
  Summation in the Multi-Message Shuffle Model", CCS 2020; analysed as the "generalized discrete
  Laplace" by Harrison & Manurangsi, FORC 2025).

Distributed shares: a node adds ``1/t`` of the noise so the sum over any ``t`` or more survivors
carries at least the full noise; extra survivors only add independent noise (post-processing).
Noise from nodes that collude with the adversary does not count: to tolerate ``c`` colluders size
shares for ``t - c``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from tessera.core.dp.errors import DpParameterError

IntArray = npt.NDArray[np.int64]
Size = int | tuple[int, ...]
# Batches stay below ~32 MB of temporaries whatever the requested size.
_BATCH = 1 << 21


def _count(size: Size) -> tuple[int, tuple[int, ...]]:
    shape = (size,) if isinstance(size, int) else tuple(size)
    if any(dim < 0 for dim in shape):
        raise DpParameterError("sample size must be non-negative")
    return math.prod(shape), shape


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise DpParameterError(f"{name} must be a positive finite number")
    return float(value)


def _parties(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DpParameterError("the number of parties must be a positive integer")
    return value


def discrete_laplace(*, scale: float, size: Size, rng: np.random.Generator) -> IntArray:
    """Exact ``DLap(b)`` with ``P(x) = (1-α)/(1+α)·α^|x|``, ``α = exp(-1/scale)``.

    Variance ``2α/(1-α)²``. Pure ``ε``-DP for integer queries of L1 sensitivity ``Δ`` when
    ``scale = Δ/ε``. Cost: two geometric draws per sample.
    """
    b = _positive("scale", scale)
    n, shape = _count(size)
    p = -math.expm1(-1.0 / b)  # success probability 1 - α, accurate for large b
    # numpy's geometric counts trials (>= 1); the common shift of 1 cancels in the difference.
    return (rng.geometric(p, n) - rng.geometric(p, n)).astype(np.int64).reshape(shape)


def discrete_gaussian(*, sigma: float, size: Size, rng: np.random.Generator) -> IntArray:
    """``N_Z(0, σ²)`` by the rejection sampler of Canonne–Kamath–Steinke 2020 (Algorithm 3).

    Proposal ``Y ~ DLap(t)`` with ``t = floor(σ) + 1``; accept with probability
    ``exp(-(|Y| - σ²/t)² / (2σ²))``. The output distribution is exactly the discrete Gaussian (no
    truncation); unlike the paper's rational-arithmetic version, the acceptance test uses float64,
    so each probability carries a relative error of order 2^-52, far below any δ we use. Variance
    is at most ``σ²`` and within ``1e-12`` relative of it for ``σ >= 1``. The loop runs in batches;
    about 1.3-1.6 proposals are needed per sample.
    """
    sig = _positive("sigma", sigma)
    n, shape = _count(size)
    t = math.floor(sig) + 1
    p = -math.expm1(-1.0 / t)
    sigma2 = sig * sig
    centre = sigma2 / t
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        batch = min(_BATCH, int((n - filled) * 1.6) + 64)
        y = rng.geometric(p, batch) - rng.geometric(p, batch)
        dev = np.abs(y) - centre
        keep = y[rng.random(batch) < np.exp(-(dev * dev) / (2.0 * sigma2))]
        take = min(keep.size, n - filled)
        out[filled : filled + take] = keep[:take]
        filled += take
    return out.reshape(shape)


def skellam(*, variance: float, size: Size, rng: np.random.Generator) -> IntArray:
    """``Sk(V)``: ``Poisson(V/2) - Poisson(V/2)``, mean 0, variance ``V``. Closed under sums."""
    v = _positive("variance", variance)
    n, shape = _count(size)
    half = v / 2.0
    return (rng.poisson(half, n) - rng.poisson(half, n)).astype(np.int64).reshape(shape)


def skellam_share(
    *, variance_total: float, survivors_t: int, size: Size, rng: np.random.Generator
) -> IntArray:
    """One node's Skellam share ``Sk(V/t)``: any ``t`` shares sum to exactly ``Sk(V)``."""
    t = _parties(survivors_t)
    return skellam(variance=_positive("variance_total", variance_total) / t, size=size, rng=rng)


def discrete_gaussian_share(
    *, sigma_total: float, survivors_t: int, size: Size, rng: np.random.Generator
) -> IntArray:
    """One node's discrete Gaussian share ``N_Z(0, σ²/t)``.

    The sum of ``t`` shares is not exactly ``N_Z(0, σ²)`` but close to it when ``σ²/t`` is not tiny;
    the accounting uses the bound of Kairouz, Liu & Steinke 2021 for sums of discrete Gaussians.
    """
    t = _parties(survivors_t)
    return discrete_gaussian(sigma=_positive("sigma_total", sigma_total) / math.sqrt(t), size=size, rng=rng)


def polya(*, r: float, scale: float, size: Size, rng: np.random.Generator) -> IntArray:
    """Pólya share: ``NB(r, 1-α) - NB(r, 1-α)`` with ``α = exp(-1/scale)``.

    ``NB(r, p)`` counts failures before the r-th success (real ``r > 0``); variance of the share
    is ``2rα/(1-α)²``. Cost: a gamma and a Poisson draw per negative binomial.
    """
    rr = _positive("r", r)
    b = _positive("scale", scale)
    n, shape = _count(size)
    p = -math.expm1(-1.0 / b)
    return (rng.negative_binomial(rr, p, n) - rng.negative_binomial(rr, p, n)).astype(np.int64).reshape(shape)


def polya_share(*, scale: float, parties: int, size: Size, rng: np.random.Generator) -> IntArray:
    """One node's Pólya share with ``r = 1/parties``.

    With ``parties = n`` (every node reports) the sum is exactly ``DLap(scale)``: pure ε-DP without
    a trusted curator. With ``parties = t`` (the dropout-tolerant variant) any ``t`` shares sum to
    ``DLap(scale)`` and more survivors add independent extra noise (``n/t`` times the variance).
    """
    return polya(r=1.0 / _parties(parties), scale=scale, size=size, rng=rng)
