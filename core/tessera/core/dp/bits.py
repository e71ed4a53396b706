"""Choose the modular bit width of the sum so that wrap-around has negligible probability.

The true sum of a coordinate is ``signal + noise`` with ``|signal| <= summands · max_abs_node``
(every node's quantised value is bounded by its clip, its scale and a declared cap on its customers
per round; the cap is a public policy figure, never the node's real count). The decoded sum is
wrong only if it leaves ``[-2^(k-1), 2^(k-1) - 1]``, which needs ``|noise| >= 2^(k-1) - signal``.
The returned probability is a union bound over coordinates of rigorous tail bounds:

* discrete Gaussian shares are ``σ²``-subgaussian (Canonne–Kamath–Steinke 2020), so a sum of
  variance proxy ``V`` has ``P(|Z| >= h) <= 2·exp(-h²/(2V))``;
* Skellam ``Sk(V)`` (Chernoff): ``2·exp(V(cosh λ - 1) - λh)`` at ``λ = asinh(h/V)``;
* Pólya sums, ``NB(R, p) - NB(R, p)`` (Chernoff, minimised numerically); the discrete Laplace
  (``R = 1``) tail ``2α^h/(1+α)`` is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.plan import Mechanism, NoisePlan


@dataclass(frozen=True, slots=True)
class BitWidth:
    bits: int
    wrap_probability: float  # upper bound on P(any coordinate of the decoded sum is wrong)
    log2_wrap_probability: float  # the same bound as a power of two (does not underflow to 0)


def _polya_log_tail(h: float, *, r_total: float, scale: float) -> float:
    alpha = math.exp(-1.0 / scale)
    if r_total == 1.0:
        return math.log(2.0) + h * math.log(alpha) - math.log1p(alpha)
    p = 1 - alpha
    # The MGF exists for 0 < λ < -ln α = 1/scale; scan that range (log-spaced near both ends).
    lam = (1.0 / scale) * np.concatenate((np.logspace(-9, -1e-9, 4000), 1 - np.logspace(-12, -1e-3, 2000)))
    log_mgf = r_total * (2 * math.log(p) - np.log1p(-alpha * np.exp(lam)) - np.log1p(-alpha * np.exp(-lam)))
    return math.log(2.0) + float(np.min(log_mgf - lam * h))


def noise_log_tail(plan: NoisePlan, *, threshold: float, summands: int | None = None) -> float:
    """Natural log of an upper bound on ``P(|Z| >= threshold)`` for the noise of a sum of shares."""
    count = plan.n_nodes if summands is None else summands
    if threshold <= 0:
        return 0.0
    h = float(threshold)
    if plan.mechanism is Mechanism.POLYA:
        log_tail = _polya_log_tail(h, r_total=count / plan.survivors_t, scale=plan.scale)
    elif plan.mechanism is Mechanism.SKELLAM:
        v = plan.variance_of_sum(count)
        x = h / v
        log_tail = math.log(2.0) + v * (math.sqrt(1 + x * x) - 1) - h * math.asinh(x)
    else:
        log_tail = math.log(2.0) - h * h / (2 * plan.variance_of_sum(count))
    return min(0.0, log_tail)


def max_abs_node_for(*, linf_bound: float, scale: float, max_customers: int) -> int:
    """Bound on ``|coordinate|`` of a node's quantised sum: ``max_customers · ceil(linf_bound · scale)``.

    ``linf_bound`` is the largest magnitude one clipped row can have in a coordinate (the clip
    bound); stochastic rounding moves it up by less than one unit, hence the ceiling.
    ``max_customers`` must be a declared cap (policy), not the node's actual count.
    """
    if linf_bound < 0 or scale <= 0 or max_customers < 0:
        raise DpParameterError("linf_bound, scale and max_customers must be non-negative (scale positive)")
    return max_customers * math.ceil(linf_bound * scale)


def log_wrap_probability(*, plan: NoisePlan, max_abs_node: int, bits: int, dim: int) -> float:
    """Natural log of ``wrap_probability`` (useful when the bound is below 1e-308)."""
    if max_abs_node < 0 or dim < 1:
        raise DpParameterError("max_abs_node must be >= 0 and dim >= 1")
    headroom = 2 ** (bits - 1) - plan.n_nodes * max_abs_node
    if headroom <= 0:
        return 0.0
    return min(0.0, noise_log_tail(plan, threshold=headroom) + math.log(dim))


def wrap_probability(*, plan: NoisePlan, max_abs_node: int, bits: int, dim: int) -> float:
    """Upper bound on the probability that the decoded ``bits``-bit sum of all nodes is wrong."""
    return math.exp(log_wrap_probability(plan=plan, max_abs_node=max_abs_node, bits=bits, dim=dim))


def choose_bits(
    *, plan: NoisePlan, max_abs_node: int, dim: int, target: float = 2.0**-40, max_bits: int = 64
) -> BitWidth:
    """Smallest width in ``[8, max_bits]`` whose wrap probability is at most ``target``.

    Raises ``DpParameterError`` (fail closed) when even ``max_bits`` is not enough.
    """
    if not 0 < target < 1:
        raise DpParameterError("target wrap probability must be in (0, 1)")
    for bits in range(8, max_bits + 1):
        log_p = log_wrap_probability(plan=plan, max_abs_node=max_abs_node, bits=bits, dim=dim)
        if log_p <= math.log(target):
            return BitWidth(
                bits=bits, wrap_probability=math.exp(log_p), log2_wrap_probability=log_p / math.log(2)
            )
    raise DpParameterError("no bit width up to the maximum keeps wrap-around negligible; lower the scale")
