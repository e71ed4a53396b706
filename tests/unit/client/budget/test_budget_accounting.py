"""Pure budget arithmetic: ρ of a job, period fit, what is left (no database)."""

from __future__ import annotations

import math

import pytest
from _budget_helpers import DELTA, LIMITS
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.client.budget._accounting import Capacity, as_charge, fits, job_rho, largest_job
from tessera.core.dp import Charge, compose, rho_for, rho_to_epsilon
from tessera.core.errors import ConfigError, InvalidRequest
from tessera.core.policy.model import PrivacyLimits

CAP = Capacity.of(LIMITS)


def test_capacity_is_the_period_epsilon_in_rho() -> None:
    assert CAP.rho_limit == rho_for(epsilon=1.0, delta=DELTA)
    assert rho_to_epsilon(CAP.rho_limit, delta=DELTA) <= 1.0 + 1e-12


def test_job_rho_pure_and_approximate() -> None:
    assert job_rho(epsilon=0.5, delta=0.0) == 0.125
    approx = job_rho(epsilon=0.5, delta=DELTA)
    assert approx < 0.125 and rho_to_epsilon(approx, delta=DELTA) <= 0.5 + 1e-12
    # A smaller δ for the same ε buys less ρ (it is the stricter promise).
    assert job_rho(epsilon=0.5, delta=1e-9) < approx
    with pytest.raises(InvalidRequest):
        job_rho(epsilon=math.inf, delta=DELTA)


def test_fits_counts_rho_not_naive_epsilon() -> None:
    half = as_charge(rho=job_rho(epsilon=0.5, delta=DELTA), epsilon=0.5, delta=DELTA)
    assert fits([half, half], half, CAP)  # naive Σε = 1.5 > 1, composed ε < 1
    assert not fits([half, half, half], half, CAP)
    full = as_charge(rho=CAP.rho_limit, epsilon=1.0, delta=DELTA)
    assert fits([], full, CAP) and not fits([half], full, CAP)


def test_pure_charges_may_use_basic_composition() -> None:
    pure = as_charge(rho=0.125, epsilon=0.5, delta=0.0)
    assert fits([pure], pure, CAP) and not fits([pure, pure], pure, CAP)
    approx = as_charge(rho=job_rho(epsilon=0.1, delta=DELTA), epsilon=0.1, delta=DELTA)
    # Mixed with an approximate-DP charge only ρ counts, and 0.125 alone exceeds the capacity.
    assert not fits([approx], pure, CAP)


def test_largest_job_fits_exactly() -> None:
    half = as_charge(rho=job_rho(epsilon=0.5, delta=DELTA), epsilon=0.5, delta=DELTA)
    assert largest_job([], CAP) == 0.5  # capped by the per-job limit
    left = largest_job([half, half, half], CAP)
    assert 0 < left < 0.5
    assert fits(
        [half, half, half],
        as_charge(rho=job_rho(epsilon=left * 0.999, delta=DELTA), epsilon=left, delta=DELTA),
        CAP,
    )
    assert not fits(
        [half, half, half],
        as_charge(rho=job_rho(epsilon=left * 1.01, delta=DELTA), epsilon=left, delta=DELTA),
        CAP,
    )


@pytest.mark.parametrize(
    "limits",
    [
        PrivacyLimits(epsilon_per_job=0.0, epsilon_per_period=1.0, period_days=30, delta=DELTA),
        PrivacyLimits(epsilon_per_job=0.5, epsilon_per_period=math.nan, period_days=30, delta=DELTA),
        PrivacyLimits(epsilon_per_job=0.5, epsilon_per_period=1.0, period_days=0, delta=DELTA),
        PrivacyLimits(epsilon_per_job=0.5, epsilon_per_period=1.0, period_days=30, delta=0.0),
    ],
)
def test_bad_limits_fail_closed(limits: PrivacyLimits) -> None:
    with pytest.raises(ConfigError):
        Capacity.of(limits)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.floats(0.01, 0.5), st.sampled_from([0.0, 1e-8, 1e-7, DELTA])),
        min_size=1,
        max_size=12,
    )
)
def test_whatever_is_accepted_never_exceeds_the_period(jobs: list[tuple[float, float]]) -> None:
    accepted: list[Charge] = []
    for epsilon, delta in jobs:
        new = as_charge(rho=job_rho(epsilon=epsilon, delta=delta), epsilon=epsilon, delta=delta)
        if fits(accepted, new, CAP):
            accepted.append(new)
    # The composed cost at the policy's δ (ρ converted, or Σε when all are pure) stays in the limit.
    assert compose(accepted, delta=DELTA).epsilon <= LIMITS.epsilon_per_period * (1 + 1e-9)
