"""The fused clip / stochastic-rounding / coding paths compute exactly what the plain formulas do.

Each reference below is the obvious full-array numpy expression; the fast paths must agree with
it bit for bit (stochastic rounding draws its uniforms in the same order, so a seed pins it), and
must keep every refusal: non-finite data, overflowing scales, values that do not fit.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from tessera.core.analyses import vector
from tessera.core.dp import quantise
from tessera.core.dp.clip import clip_coordinates, clip_l2
from tessera.core.dp.errors import DpParameterError, QuantisationOverflow
from tessera.core.dp.quantise import (
    decode,
    encode,
    encode_words,
    quantise_sum,
    stochastic_round,
)

CHUNK = quantise._CHUNK


def gen(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64DXSM(seed))


def reference_round(values: npt.ArrayLike, scale: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    scaled = np.asarray(values, dtype=np.float64) * scale
    low = np.floor(scaled)
    return (low + (rng.random(scaled.shape) < scaled - low)).astype(np.int64)


@pytest.mark.parametrize("shape", [(5,), (CHUNK,), (3 * CHUNK + 7,), (4, CHUNK // 2 + 3)])
def test_stochastic_round_equals_the_plain_formula(shape):
    values = gen(1).normal(0.0, 4.0, size=shape)
    fast = stochastic_round(values, scale=1000.3, rng=gen(9))
    assert fast.shape == shape and fast.dtype == np.int64
    np.testing.assert_array_equal(fast, reference_round(values, 1000.3, gen(9)))
    assert np.all(np.abs(fast - values * 1000.3) < 1)


def test_stochastic_round_is_unbiased_across_chunks():
    x, scale, n = 0.123456, 7.0, 4 * CHUNK  # x*scale = 0.864192: rounds up with that probability
    q = stochastic_round(np.full(n, x), scale=scale, rng=gen(3))
    assert set(np.unique(q).tolist()) == {0, 1}
    assert abs(q.mean() - x * scale) <= 5 * math.sqrt(0.8642 * 0.1358 / n)


def test_stochastic_round_refuses_non_finite_or_huge_values_in_any_chunk():
    for bad in (np.nan, np.inf, -np.inf, 2.0**52, -(2.0**52)):
        values = np.zeros(2 * CHUNK + 5)
        values[-1] = bad  # in the last chunk, after earlier chunks were already rounded
        with pytest.raises(QuantisationOverflow):
            stochastic_round(values, scale=1.0, rng=gen(1))
    edge = np.array([2.0**52 - 1, -(2.0**52) + 1])
    np.testing.assert_array_equal(stochastic_round(edge, scale=1.0, rng=gen(1)), edge.astype(np.int64))
    assert stochastic_round(np.zeros(0), scale=2.0, rng=gen(1)).shape == (0,)


def test_quantise_sum_of_one_row_equals_the_summed_path():
    row = clip_l2(gen(4).normal(size=(1, 1000)), bound=1.0)
    one = quantise_sum(row, scale=512.0, rng=gen(6))
    expected = reference_round(row.values, 512.0, gen(6)).sum(axis=0)
    assert one.values.shape == (1000,)
    np.testing.assert_array_equal(one.values, expected)


@pytest.mark.parametrize("neighbouring", ["add_remove", "replace"])
@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 3.0), (0.5, 2.0), (-8.0, -2.0), (0.0, 0.0)])
def test_scalar_clip_bounds_match_the_per_column_path(lower, upper, neighbouring):
    rows = gen(2).normal(0.0, 5.0, size=(7, 9))
    before = rows.copy()
    fast = clip_coordinates(rows, lower=lower, upper=upper, neighbouring=neighbouring)
    slow = clip_coordinates(rows, lower=[lower] * 9, upper=[upper] * 9, neighbouring=neighbouring)
    np.testing.assert_array_equal(fast.values, slow.values)
    np.testing.assert_array_equal(rows, before)  # the input is never clipped in place
    for name in ("l1", "l2", "linf", "rows_changed"):
        assert getattr(fast.sensitivity, name) == pytest.approx(getattr(slow.sensitivity, name), rel=1e-12)


def test_scalar_clip_sensitivity_survives_huge_bounds():
    sens = clip_coordinates(np.zeros((1, 4)), lower=-1e200, upper=1e200).sensitivity
    assert sens.l2 == pytest.approx(2e200) and sens.l1 == pytest.approx(4e200) and sens.linf == 1e200


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clips_refuse_non_finite_rows(bad):
    rows = np.zeros((3, 4))
    rows[2, 3] = bad
    with pytest.raises(DpParameterError):
        clip_coordinates(rows, lower=-1.0, upper=1.0)
    with pytest.raises(DpParameterError):
        clip_l2(rows, bound=1.0)


def test_clips_accept_huge_finite_rows_whose_sum_overflows():
    # The one-pass finiteness test overflows here and must fall back to the exact element test.
    rows = np.full((2, 3), 1.5e308)
    assert np.all(clip_coordinates(rows, lower=-1.0, upper=1.0).values == 1.0)
    assert np.all(np.isfinite(clip_l2(rows, bound=1.0).values))


@pytest.mark.parametrize("bits", [2, 8, 31, 32, 33, 63, 64])
def test_encode_words_equal_the_plain_two_complement(bits):
    lo, hi = quantise.signed_range(bits)
    values = np.concatenate(([lo, hi, -1, 0, 1], gen(bits).integers(lo, hi, size=200, endpoint=True)))
    plain = np.array([v % (1 << bits) for v in values.tolist()], dtype=np.uint64)
    wide = encode_words(values, bits=bits, word=np.uint64)
    assert wide.dtype == np.uint64 and not np.shares_memory(wide, values)
    np.testing.assert_array_equal(wide, plain)
    np.testing.assert_array_equal(encode(values, bits=bits), plain)
    np.testing.assert_array_equal(vector.encode(values, bits=bits), plain)
    np.testing.assert_array_equal(decode(wide, bits=bits), values)
    if bits <= 32:
        narrow = encode_words(values.astype(np.int32 if bits < 32 else np.int64), bits=bits, word=np.uint32)
        assert narrow.dtype == np.uint32
        np.testing.assert_array_equal(narrow, plain)


def test_encode_words_refuses_bad_words_and_values():
    with pytest.raises(DpParameterError):
        encode_words(np.array([1]), bits=33, word=np.uint32)
    with pytest.raises(DpParameterError):
        encode_words(np.array([1]), bits=8, word=np.int64)  # type: ignore[arg-type]
    with pytest.raises(QuantisationOverflow):
        encode_words(np.array([2**31]), bits=32, word=np.uint64)


def test_decode_keeps_its_input():
    words = np.array([0, 1, 2**20 - 1, 2**19], dtype=np.uint64)
    before = words.copy()
    assert decode(words, bits=20).tolist() == [0, 1, -1, -(2**19)]
    np.testing.assert_array_equal(words, before)
