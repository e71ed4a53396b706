"""The facade: shares added by each node, the whole pipeline end to end, and 95% intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.core.dp import (
    Mechanism,
    NoisePlan,
    Sensitivity,
    charge_for,
    choose_bits,
    clip_l2,
    decode,
    dequantise,
    distributed_gaussian_share,
    distributed_gaussian_sigma,
    encode,
    fixed_point_scale,
    interval95,
    modular_sum,
    polya_share,
    quantise_sum,
    secure_generator,
    share_for,
    skellam_share,
)
from tessera.core.dp.errors import DpParameterError
from tessera.core.dp.rng import AesCtrGenerator

_Z = 1.959963984540054


def test_secure_generator_is_fresh_each_time():
    a, b = secure_generator(), secure_generator()
    # AES-256-CTR under a fresh key each time (was PCG64DXSM; see dp/rng.py and test_dp_rng.py).
    assert isinstance(a, AesCtrGenerator)
    assert a.integers(0, 2**63, size=4).tolist() != b.integers(0, 2**63, size=4).tolist()


def test_end_to_end_sum_of_nodes(rng):
    nodes, t, dim, epsilon, delta = 5, 4, 3, 2.0, 1e-6
    data = [rng.normal(0.2, 1.0, size=(400, dim)) for _ in range(nodes)]
    scale = fixed_point_scale(clip_bound=1.0, value_bits=12)
    quantised = [quantise_sum(clip_l2(rows, bound=1.0), scale=scale, rng=rng) for rows in data]
    sens = quantised[0].sensitivity
    sigma = distributed_gaussian_sigma(
        epsilon=epsilon, delta=delta, l1=sens.l1, l2=sens.l2, survivors_t=t, dim=dim
    )
    plan = NoisePlan(mechanism=Mechanism.DISCRETE_GAUSSIAN, survivors_t=t, n_nodes=nodes, sigma_total=sigma)
    assert charge_for(plan, sens, delta=delta, dim=dim).epsilon <= epsilon
    width = choose_bits(plan=plan, max_abs_node=400 * (2**11 - 1), dim=dim)
    masked = [encode(share_for(q.values, plan=plan, rng=rng), bits=width.bits) for q in quantised]
    released = dequantise(decode(modular_sum(masked, bits=width.bits), bits=width.bits), scale=scale)
    truth = sum(clip_l2(rows, bound=1.0).values.sum(axis=0) for rows in data)
    half = interval95(plan.mechanism, plan.as_params()) / scale
    # Rounding adds < sqrt(2000)/scale; the noise is within 4 interval half-widths with certainty here.
    assert np.all(np.abs(released - truth) <= 4 * half + 0.05)


def test_shares_keep_the_vector_and_add_noise(rng):
    vec = np.arange(-5, 5, dtype=np.int64)
    for out in (
        distributed_gaussian_share(vec, sigma_total=3.0, survivors_t=2, rng=rng),
        skellam_share(vec, sigma_total=3.0, survivors_t=2, rng=rng),
        polya_share(vec, scale=3.0, parties=2, rng=rng),
    ):
        assert out.dtype == np.int64 and out.shape == vec.shape
        assert not np.array_equal(out, vec)
    with pytest.raises(DpParameterError):
        distributed_gaussian_share(np.array([0.5]), sigma_total=3.0, survivors_t=2, rng=rng)


@pytest.mark.parametrize(
    ("plan", "summands", "exact"),
    [
        (NoisePlan(mechanism="discrete_gaussian", survivors_t=9, n_nodes=10, sigma_total=12.0), 10, True),
        (NoisePlan(mechanism="skellam", survivors_t=3, n_nodes=5, sigma_total=8.0), 4, True),
        (NoisePlan(mechanism="polya", survivors_t=6, n_nodes=6, scale=5.0), 6, True),
        (NoisePlan(mechanism="polya", survivors_t=5, n_nodes=6, scale=5.0), 6, False),
    ],
)
def test_interval95_covers_95_percent(rng, plan, summands, exact):
    trials = 40_000
    total = np.zeros(trials, dtype=np.int64)
    for _ in range(summands):
        total += share_for(np.zeros(trials, dtype=np.int64), plan=plan, rng=rng)
    half = interval95(plan.mechanism, plan.as_params(summands))
    coverage = float(np.mean(np.abs(total) <= half))
    assert coverage >= 0.94
    if exact:
        # Discrete effects let integer intervals overshoot 95% a little, never by much.
        assert coverage <= 0.97


def test_interval95_discrete_laplace_by_hand():
    # α = e^-1: P(|X| >= h+1) = 2α^(h+1)/(1+α) is 0.0915 at h = 2 and 0.0337 at h = 3.
    params = NoisePlan(mechanism="polya", survivors_t=4, n_nodes=4, scale=1.0).as_params()
    assert interval95("polya", params) == 3.0
    gauss = NoisePlan(mechanism="discrete_gaussian", survivors_t=1, n_nodes=1, sigma_total=10.0).as_params()
    assert interval95("discrete_gaussian", gauss) == pytest.approx(19.5996, abs=1e-3)
    with pytest.raises(DpParameterError):
        interval95("polya", {"survivors_t": 2.0})
    assert math.isfinite(interval95("skellam", {"survivors_t": 1, "n_nodes": 2, "sigma_total": 1.0}))


def test_interval95_reads_a_stored_charge():
    plan = NoisePlan(mechanism="skellam", survivors_t=2, n_nodes=3, sigma_total=50.0)
    charge = charge_for(plan, Sensitivity(l1=4.0, l2=2.0, linf=1.0), delta=1e-7, dim=4)
    assert interval95(charge.mechanism, charge.params) == pytest.approx(_Z * 50.0 * math.sqrt(1.5))
