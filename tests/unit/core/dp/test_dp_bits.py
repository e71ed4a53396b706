"""The chosen modular width keeps wrap-around rare, and the reported probability is an upper bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tessera.core.dp import noise
from tessera.core.dp.bits import choose_bits, max_abs_node_for, noise_log_tail, wrap_probability
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.plan import NoisePlan
from tessera.core.dp.quantise import decode, encode, modular_sum


def _dg(n=10, t=9, sigma=40.0):
    return NoisePlan(mechanism="discrete_gaussian", survivors_t=t, n_nodes=n, sigma_total=sigma)


def test_choose_bits_is_minimal_and_meets_target():
    plan = _dg()
    width = choose_bits(plan=plan, max_abs_node=5_000, dim=1_000, target=2.0**-40)
    assert width.wrap_probability <= 2.0**-40
    assert width.log2_wrap_probability <= -40
    assert 2.0**width.log2_wrap_probability == pytest.approx(width.wrap_probability, rel=1e-9)
    assert wrap_probability(plan=plan, max_abs_node=5_000, bits=width.bits - 1, dim=1_000) > 2.0**-40
    # 10 nodes * 5000 needs 17 bits for the signal alone; the noise needs a little more headroom.
    assert 17 <= width.bits <= 18


def test_wrap_probability_decreases_with_bits():
    plan = _dg()
    probs = [wrap_probability(plan=plan, max_abs_node=100, bits=b, dim=10) for b in range(8, 20)]
    assert all(a >= b for a, b in itertools.pairwise(probs))
    assert wrap_probability(plan=plan, max_abs_node=10_000, bits=8, dim=1) == 1.0


@pytest.mark.parametrize(
    "plan",
    [
        NoisePlan(mechanism="discrete_gaussian", survivors_t=3, n_nodes=4, sigma_total=30.0),
        NoisePlan(mechanism="skellam", survivors_t=3, n_nodes=4, sigma_total=30.0),
        NoisePlan(mechanism="polya", survivors_t=3, n_nodes=4, scale=20.0),
        NoisePlan(mechanism="polya", survivors_t=4, n_nodes=4, scale=20.0),
    ],
)
def test_reported_probability_bounds_the_observed_wrap_rate(rng, plan):
    bits, trials, max_abs = 8, 40_000, 10
    vectors = rng.integers(-max_abs, max_abs, size=(plan.n_nodes, trials), endpoint=True)
    shares = []
    for vec in vectors:
        if plan.mechanism == "polya":
            share = noise.polya_share(scale=plan.scale, parties=plan.survivors_t, size=trials, rng=rng)
        elif plan.mechanism == "skellam":
            share = noise.skellam_share(
                variance_total=plan.sigma_total**2, survivors_t=plan.survivors_t, size=trials, rng=rng
            )
        else:
            share = noise.discrete_gaussian_share(
                sigma_total=plan.sigma_total, survivors_t=plan.survivors_t, size=trials, rng=rng
            )
        shares.append(vec + share)
    true_sum = np.sum(shares, axis=0)
    # Shares that do not fit 8 bits would be refused by encode; keep the range check honest.
    fits = np.all(np.abs(np.array(shares)) < 2**7, axis=0)
    encoded = [encode(s[fits], bits=bits) for s in shares]
    decoded = decode(modular_sum(encoded, bits=bits), bits=bits)
    observed = float(np.mean(decoded != true_sum[fits]))
    bound = wrap_probability(plan=plan, max_abs_node=max_abs, bits=bits, dim=1)
    assert observed > 0  # the setting is tight enough to wrap sometimes, so the check has teeth
    assert observed <= bound


def test_discrete_laplace_tail_is_exact():
    plan = NoisePlan(mechanism="polya", survivors_t=5, n_nodes=5, scale=3.0)
    alpha = math.exp(-1 / 3.0)
    for h in (1, 4, 17):
        assert math.exp(noise_log_tail(plan, threshold=h)) == pytest.approx(2 * alpha**h / (1 + alpha))


def test_choose_bits_fails_closed_when_nothing_fits():
    with pytest.raises(DpParameterError):
        choose_bits(plan=_dg(), max_abs_node=2**62, dim=1)
    with pytest.raises(DpParameterError):
        choose_bits(plan=_dg(), max_abs_node=1, dim=1, target=0.0)


def test_max_abs_node_bounds_quantised_sums(rng):
    from tessera.core.dp.clip import clip_l2
    from tessera.core.dp.quantise import fixed_point_scale, quantise_sum

    scale = fixed_point_scale(clip_bound=2.0, value_bits=10)
    bound = max_abs_node_for(linf_bound=2.0, scale=scale, max_customers=300)
    assert bound == 300 * 511
    rows = np.tile([[2.0, 0.0], [0.0, -2.0]], (150, 1))
    out = quantise_sum(clip_l2(rows, bound=2.0), scale=scale, rng=rng)
    assert np.abs(out.values).max() <= bound
    with pytest.raises(DpParameterError):
        max_abs_node_for(linf_bound=1.0, scale=0.0, max_customers=1)
