"""Exact probability mass functions of the noise distributions (for intervals and for tests).

Each returns ``P(X = x)`` for an integer array ``x``. Costs are linear in the numeric support,
which is about ``45`` standard deviations (mass outside is below 1e-18): fine for the moderate
parameters of tests and intervals, not meant for ``σ`` in the millions.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from tessera.core.dp.errors import DpParameterError

FloatArray = npt.NDArray[np.float64]
_MAX_SUPPORT = 1 << 23


def _ints(x: npt.ArrayLike) -> npt.NDArray[np.int64]:
    return np.asarray(x, dtype=np.int64)


def discrete_laplace_pmf(x: npt.ArrayLike, *, scale: float) -> FloatArray:
    """``(1-α)/(1+α)·α^|x|`` with ``α = exp(-1/scale)``."""
    if scale <= 0:
        raise DpParameterError("scale must be positive")
    alpha = math.exp(-1.0 / scale)
    return (1 - alpha) / (1 + alpha) * np.exp(-np.abs(_ints(x)) / scale)


def discrete_gaussian_pmf(x: npt.ArrayLike, *, sigma: float) -> FloatArray:
    """``exp(-x²/2σ²) / Z``; ``Z`` by Poisson summation for ``σ >= 1``, by direct sum below."""
    if sigma <= 0:
        raise DpParameterError("sigma must be positive")
    s2 = sigma * sigma
    if sigma >= 1:
        # Poisson summation: Z = sqrt(2π)σ·(1 + 2Σ_k exp(-2π²σ²k²)); three terms reach float precision.
        z = (
            math.sqrt(2 * math.pi)
            * sigma
            * (1 + 2 * sum(math.exp(-2 * math.pi**2 * s2 * k * k) for k in (1, 2, 3)))
        )
    else:
        k = np.arange(-60, 61, dtype=np.float64)
        z = float(np.sum(np.exp(-(k * k) / (2 * s2))))
    xs = _ints(x).astype(np.float64)
    return np.exp(-(xs * xs) / (2 * s2)) / z


def _difference_pmf(one_sided: FloatArray, x: npt.ArrayLike) -> FloatArray:
    """pmf of ``A - B`` for iid ``A, B`` on ``0..J`` with pmf ``one_sided``: ``Σ_j p(j+|x|)p(j)``."""
    size = one_sided.size
    out = np.zeros(_ints(x).shape, dtype=np.float64)
    flat = np.abs(_ints(x)).ravel()
    res = out.ravel()
    for i, k in enumerate(flat):
        if k < size:
            res[i] = float(np.dot(one_sided[k:], one_sided[: size - k]))
    return res.reshape(out.shape)


def skellam_pmf(x: npt.ArrayLike, *, variance: float) -> FloatArray:
    """pmf of ``Poisson(V/2) - Poisson(V/2)`` by convolving the Poisson pmfs."""
    if variance <= 0:
        raise DpParameterError("variance must be positive")
    lam = variance / 2
    top = int(lam + 45 * math.sqrt(lam) + 60)
    if top > _MAX_SUPPORT:
        raise DpParameterError("variance too large for the exact Skellam pmf")
    k = np.arange(top + 1, dtype=np.float64)
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(k[1:]))))
    pois = np.exp(-lam + k * math.log(lam) - log_fact)
    return _difference_pmf(pois, x)


def negative_binomial_pmf(k: npt.ArrayLike, *, r: float, p: float) -> FloatArray:
    """``Γ(k+r)/(Γ(r)k!)·p^r·(1-p)^k``: failures before the r-th success, real ``r > 0``."""
    ks = _ints(k)
    top = int(ks.max(initial=0))
    j = np.arange(top + 1, dtype=np.float64)
    # Ratio recursion P(j+1)/P(j) = (j+r)/(j+1)·(1-p), accumulated in logs to avoid underflow.
    steps = np.log((j[:-1] + r) / (j[:-1] + 1)) + math.log1p(-p)
    logs = r * math.log(p) + np.concatenate(([0.0], np.cumsum(steps)))
    out = np.where(ks >= 0, np.exp(logs[np.clip(ks, 0, top)]), 0.0)
    return np.asarray(out, dtype=np.float64)


def polya_pmf(x: npt.ArrayLike, *, r: float, scale: float) -> FloatArray:
    """pmf of ``NB(r, 1-α) - NB(r, 1-α)``, ``α = exp(-1/scale)``; ``r = 1`` is the discrete Laplace."""
    if r <= 0 or scale <= 0:
        raise DpParameterError("r and scale must be positive")
    p = -math.expm1(-1.0 / scale)
    mean = r * (1 - p) / p
    sd = math.sqrt(r * (1 - p)) / p
    top = int(mean + 45 * sd + 46 * scale + 60)
    if top > _MAX_SUPPORT:
        raise DpParameterError("parameters too large for the exact Pólya pmf")
    return _difference_pmf(negative_binomial_pmf(np.arange(top + 1), r=r, p=p), x)
