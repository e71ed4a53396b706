"""Accounting known answers, conversion bounds and calibration as the inverse of accounting."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.dp.accounting import (
    Charge,
    charge_for,
    compose,
    distributed_gaussian_rho,
    gaussian_rho,
    pure_to_rho,
    rho_to_epsilon,
    rho_to_epsilon_simple,
    skellam_rdp,
    skellam_rho,
)
from tessera.core.dp.calibrate import (
    distributed_gaussian_sigma,
    gaussian_sigma,
    polya_scale,
    rho_for,
    skellam_sigma,
)
from tessera.core.dp.clip import Sensitivity
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.plan import Mechanism, NoisePlan

UNIT = Sensitivity(l1=1.0, l2=1.0, linf=1.0)


def _gaussian_exact_delta(epsilon: float, mu: float) -> float:
    """Exact δ(ε) of the continuous Gaussian with Δ/σ = mu (Balle & Wang 2018, Thm. 8)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    return phi(mu / 2 - epsilon / mu) - math.exp(epsilon) * phi(-mu / 2 - epsilon / mu)


def test_gaussian_rho_known_answer():
    assert gaussian_rho(l2=1.0, sigma=1.0) == 0.5
    assert gaussian_rho(l2=2.0, sigma=4.0) == 0.125


def test_simple_conversion_hand_computed():
    # 0.5 + 2*sqrt(0.5*ln(1e6)) = 0.5 + 2*sqrt(6.907755...) = 0.5 + 2*2.628261 = 5.756522
    assert rho_to_epsilon_simple(0.5, delta=1e-6) == pytest.approx(5.756522, abs=1e-6)


def test_tight_conversion_known_answer_and_bounds():
    rho, delta = 0.5, 1e-6
    tight = rho_to_epsilon(rho, delta=delta)
    # Known answer, checked by brute force below; the Gaussian's own exact curve sits below it.
    assert tight == pytest.approx(5.22153, abs=1e-4)
    orders = 1 + np.linspace(0.01, 20, 200_001)
    brute = np.min(
        orders * rho
        + (math.log(1 / delta) + (orders - 1) * np.log1p(-1 / orders) - np.log(orders)) / (orders - 1)
    )
    assert tight == pytest.approx(brute, abs=1e-6)
    assert tight < rho_to_epsilon_simple(rho, delta=delta)
    # A Gaussian with Δ/σ = 1 is 0.5-zCDP; its exact δ at the converted ε must not exceed δ.
    assert _gaussian_exact_delta(tight, 1.0) <= delta


@settings(max_examples=40, deadline=None, derandomize=True)
@given(rho=st.floats(1e-5, 20.0), log_delta=st.floats(-12, -2))
def test_tight_conversion_is_valid_and_no_worse_than_simple(rho, log_delta):
    delta = 10.0**log_delta
    tight = rho_to_epsilon(rho, delta=delta)
    assert tight <= rho_to_epsilon_simple(rho, delta=delta) + 1e-12
    assert _gaussian_exact_delta(tight, math.sqrt(2 * rho)) <= delta * (1 + 1e-6)


def test_calibration_inverts_the_conversion():
    for eps, delta in [(1.0, 1e-6), (0.1, 1e-9), (5.0, 1e-5)]:
        rho = rho_for(epsilon=eps, delta=delta)
        assert rho_to_epsilon(rho, delta=delta) == pytest.approx(eps, rel=1e-7)
        assert rho_to_epsilon(rho, delta=delta) <= eps
        sigma = gaussian_sigma(epsilon=eps, delta=delta, l2=3.0)
        assert gaussian_rho(l2=3.0, sigma=sigma) == pytest.approx(rho, rel=1e-9)


def test_distributed_gaussian_calibration_meets_target_for_t_survivors():
    sigma = distributed_gaussian_sigma(epsilon=1.0, delta=1e-6, l1=1.0, l2=1.0, survivors_t=9, dim=4)
    plan = NoisePlan(mechanism=Mechanism.DISCRETE_GAUSSIAN, survivors_t=9, n_nodes=10, sigma_total=sigma)
    charge = charge_for(plan, UNIT, delta=1e-6, dim=4)
    assert charge.epsilon <= 1.0
    # ddg_sigma stops at a relative σ precision of 1e-4 (on the side that holds): ε within 5e-4.
    assert charge.epsilon == pytest.approx(1.0, abs=5e-4)
    central = gaussian_sigma(epsilon=1.0, delta=1e-6, l2=1.0)
    assert central <= sigma <= central * 1.001  # shares of sd 1.5: the sum is all but Gaussian


def test_distributed_rho_tau_term():
    big = distributed_gaussian_rho(l1=1.0, l2=1.0, sigma_node=10.0, summands=10, dim=1)
    assert big == pytest.approx(gaussian_rho(l2=1.0, sigma=10.0 * math.sqrt(10)), rel=1e-12)
    small = distributed_gaussian_rho(l1=1.0, l2=1.0, sigma_node=0.5, summands=10, dim=1)
    assert small > gaussian_rho(l2=1.0, sigma=0.5 * math.sqrt(10)) * 1.01
    with pytest.raises(DpParameterError):
        distributed_gaussian_rho(l1=1.0, l2=1.0, sigma_node=0.4, summands=10, dim=1)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(variance=st.floats(0.5, 1e5), l2=st.floats(0.1, 10.0), ratio=st.floats(1.0, 5.0))
