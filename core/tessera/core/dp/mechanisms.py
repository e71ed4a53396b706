"""A small facade for a node's runner and the coordinator: add a noise share, size an interval.

A node calls one ``*_share`` function on its quantised integer vector before masking; the
coordinator, after unmasking and decoding, calls ``interval95`` with the charge's parameters to
print the 95% half-width of the noise on each released cell (divide by the scale for value units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from tessera.core.dp import noise
from tessera.core.dp.bits import noise_log_tail
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.plan import Mechanism, NoisePlan

IntArray = npt.NDArray[np.int64]
_Z975 = 1.959963984540054  # standard normal 97.5% quantile


def _vector(vector_int: npt.ArrayLike) -> IntArray:
    vec = np.asarray(vector_int)
    if vec.dtype.kind not in "iu":
        raise DpParameterError("noise shares are added to integer vectors only (quantise first)")
    # No copy for int64 input: callers get a fresh array from the in-place add below.
    return vec.astype(np.int64, copy=False)


def distributed_gaussian_share(
    vector_int: npt.ArrayLike, *, sigma_total: float, survivors_t: int, rng: np.random.Generator
) -> IntArray:
    """``vector + N_Z(0, σ²/t)`` per coordinate: any ``t`` such shares carry ``≈ N_Z(0, σ²)``.

    Returns a new array (the input is never modified). Cost: ~20 ns per coordinate for large σ
    (``noise.discrete_gaussian``) plus one add.
    """
    vec = _vector(vector_int)
    noisy = noise.discrete_gaussian_share(
        sigma_total=sigma_total, survivors_t=survivors_t, size=vec.shape, rng=rng
    )
    # The noise array is fresh, so adding into it saves one full-size temporary.
    np.add(noisy, vec, out=noisy)
    return noisy


def skellam_share(
    vector_int: npt.ArrayLike, *, sigma_total: float, survivors_t: int, rng: np.random.Generator
) -> IntArray:
    """``vector + Sk(σ²/t)``: any ``t`` shares carry exactly ``Sk(σ²)``."""
    vec = _vector(vector_int)
    return vec + noise.skellam_share(
        variance_total=sigma_total**2, survivors_t=survivors_t, size=vec.shape, rng=rng
    )


def polya_share(
    vector_int: npt.ArrayLike, *, scale: float, parties: int, rng: np.random.Generator
) -> IntArray:
    """``vector + Pólya(1/parties, scale)``: ``parties`` shares sum to exactly ``DLap(scale)``."""
    vec = _vector(vector_int)
    return vec + noise.polya_share(scale=scale, parties=parties, size=vec.shape, rng=rng)


def share_for(vector_int: npt.ArrayLike, *, plan: NoisePlan, rng: np.random.Generator) -> IntArray:
    """Add this node's share as ``plan`` says (dispatch used by the node's runner)."""
    if plan.mechanism is Mechanism.POLYA:
        return polya_share(vector_int, scale=plan.scale, parties=plan.survivors_t, rng=rng)
    if plan.mechanism is Mechanism.SKELLAM:
        return skellam_share(vector_int, sigma_total=plan.sigma_total, survivors_t=plan.survivors_t, rng=rng)
    return distributed_gaussian_share(
        vector_int, sigma_total=plan.sigma_total, survivors_t=plan.survivors_t, rng=rng
    )


def interval95(mechanism: Mechanism | str, params: Mapping[str, float]) -> float:
    """Half-width ``h`` (integer units) with ``P(|noise of the sum| <= h) >= ~0.95``.

    ``params`` is ``NoisePlan.as_params()`` (also stored in a ``Charge``); ``summands`` is how many
    shares the released sum holds. Discrete Gaussian and Skellam: ``1.96·sd`` (normal
    approximation, accurate once the sd exceeds about 1). Pólya with ``summands == survivors_t``:
    exact discrete Laplace quantile. Pólya with more shares: the Chernoff tail bound, which makes
    the interval conservative (it covers at least 95%).
    """
    plan = NoisePlan.from_params(mechanism, dict(params))
    summands = int(params.get("summands", plan.n_nodes))
    if plan.mechanism is not Mechanism.POLYA:
        return _Z975 * math.sqrt(plan.variance_of_sum(summands))
    target = math.log(0.05)
    # Smallest integer h with P(|Z| > h) = P(|Z| >= h + 1) <= 5%; the log tail is decreasing in h.
    lo, hi = 0, 1
    while noise_log_tail(plan, threshold=hi + 1, summands=summands) > target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if noise_log_tail(plan, threshold=mid + 1, summands=summands) > target:
            lo = mid
        else:
            hi = mid
    if noise_log_tail(plan, threshold=lo + 1, summands=summands) <= target:
        return float(lo)
    return float(hi)
