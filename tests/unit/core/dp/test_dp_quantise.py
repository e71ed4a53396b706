"""Stochastic rounding is unbiased; Z_2^k coding round-trips, wraps like secure aggregation, and
refuses values that do not fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.dp.clip import Sensitivity, clip_coordinates, clip_l2
from tessera.core.dp.errors import DpParameterError, QuantisationOverflow
from tessera.core.dp.quantise import (
    decode,
    dequantise,
    encode,
    fixed_point_scale,
    integer_sensitivity,
    modular_sum,
    quantise_sum,
    signed_range,
    stochastic_round,
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(x=st.floats(-1000.0, 1000.0), scale=st.floats(0.01, 1000.0), seed=st.integers(0, 2**32))
def test_stochastic_rounding_is_unbiased(x, scale, seed):
    gen = np.random.Generator(np.random.PCG64DXSM(seed))
    draws = 20_000
    q = stochastic_round(np.full(draws, x), scale=scale, rng=gen)
    target = x * scale
    assert np.all(np.abs(q - target) < 1)
    frac = target - math.floor(target)
    # q is floor + Bernoulli(frac): its mean has std error sqrt(frac(1-frac)/draws) <= 0.0036.
    stderr = math.sqrt(frac * (1 - frac) / draws) + 1e-12
    assert abs(q.mean() - target) <= 5 * stderr + 1e-9


def test_fixed_point_scale_keeps_clipped_values_in_range(rng):
    for bound, bits in [(1.0, 16), (0.3, 12), (1e6, 24), (7.0, 3)]:
        scale = fixed_point_scale(clip_bound=bound, value_bits=bits)
        q = stochastic_round(np.array([bound, -bound] * 500), scale=scale, rng=rng)
        assert np.abs(q).max() <= 2 ** (bits - 1) - 1


@settings(max_examples=80, deadline=None, derandomize=True)
@given(bits=st.integers(2, 64), data=st.data())
def test_encode_decode_round_trip(bits, data):
    lo, hi = signed_range(bits)
    values = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=20)), dtype=np.int64)
    encoded = encode(values, bits=bits)
    assert encoded.dtype == (np.uint32 if bits <= 32 else np.uint64)
    assert int(encoded.max()) < 2**bits
    np.testing.assert_array_equal(decode(encoded, bits=bits), values)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(bits=st.integers(4, 64), nodes=st.integers(2, 8), seed=st.integers(0, 2**32))
def test_sum_of_nodes_decodes_despite_intermediate_wrap(bits, nodes, seed):
    gen = np.random.Generator(np.random.PCG64DXSM(seed))
    lo, hi = signed_range(bits)
    # Individual vectors use the full range, so partial sums wrap; the total is kept in range.
    vectors = [gen.integers(lo, hi, size=5, endpoint=True) for _ in range(nodes - 1)]
    partial = np.sum([v.astype(object) for v in vectors], axis=0)
    last = np.array([int(min(max(-p + int(gen.integers(-3, 4)), lo), hi)) for p in partial], dtype=np.int64)
    total = partial + last.astype(object)
    if any(not lo <= int(t) <= hi for t in total):
        return  # the true sum does not fit: nothing to check for this draw
    summed = modular_sum([encode(v, bits=bits) for v in [*vectors, last]], bits=bits)
    np.testing.assert_array_equal(decode(summed, bits=bits), np.array(total, dtype=np.int64))


def test_wrap_example_by_hand():
    encoded = [encode(np.array([v]), bits=8) for v in (120, 100, -128)]
    assert int(encoded[2][0]) == 256 - 128
    # 120 + 100 = 220 wraps to -36 in 8 bits; adding -128 lands back in range at 92.
    assert decode(modular_sum(encoded, bits=8), bits=8).tolist() == [92]


def test_encode_refuses_values_that_do_not_fit():
    with pytest.raises(QuantisationOverflow):
        encode(np.array([128]), bits=8)
    with pytest.raises(QuantisationOverflow):
        encode(np.array([-129]), bits=8)
    with pytest.raises(DpParameterError):
        encode(np.array([1.5]), bits=8)
    with pytest.raises(DpParameterError):
        encode(np.array([1]), bits=65)
    with pytest.raises(QuantisationOverflow):
        stochastic_round(np.array([1e300]), scale=1.0, rng=np.random.Generator(np.random.PCG64DXSM(1)))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32), dim=st.integers(1, 8), scale=st.floats(0.5, 50.0))
def test_integer_sensitivity_bounds_quantised_neighbours(seed, dim, scale):
    gen = np.random.Generator(np.random.PCG64DXSM(seed))
    rows = gen.normal(0, 2, size=(6, dim))
    extra = gen.normal(0, 2, size=(1, dim))
    clipped = clip_l2(np.vstack([rows, extra]), bound=1.5)
    sens = integer_sensitivity(clipped.sensitivity, scale=scale, dim=dim)
    q = stochastic_round(clipped.values, scale=scale, rng=gen)
    diff = q.sum(axis=0) - q[:-1].sum(axis=0)
    assert np.abs(diff).sum() <= sens.l1
    assert np.linalg.norm(diff) <= sens.l2
    assert np.abs(diff).max() <= sens.linf


def test_quantise_sum_of_counts_is_exact(rng):
    counts = clip_coordinates(np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1]]), lower=0.0, upper=1.0)
    out = quantise_sum(counts, scale=1.0, rng=rng, integral_inputs=True)
    assert out.values.tolist() == [2, 1, 3]
    assert out.sensitivity == Sensitivity(l1=3.0, l2=math.sqrt(3.0), linf=1.0)
    with pytest.raises(DpParameterError):
        quantise_sum(
            clip_coordinates([[0.5]], lower=0.0, upper=1.0), scale=1.0, rng=rng, integral_inputs=True
        )


def test_quantise_then_dequantise_is_close(rng):
    clipped = clip_l2(rng.normal(size=(1000, 4)), bound=1.0)
    scale = fixed_point_scale(clip_bound=1.0, value_bits=16)
    out = quantise_sum(clipped, scale=scale, rng=rng)
    # 1000 rows each rounded by < 1 unit; the error of the sum is ~sqrt(1000)/2 units.
    err = dequantise(out.values, scale=scale) - clipped.values.sum(axis=0)
    assert np.all(np.abs(err) < 100 / scale)


def test_decode_accepts_sums_taken_modulo_the_word_size(rng):
    # Secure aggregation adds uint32 words modulo 2^32; decode(bits=k) reduces modulo 2^k first.
    values = rng.integers(-(2**18), 2**18, size=(6, 50))
    words = [encode(v, bits=20) for v in values]
    word_sum = np.zeros(50, dtype=np.uint32)
    for w in words:
        word_sum += w  # wraps modulo 2^32, like the masked sum
    expected = values.sum(axis=0)
    in_range = np.abs(expected) < 2**19
    np.testing.assert_array_equal(decode(word_sum, bits=20)[in_range], expected[in_range])
