"""Pure budget arithmetic: the ρ of a job, whether it fits the period, what is left. No I/O.

A period's cost is the sum of ρ over its charges (zCDP composition, tight for Gaussian-type
noise); the limit ``epsilon_per_period`` at the policy's δ becomes a ρ capacity once, with
``rho_for`` (the largest ρ whose tight conversion stays within it). When every charge in the
window — the new one included — is pure ε-DP (δ = 0), basic composition Σε ≤ limit is also a valid
proof and is accepted, mirroring ``tessera.core.dp.compose``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.core.dp import Charge, compose, pure_to_rho, rho_for, rho_to_epsilon
from tessera.core.errors import ConfigError, InvalidRequest
from tessera.core.policy.model import PrivacyLimits

_MECHANISM = "budget"
# A release may cost a hair more than its reservation through float rounding of the same maths.
RHO_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class Capacity:
    """The policy's limits with the period limit turned into ρ (computed once per ledger)."""

    limits: PrivacyLimits
    rho_limit: float

    @classmethod
    def of(cls, limits: PrivacyLimits) -> Capacity:
        if not isinstance(limits, PrivacyLimits):
            raise TypeError("limits must be PrivacyLimits")
        eps_job, eps_period = limits.epsilon_per_job, limits.epsilon_per_period
        if not all(math.isfinite(x) and x > 0 for x in (eps_job, eps_period)):
            raise ConfigError("privacy limits need positive finite epsilon per job and per period")
        if not 0 < limits.delta < 1 or limits.period_days < 1:
            raise ConfigError("privacy limits need delta in (0, 1) and a period of at least one day")
        return cls(limits, rho_for(epsilon=eps_period, delta=limits.delta))


def check_request(epsilon: float, delta: float) -> None:
    """A job's (ε, δ) must be numbers with ε > 0 finite and 0 <= δ < 1 (δ = 0: pure ε-DP)."""
    for value in (epsilon, delta):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest("a budget request needs epsilon and delta as numbers")
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidRequest("a budget request needs a positive finite epsilon")
    if not 0 <= delta < 1:
        raise InvalidRequest("a budget request needs delta in [0, 1)")


def job_rho(*, epsilon: float, delta: float) -> float:
    """ρ charged for a job of (ε, δ): ``ε²/2`` for pure ε-DP, else the largest ρ meeting (ε, δ)."""
    check_request(epsilon, delta)
    if delta == 0:
        return pure_to_rho(epsilon)
    return rho_for(epsilon=epsilon, delta=delta)


def as_charge(*, rho: float, epsilon: float, delta: float) -> Charge:
    return Charge(rho=rho, epsilon=epsilon, delta=delta, mechanism=_MECHANISM)


def fits(used: Sequence[Charge], new: Charge, capacity: Capacity) -> bool:
    """Whether ``new`` may join the charges already spent or reserved in the window."""
    rho_total = math.fsum(c.rho for c in used) + new.rho
    if rho_total <= capacity.rho_limit:
        return True
    if new.pure and all(c.pure for c in used):
        return math.fsum(c.epsilon for c in used) + new.epsilon <= capacity.limits.epsilon_per_period
    return False


def composed_epsilon(charges: Sequence[Charge], *, delta: float) -> float:
    """ε of the composed charges at ``delta`` (0 for none); never a naive sum unless all are pure."""
    return compose(charges, delta=delta).epsilon if charges else 0.0


def largest_job(used: Sequence[Charge], capacity: Capacity) -> float:
    """The largest ε of a single new job at the policy's δ (or pure, if that is larger) that fits."""
    limits = capacity.limits
    rho_left = capacity.rho_limit - math.fsum(c.rho for c in used)
    best = rho_to_epsilon(rho_left, delta=limits.delta) if rho_left > 0 else 0.0
    if all(c.pure for c in used):
        best = max(best, limits.epsilon_per_period - math.fsum(c.epsilon for c in used))
    return max(0.0, min(best, limits.epsilon_per_job))


def check_plan(*, epsilon: float, delta: float, rho: float | None, rounds: int) -> float:
    """The ρ to reserve for a job of ``rounds`` rounds stating (ε, δ); ``rho`` is its priced total.

    Without ``rho`` the job costs the largest ρ meeting (ε, δ). With it (the sum of the rounds'
    ρ, zCDP composition), it must be positive and fit within (ε, δ). Several rounds or a priced
    ρ need δ > 0: they are accounted in zCDP, whose conversion needs a δ.
    """
    check_request(epsilon, delta)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidRequest("a budget request needs rounds as a whole number of at least 1")
    if delta == 0 and (rounds > 1 or rho is not None):
        raise InvalidRequest("a job of several rounds, or priced in rho, needs delta above 0")
    ceiling = job_rho(epsilon=epsilon, delta=delta)
    if rho is None:
        return ceiling
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not math.isfinite(rho) or rho <= 0:
        raise InvalidRequest("a budget request needs rho as a positive finite number")
    if rho > ceiling * (1 + RHO_SLACK):
        raise InvalidRequest("the job's rounds cost more rho than its stated epsilon and delta allow")
    return float(rho)


def round_epsilon(*, rho: float, reserved_rho: float, epsilon: float, delta: float) -> float:
    """ε shown for one round charge of ``rho`` out of a reservation of ``reserved_rho`` at (ε, δ)."""
    if math.isclose(rho, reserved_rho, rel_tol=RHO_SLACK):
        return epsilon
    if delta == 0:
        return math.sqrt(2 * rho)  # a pure release of ρ = ε²/2
    return rho_to_epsilon(rho, delta=delta)
