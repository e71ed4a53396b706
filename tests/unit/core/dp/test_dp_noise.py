"""Goodness of fit of every sampler against its exact pmf (chi-square, fixed seeds, p >= 1e-3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.core.dp import noise, pmf
from tessera.core.dp.errors import DpParameterError

N = 200_000


@pytest.mark.parametrize("sigma", [0.6, 3.0, 30.0])
def test_discrete_gaussian_fits_exact_pmf(rng, gof, p_min, sigma):
    draws = noise.discrete_gaussian(sigma=sigma, size=N, rng=rng)
    assert draws.dtype == np.int64
    assert gof(draws, lambda x: pmf.discrete_gaussian_pmf(x, sigma=sigma)) >= p_min


def test_goodness_of_fit_rejects_a_wrong_sigma(rng, gof, p_min):
    # Negative control: 5% too much noise must be detected, or the tests above prove nothing.
    draws = noise.discrete_gaussian(sigma=3.15, size=N, rng=rng)
    assert gof(draws, lambda x: pmf.discrete_gaussian_pmf(x, sigma=3.0)) < p_min


def test_discrete_gaussian_variance_is_sigma_squared(rng):
    sigma = 5.0
    draws = noise.discrete_gaussian(sigma=sigma, size=N, rng=rng)
    # Std error of the sample variance is sigma^2*sqrt(2/N) ~ 0.3%; allow 1.5%.
    assert draws.var() == pytest.approx(sigma**2, rel=0.015)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(N)


def test_discrete_laplace_fits_exact_pmf(rng, gof, p_min):
    draws = noise.discrete_laplace(scale=2.5, size=N, rng=rng)
    assert gof(draws, lambda x: pmf.discrete_laplace_pmf(x, scale=2.5)) >= p_min


def test_skellam_fits_exact_pmf(rng, gof, p_min):
    draws = noise.skellam(variance=7.5, size=N, rng=rng)
    assert draws.var() == pytest.approx(7.5, rel=0.02)
    assert gof(draws, lambda x: pmf.skellam_pmf(x, variance=7.5)) >= p_min


def test_skellam_shares_of_t_survivors_sum_to_full_noise(rng, gof, p_min):
    t = 4
    shares = [noise.skellam_share(variance_total=12.0, survivors_t=t, size=N, rng=rng) for _ in range(t)]
    total = np.sum(shares, axis=0)
    assert gof(total, lambda x: pmf.skellam_pmf(x, variance=12.0)) >= p_min


def test_polya_share_fits_its_exact_pmf(rng, gof, p_min):
    draws = noise.polya(r=1 / 3, scale=4.0, size=N, rng=rng)
    assert gof(draws, lambda x: pmf.polya_pmf(x, r=1 / 3, scale=4.0)) >= p_min


def test_polya_shares_of_n_nodes_sum_to_discrete_laplace(rng, gof, p_min):
    n, scale = 5, 3.0
    total = np.sum([noise.polya_share(scale=scale, parties=n, size=N, rng=rng) for _ in range(n)], axis=0)
    assert gof(total, lambda x: pmf.discrete_laplace_pmf(x, scale=scale)) >= p_min


def test_polya_t_variant_sums_of_more_nodes_carry_more_noise(rng, gof, p_min):
    n, t, scale = 6, 4, 2.0
    total = np.sum([noise.polya_share(scale=scale, parties=t, size=N, rng=rng) for _ in range(n)], axis=0)
    # n shares of NB(1/t) differences are NB(n/t) differences, not the discrete Laplace.
    assert gof(total, lambda x: pmf.polya_pmf(x, r=n / t, scale=scale)) >= p_min
    assert gof(total, lambda x: pmf.discrete_laplace_pmf(x, scale=scale)) < p_min


def test_polya_r1_pmf_is_discrete_laplace():
    x = np.arange(-30, 31)
    np.testing.assert_allclose(
        pmf.polya_pmf(x, r=1.0, scale=2.0), pmf.discrete_laplace_pmf(x, scale=2.0), rtol=1e-9
    )


def test_distributed_gaussian_share_variance(rng):
    t = 9
    total = np.sum(
        [noise.discrete_gaussian_share(sigma_total=6.0, survivors_t=t, size=N, rng=rng) for _ in range(t)],
        axis=0,
    )
    assert total.var() == pytest.approx(36.0, rel=0.02)


def test_samplers_are_deterministic_for_a_seed_and_keep_shape():
    def draw(seed):
        gen = np.random.Generator(np.random.PCG64DXSM(seed))
        return noise.discrete_gaussian(sigma=2.0, size=(3, 4), rng=gen)

    assert draw(7).shape == (3, 4)
    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


@pytest.mark.parametrize(
    "call",
    [
        lambda g: noise.discrete_gaussian(sigma=0.0, size=3, rng=g),
        lambda g: noise.discrete_gaussian(sigma=float("nan"), size=3, rng=g),
        lambda g: noise.skellam(variance=-1.0, size=3, rng=g),
        lambda g: noise.polya_share(scale=1.0, parties=0, size=3, rng=g),
        lambda g: noise.skellam_share(variance_total=1.0, survivors_t=True, size=3, rng=g),
        lambda g: noise.discrete_laplace(scale=1.0, size=-1, rng=g),
    ],
)
def test_bad_parameters_fail_closed(rng, call):
    with pytest.raises(DpParameterError):
        call(rng)
