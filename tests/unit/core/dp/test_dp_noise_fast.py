"""The chunked discrete Gaussian sampler has the same law as the textbook CKS rejection sampler.

The reference below is Canonne–Kamath–Steinke Algorithm 3 written the slow, obvious way (DLap
proposals as a difference of two geometrics, acceptance by ``U < exp(-γ)``); the fast sampler must
be indistinguishable from it and from the exact pmf, including for large σ, across chunk
boundaries, and in its sign.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from tessera.core.dp import noise, pmf
from tessera.core.dp.mechanisms import distributed_gaussian_share

N = 200_000


def reference_cks(sigma: float, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """CKS 2020 Algorithm 3 with Algorithm 2's DLap as a geometric difference, one batch at a time."""
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)
    out: list[npt.NDArray[np.int64]] = []
    have = 0
    while have < n:
        y = rng.geometric(p, n) - rng.geometric(p, n)
        gamma = (np.abs(y) - sigma * sigma / t) ** 2 / (2 * sigma * sigma)
        kept = y[rng.random(n) < np.exp(-gamma)]
        out.append(kept)
        have += kept.size
    return np.concatenate(out)[:n].astype(np.int64)


@pytest.mark.parametrize("sigma", [0.6, 7.5, 1000.5])
def test_fast_sampler_matches_the_reference_sampler(sigma, two_sample, p_min):
    fast = noise.discrete_gaussian(sigma=sigma, size=N, rng=np.random.Generator(np.random.PCG64DXSM(1)))
    slow = reference_cks(sigma, N, np.random.Generator(np.random.PCG64DXSM(2)))
    assert two_sample(fast, slow) >= p_min


def test_two_sample_test_detects_a_small_change_of_sigma(two_sample, p_min):
    # Negative control for the test above: 3% more noise must be detected at this sample size.
    fast = noise.discrete_gaussian(sigma=7.5, size=N, rng=np.random.Generator(np.random.PCG64DXSM(1)))
    slow = reference_cks(7.5 * 1.03, N, np.random.Generator(np.random.PCG64DXSM(2)))
    assert two_sample(fast, slow) < p_min


def test_large_sigma_fits_exact_pmf(rng, gof, p_min):
    # Large sigma is the production regime (tens of thousands); 1000.5 keeps the pmf table small.
    draws = noise.discrete_gaussian(sigma=1000.5, size=N, rng=rng)
    assert gof(draws, lambda x: pmf.discrete_gaussian_pmf(x, sigma=1000.5)) >= p_min
    assert draws.var() == pytest.approx(1000.5**2, rel=0.015)


def test_sign_is_fair_and_independent_of_the_magnitude(rng, two_sample, p_min):
    draws = noise.discrete_gaussian(sigma=3.0, size=N, rng=rng)
    pos, neg = draws[draws > 0], draws[draws < 0]
    # Binomial(pos + neg, 1/2): 5 standard deviations.
    assert abs(pos.size - neg.size) <= 5 * math.sqrt(pos.size + neg.size)
    assert two_sample(pos, -neg) >= p_min
    # Zero keeps its exact mass (CKS rejects the "negative zero" so it is not counted twice).
    expected_zero = float(pmf.discrete_gaussian_pmf(np.array([0]), sigma=3.0)[0])
    assert abs(np.mean(draws == 0) - expected_zero) <= 5 * math.sqrt(expected_zero / N)


@pytest.mark.parametrize("size", [0, 1, 7, (3, 4), (2, 40_000)])
def test_sizes_and_shapes_across_chunk_boundaries(rng, size):
    draws = noise.discrete_gaussian(sigma=50.0, size=size, rng=rng)
    shape = (size,) if isinstance(size, int) else size
    assert draws.shape == shape and draws.dtype == np.int64
    if draws.size > 1000:
        assert draws.std() == pytest.approx(50.0, rel=0.03)


def test_share_is_added_to_a_new_array_and_keeps_the_input():
    vec = np.arange(-20, 20, dtype=np.int64)
    before = vec.copy()
    out = distributed_gaussian_share(
        vec, sigma_total=8.0, survivors_t=4, rng=np.random.Generator(np.random.PCG64DXSM(5))
    )
    assert not np.shares_memory(out, vec)
    np.testing.assert_array_equal(vec, before)
    small = distributed_gaussian_share(
        vec.astype(np.int32), sigma_total=8.0, survivors_t=4, rng=np.random.Generator(np.random.PCG64DXSM(5))
    )
    assert small.dtype == np.int64
    np.testing.assert_array_equal(small, out)  # same seed, same noise, whatever the input width
