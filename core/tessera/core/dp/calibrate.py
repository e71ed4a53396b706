"""Calibration: the least noise that meets a target (ε, δ) or ε — the inverse of ``accounting``.

All searches are bisections on monotone functions (more noise never costs more privacy), stopped
at a relative precision of 1e-9 and always returning the side that meets the target.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from tessera.core.dp.accounting import rho_to_epsilon, skellam_rho
from tessera.core.dp.ddg import ddg_sigma
from tessera.core.dp.errors import DpParameterError

_ITERATIONS = 200


def _check_target(epsilon: float, delta: float) -> None:
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise DpParameterError("target epsilon must be a positive finite number")
    if not 0 < delta < 1:
        raise DpParameterError("target delta must be in (0, 1)")


def rho_for(*, epsilon: float, delta: float) -> float:
    """Largest ρ whose tight conversion gives at most ``epsilon`` at ``delta``.

    Cached: every node and the coordinator price the same (ε, δ) for every round of a job, and the
    bisection runs a few dozen conversions (about 20 ms).
    """
    _check_target(epsilon, delta)
    return _rho_for(float(epsilon), float(delta))


@functools.lru_cache(maxsize=1024)
def _rho_for(epsilon: float, delta: float) -> float:
    lo, hi = 0.0, epsilon  # ρ-zCDP gives ε >= ρ, so ρ = ε is always too much
    for _ in range(_ITERATIONS):
        mid = (lo + hi) / 2
        if rho_to_epsilon(mid, delta=delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def _least_noise(rho_of: Callable[[float], float], rho_target: float, start: float) -> float:
    """Smallest ``x >= start`` with ``rho_of(x) <= rho_target`` (``rho_of`` decreasing in ``x``)."""
    lo, hi = start, start
    while rho_of(hi) > rho_target:
        lo, hi = hi, hi * 2
        if hi > 1e30:
            raise DpParameterError("no finite noise meets this target")
    if lo == hi:
        return hi
    for _ in range(_ITERATIONS):
        mid = (lo + hi) / 2
        if rho_of(mid) <= rho_target:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi


def gaussian_sigma(*, epsilon: float, delta: float, l2: float) -> float:
    """σ of the central discrete Gaussian for (ε, δ): ``Δ₂/sqrt(2ρ)`` with ``ρ = rho_for(ε, δ)``."""
    if l2 <= 0:
        raise DpParameterError("l2 sensitivity must be positive")
    return l2 / math.sqrt(2 * rho_for(epsilon=epsilon, delta=delta))


def distributed_gaussian_sigma(
    *,
    epsilon: float,
    delta: float,
    l1: float,
    l2: float,
    survivors_t: int,
    dim: int,
    linf: float | None = None,
) -> float:
    """``sigma_total`` such that any ``t`` shares of ``N_Z(0, σ²/t)`` meet (ε, δ) (``ddg.ddg_sigma``).

    The tight accountant of the exact sum: with small shares the sum's real variance is well below
    ``σ²``, so ``sigma_total`` may exceed the central value while the noise actually added does not.
    """
    rho = rho_for(epsilon=epsilon, delta=delta)
    return ddg_sigma(rho=rho, survivors_t=survivors_t, l1=l1, l2=l2, linf=linf, dim=dim)


def skellam_sigma(*, epsilon: float, delta: float, l1: float, l2: float) -> float:
    """sqrt of the Skellam variance meeting (ε, δ) under AKL 2021 Thm. 3.5 (via ``skellam_rho``)."""
    rho = rho_for(epsilon=epsilon, delta=delta)
    start = gaussian_sigma(epsilon=epsilon, delta=delta, l2=l2)
    return _least_noise(lambda s: skellam_rho(l1=l1, l2=l2, variance=s * s), rho, start)


def polya_scale(*, epsilon: float, l1: float) -> float:
    """Discrete Laplace scale ``b = Δ₁/ε`` (``α = exp(-ε/Δ₁)``) for pure ε-DP of the Pólya sum."""
    if not math.isfinite(epsilon) or epsilon <= 0 or l1 <= 0:
        raise DpParameterError("epsilon and l1 sensitivity must be positive")
    return l1 / epsilon
