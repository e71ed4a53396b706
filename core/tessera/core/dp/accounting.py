"""Privacy accounting in zero-concentrated DP (ρ-zCDP), with conversion to (ε, δ) for display.

Why zCDP: the ledger adds ρ over a period, which is tight for Gaussian-type noise, whereas summing
ε over releases overstates the cost by a factor that grows like sqrt(k). Pure ε-DP releases
(discrete Laplace) enter the same sum as ``ρ = ε²/2`` (Bun & Steinke 2016, Prop. 1.4) and, when a
period holds only pure releases, basic composition of ε is offered too; the cheaper is reported.

Bounds used (sensitivities in integer units, see ``quantise.integer_sensitivity``):

* central discrete Gaussian ``N_Z(0, σ²)^d``: ``ρ = Δ₂²/(2σ²)`` (Canonne, Kamath & Steinke 2020,
  Thm. 4 and its multivariate form);
* sum of ``n`` independent ``N_Z(0, σ²)`` (σ >= 1/2), Kairouz, Liu & Steinke, "The Distributed
  Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", ICML 2021, Thm. 1:
  Rényi DP ``min(αΔ₂²/(2nσ²) + τd, α/2·(Δ₂/(sqrt(n)σ) + τ·sqrt(d))²)`` for every ``α >= 1``, with
  ``τ = 10·Σ_{k=1}^{n-1} exp(-2π²σ²·k/(k+1))`` (``distributed_gaussian_rho``, a fallback and
  cross-check); the tight, exact accountant of the same sum is ``ddg.ddg_rho``;
* Skellam with variance ``V``: the RDP bound of Agarwal, Kairouz & Liu 2021, Thm. 3.5 (not the
  Gaussian approximation ``Δ₂²/(2V)``), ``ε(α) = αΔ₂²/(2V) + min(((2α-1)Δ₂² + 6Δ₁)/(4V²),
  3Δ₁/(2V))``, turned into a ρ valid for every ``α > 1`` (see ``skellam_rho``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from tessera.core.dp.clip import Sensitivity
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.plan import Mechanism, NoisePlan

COMPOSED = "composed"
FloatArray = npt.NDArray[np.float64]


def _check_delta(delta: float) -> float:
    if not 0 < delta < 1:
        raise DpParameterError("delta must be in (0, 1)")
    return delta


def _check_rho(rho: float) -> float:
    if not rho >= 0 or math.isnan(rho):
        raise DpParameterError("rho must be a non-negative number")
    return rho


def gaussian_rho(*, l2: float, sigma: float) -> float:
    """ρ of the central (discrete) Gaussian mechanism: ``Δ₂²/(2σ²)``."""
    if sigma <= 0 or l2 < 0:
        raise DpParameterError("sigma must be positive and l2 non-negative")
    return l2 * l2 / (2 * sigma * sigma)


def ddg_tau(*, sigma_node: float, summands: int) -> float:
    """The ``τ`` term of Kairouz–Liu–Steinke 2021: how far a sum of discrete Gaussians is from one."""
    k = np.arange(1, summands, dtype=np.float64)
    return float(10 * np.sum(np.exp(-2 * math.pi**2 * sigma_node**2 * k / (k + 1))))


def distributed_gaussian_rho(*, l1: float, l2: float, sigma_node: float, summands: int, dim: int) -> float:
    """ρ of the sum of ``summands`` independent ``N_Z(0, σ_node²)^d`` shares (KLS 2021, Thm. 1).

    Thm. 1 bounds the Rényi divergence of every order ``α >= 1`` by the smaller of
    ``αΔ₂²/(2nσ²) + τd`` and ``α/2·(Δ₂/(sqrt(n)σ) + τ·sqrt(d))²``; ``a·α + b`` with ``b >= 0`` is at
    most ``(a + b)·α`` for ``α >= 1``, so the first is ``(Δ₂²/(2nσ²) + τd)``-zCDP and the second
    ``(Δ₂/(sqrt(n)σ) + τ·sqrt(d))²/2``-zCDP. (An earlier version of this function put ``τd/4`` in the
    first branch and ``Δ₁`` in the second; neither is the published statement.) ``l1`` is unused by
    the theorem and kept for the signature. Loose when ``σ_node`` is near 1/2 or ``n·d`` is large:
    ``ddg.ddg_rho`` is the tight accountant.
    """
    del l1
    if sigma_node < 0.5:
        raise DpParameterError("the distributed discrete Gaussian bound needs sigma_node >= 1/2")
    if summands < 1 or dim < 1:
        raise DpParameterError("summands and dim must be at least 1")
    tau = ddg_tau(sigma_node=sigma_node, summands=summands)
    var = summands * sigma_node**2
    first = l2 * l2 / (2 * var) + tau * dim
    second = (l2 / math.sqrt(var) + tau * math.sqrt(dim)) ** 2 / 2
    return min(first, second)


def skellam_rdp(order: float, *, l1: float, l2: float, variance: float) -> float:
    """Rényi DP of order ``α`` of Skellam noise with variance ``V`` (AKL 2021, Thm. 3.5)."""
    if order <= 1 or variance <= 0:
        raise DpParameterError("order must exceed 1 and variance be positive")
    v = variance
    return order * l2 * l2 / (2 * v) + min(
        ((2 * order - 1) * l2 * l2 + 6 * l1) / (4 * v * v), 3 * l1 / (2 * v)
    )


def skellam_rho(*, l1: float, l2: float, variance: float) -> float:
    """A ρ with ``skellam_rdp(α) <= ρα`` for every ``α > 1``.

    Either branch of the min is affine in α, ``a·α + b``; with ``b >= 0`` it is at most ``(a+b)·α``
    for ``α >= 1``. The first branch gives ``Δ₂²/(2V) + Δ₂²/(2V²) + max(0, (6Δ₁-Δ₂²)/(4V²))``, the
    second ``Δ₂²/(2V) + 3Δ₁/(2V)``; the smaller is returned. The extra over the Gaussian value is
    ``O(1/V²)``, negligible at the variances we use.
    """
    v = variance
    if v <= 0:
        raise DpParameterError("variance must be positive")
    base = l2 * l2 / (2 * v)
    first = base + l2 * l2 / (2 * v * v) + max(0.0, (6 * l1 - l2 * l2) / (4 * v * v))
    second = base + 3 * l1 / (2 * v)
    return min(first, second)


def pure_to_rho(epsilon: float) -> float:
    """ε-DP implies ``ε²/2``-zCDP (Bun & Steinke 2016, Prop. 1.4)."""
    if epsilon < 0:
        raise DpParameterError("epsilon must be non-negative")
    return epsilon * epsilon / 2


def rho_to_epsilon_simple(rho: float, *, delta: float) -> float:
    """``ε = ρ + 2·sqrt(ρ·ln(1/δ))`` (Bun & Steinke 2016, Prop. 1.3): simple, a little loose."""
    return _check_rho(rho) + 2 * math.sqrt(rho * math.log(1 / _check_delta(delta)))


def _conversion_curve(rho: float, delta: float, orders: FloatArray) -> FloatArray:
    a = orders
    curve: FloatArray = a * rho + (math.log(1 / delta) + (a - 1) * np.log1p(-1 / a) - np.log(a)) / (a - 1)
    return curve


def rho_to_epsilon(rho: float, *, delta: float) -> float:
    """Tight numerical conversion (Canonne, Kamath & Steinke 2020, Cor. 13):

    ``ε = min_{α>1} αρ + (ln(1/δ) + (α-1)·ln(1-1/α) - ln α)/(α-1)``, minimised on a log grid of
    orders and then refined; never above ``rho_to_epsilon_simple``. Cost: a few thousand flops.
    """
    _check_rho(rho)
    _check_delta(delta)
    if rho == 0:
        return 0.0
    orders = 1 + np.logspace(-6, 8, 1401)
    values = _conversion_curve(rho, delta, orders)
    best = int(np.argmin(values))
    lo, hi = orders[max(best - 1, 0)], orders[min(best + 1, orders.size - 1)]
    fine = np.linspace(lo, hi, 2001)
    eps = float(np.min(_conversion_curve(rho, delta, fine)))
    return max(0.0, min(eps, rho_to_epsilon_simple(rho, delta=delta)))


@dataclass(frozen=True, slots=True)
class Charge:
    """One release's privacy cost, as the budget ledger stores it.

    ``rho`` is what composes (adds); ``epsilon``/``delta`` are for display (δ = 0 means pure DP).
    ``params`` are plain numbers describing the noise (``NoisePlan.as_params``).
    """

    rho: float
    epsilon: float
    delta: float
    mechanism: str
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_rho(self.rho)
        if not self.epsilon >= 0 or not 0 <= self.delta < 1:
            raise DpParameterError("a charge needs epsilon >= 0 and delta in [0, 1)")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def pure(self) -> bool:
        return self.delta == 0


def charge_for(plan: NoisePlan, sensitivity: Sensitivity, *, delta: float, dim: int) -> Charge:
    """Price one release of a ``dim``-long vector under ``plan`` (sensitivity in integer units).

    The fewest shares a sum can hold is ``survivors_t``; more shares only add independent noise
    (post-processing), so ``t`` is the worst case charged. Discrete Gaussian shares are priced by
    the tight accountant ``ddg.ddg_rho`` (integer shifts within ``l1``, ``l2`` and ``linf``).
    """
    t = plan.survivors_t
    if plan.mechanism is Mechanism.POLYA:
        eps = sensitivity.l1 / plan.scale  # discrete Laplace, L1 sensitivity (pure ε-DP)
        return Charge(
            rho=pure_to_rho(eps),
            epsilon=eps,
            delta=0.0,
            mechanism=plan.mechanism.value,
            params=plan.as_params(),
        )
    if plan.mechanism is Mechanism.SKELLAM:
        rho = skellam_rho(l1=sensitivity.l1, l2=sensitivity.l2, variance=plan.sigma_total**2)
    else:
        # ddg imports this module (for ddg_tau); import it here to keep the graph acyclic.
        from tessera.core.dp.ddg import ddg_rho

        rho = ddg_rho(
            sigma_total=plan.sigma_total,
            survivors_t=t,
            l1=sensitivity.l1,
            l2=sensitivity.l2,
            linf=sensitivity.linf,
            dim=dim,
        )
    return Charge(
        rho=rho,
        epsilon=rho_to_epsilon(rho, delta=delta),
        delta=delta,
        mechanism=plan.mechanism.value,
        params=plan.as_params(),
    )


def compose(charges: Iterable[Charge], *, delta: float) -> Charge:
    """Total cost of several releases (e.g. a period): ρ adds; ε is derived, never summed naively.

    If every charge is pure, basic composition ``Σε`` (δ = 0) is also valid and is returned when it
    is the smaller ε; otherwise ε is converted from the summed ρ at ``delta``.
    """
    items = list(charges)
    rho = math.fsum(c.rho for c in items)
    if items and all(c.pure for c in items):
        pure_eps = math.fsum(c.epsilon for c in items)
        if pure_eps <= rho_to_epsilon(rho, delta=delta):
            return Charge(
                rho=rho, epsilon=pure_eps, delta=0.0, mechanism=COMPOSED, params={"releases": len(items)}
            )
    return Charge(
        rho=rho,
        epsilon=rho_to_epsilon(rho, delta=delta),
        delta=delta,
        mechanism=COMPOSED,
        params={"releases": len(items)},
    )