def test_skellam_rho_dominates_the_rdp_curve(variance, l2, ratio):
    l1 = l2 * ratio
    rho = skellam_rho(l1=l1, l2=l2, variance=variance)
    for order in (1.001, 1.5, 2.0, 8.0, 64.0, 1e4):
        assert skellam_rdp(order, l1=l1, l2=l2, variance=variance) <= rho * order * (1 + 1e-12)
    assert rho >= l2 * l2 / (2 * variance)


def test_skellam_calibration_meets_target():
    sigma = skellam_sigma(epsilon=1.0, delta=1e-6, l1=30.0, l2=10.0)
    plan = NoisePlan(mechanism="skellam", survivors_t=3, n_nodes=4, sigma_total=sigma)
    charge = charge_for(plan, Sensitivity(l1=30.0, l2=10.0, linf=5.0), delta=1e-6, dim=9)
    assert charge.epsilon == pytest.approx(1.0, abs=1e-6)
    assert charge.epsilon <= 1.0


def test_polya_calibration_is_pure_epsilon():
    scale = polya_scale(epsilon=0.5, l1=2.0)
    assert scale == 4.0
    charge = charge_for(
        NoisePlan(mechanism="polya", survivors_t=5, n_nodes=5, scale=scale),
        UNIT.__class__(l1=2.0, l2=2.0, linf=2.0),
        delta=1e-6,
        dim=1,
    )
    assert (charge.epsilon, charge.delta, charge.rho) == (0.5, 0.0, pure_to_rho(0.5))
    assert charge.mechanism == "polya"


def test_composition_adds_rho_and_never_sums_epsilon_naively():
    plan = NoisePlan(mechanism="discrete_gaussian", survivors_t=3, n_nodes=3, sigma_total=20.0)
    one = charge_for(plan, UNIT, delta=1e-6, dim=1)
    total = compose([one] * 100, delta=1e-6)
    assert total.rho == pytest.approx(100 * one.rho)
    assert total.epsilon == pytest.approx(rho_to_epsilon(100 * one.rho, delta=1e-6))
    assert total.epsilon < 100 * one.epsilon / 5
    assert total.params["releases"] == 100


def test_composition_of_pure_charges():
    pure = Charge(rho=pure_to_rho(0.1), epsilon=0.1, delta=0.0, mechanism="polya")
    few = compose([pure] * 3, delta=1e-6)
    assert (few.epsilon, few.delta) == (pytest.approx(0.3), 0.0)
    many = compose([pure] * 400, delta=1e-6)
    assert many.delta == 1e-6 and many.epsilon < 40.0
    assert compose([], delta=1e-6).epsilon == 0.0


def test_charge_is_frozen_and_validated():
    charge = Charge(rho=0.1, epsilon=1.0, delta=1e-6, mechanism="skellam", params={"a": 1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        charge.rho = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        charge.params["a"] = 2.0  # type: ignore[index]
    for bad in ({"rho": -1.0}, {"delta": 1.0}, {"epsilon": float("nan")}):
        with pytest.raises(DpParameterError):
            Charge(**{"rho": 0.1, "epsilon": 1.0, "delta": 1e-6, "mechanism": "x", **bad})


@pytest.mark.parametrize(
    "call",
    [
        lambda: rho_to_epsilon(0.1, delta=0.0),
        lambda: rho_to_epsilon(-0.1, delta=1e-6),
        lambda: rho_for(epsilon=0.0, delta=1e-6),
        lambda: gaussian_sigma(epsilon=1.0, delta=1e-6, l2=0.0),
        lambda: polya_scale(epsilon=-1.0, l1=1.0),
        lambda: NoisePlan(mechanism="polya", survivors_t=3, n_nodes=2, scale=1.0),
        lambda: NoisePlan(mechanism="skellam", survivors_t=1, n_nodes=2),
        lambda: NoisePlan(mechanism="skellam", survivors_t=2.0, n_nodes=2, sigma_total=1.0),
    ],
)
def test_bad_privacy_parameters_fail_closed(call):
    with pytest.raises(DpParameterError):
        call()


def test_distributed_rho_is_the_published_kls_statement():
    # KLS 2021 Thm. 1: min(Δ²/(2nσ²) + τd, (Δ/(sqrt(n)σ) + τ·sqrt(d))²/2) as a zCDP ρ.
    sigma, n, d = 0.6, 50, 7
    k = np.arange(1, n)
    tau = 10 * float(np.sum(np.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))))
    var = n * sigma**2
    expected = min(1 / (2 * var) + tau * d, (1 / math.sqrt(var) + tau * math.sqrt(d)) ** 2 / 2)
    got = distributed_gaussian_rho(l1=5.0, l2=1.0, sigma_node=sigma, summands=n, dim=d)
    assert got == pytest.approx(expected, rel=1e-12)
    # The old first branch (τd/4) was smaller than the theorem allows.
    assert got > 1 / (2 * var) + tau * d / 4
