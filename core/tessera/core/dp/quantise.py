"""Fixed-point quantisation with unbiased stochastic rounding, and two's-complement coding in Z_2^k.

Rows are quantised *per customer, before summing*: each coordinate moves by less than one unit, so
the integer-domain sensitivity is a deterministic bound (``integer_sensitivity``) and the DP proof
never has to reason about correlated rounding of a whole node vector.

Coding: a signed integer ``v`` with ``-2^(k-1) <= v < 2^(k-1)`` is stored as ``v mod 2^k`` in a
``uint32`` (k <= 32) or ``uint64`` (k <= 64) array; sums wrap modulo ``2^k`` exactly as secure
aggregation computes them, and ``decode`` reads the wrapped sum back as a signed integer. A sum is
correct iff its true value lies in the same signed range; ``tessera.core.dp.bits`` chooses ``k`` so
that fails with negligible, reported probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.core.dp.clip import Clipped, Sensitivity
from tessera.core.dp.errors import DpParameterError, QuantisationOverflow

IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint32] | npt.NDArray[np.uint64]
MIN_BITS, MAX_BITS = 2, 64
# |x * scale| must stay well inside int64 and inside the float64 integer range (2^53).
_MAX_ABS_SCALED = float(2**52)
# Elements per chunk of stochastic rounding: its four scratch buffers (800 KiB) stay in L2 cache.
_CHUNK = 1 << 15


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise DpParameterError(f"bit width must be an integer in [{MIN_BITS}, {MAX_BITS}]")
    return bits


def fixed_point_scale(*, clip_bound: float, value_bits: int) -> float:
    """Scale (integer units per value unit) so a value of magnitude ``clip_bound`` fits ``value_bits``.

    After stochastic rounding every quantised coordinate satisfies
    ``|q| <= 2^(value_bits-1) - 1``. Larger ``value_bits`` means less rounding noise but more
    bits on the wire; the modular width of the *sum* is chosen separately (``bits.choose_bits``).
    """
    if not math.isfinite(clip_bound) or clip_bound <= 0:
        raise DpParameterError("clip_bound must be a positive finite number")
    if not 2 <= _check_bits(value_bits) <= 53:
        raise DpParameterError("value_bits must be in [2, 53] (float64 holds integers up to 2^53)")
    top = float(2 ** (value_bits - 1) - 1)
    scale = top / clip_bound
    # Float rounding may put clip_bound*scale a hair above `top`; step down until it does not,
    # so ceil() in stochastic rounding can never exceed the range (rounding is monotone).
    while math.ceil(clip_bound * scale) > top:
        scale = math.nextafter(scale, 0.0)
    return scale


def stochastic_round(values: npt.ArrayLike, *, scale: float, rng: np.random.Generator) -> IntArray:
    """Return integers ``q`` with ``E[q] = values * scale`` exactly (unbiased) and ``|q - x·s| < 1``.

    ``q = floor(y) + Bernoulli(y - floor(y))`` with ``y = values * scale``; the Bernoulli is
    ``[U < y - floor(y)]`` for a float64 uniform ``U`` (``y - floor(y)`` is exact in float64).
    Raises ``QuantisationOverflow`` when a scaled value is not finite or ``|y| >= 2^52``.
    Cost: one uniform per element; the passes run in L2-sized chunks into the output array, so the
    only full-size allocation is the result (about 5 ns per element, most of it the uniforms).
    """
    if not math.isfinite(scale) or scale <= 0:
        raise DpParameterError("scale must be a positive finite number")
    src = np.asarray(values, dtype=np.float64)
    flat = src.reshape(-1)  # a view for contiguous input
    out = np.empty(flat.size, dtype=np.int64)
    cap = min(_CHUNK, flat.size)
    bufs = np.empty(cap), np.empty(cap), np.empty(cap), np.empty(cap, dtype=np.bool_)
    for begin in range(0, flat.size, _CHUNK):
        stop = min(begin + _CHUNK, flat.size)
        n = stop - begin
        y, low, u, up = bufs[0][:n], bufs[1][:n], bufs[2][:n], bufs[3][:n]
        np.multiply(flat[begin:stop], scale, out=y)
        # min/max propagate NaN, and a NaN makes both comparisons false: one test covers all cases.
        if not (float(y.min()) > -_MAX_ABS_SCALED and float(y.max()) < _MAX_ABS_SCALED):
            raise QuantisationOverflow("a scaled value is not finite or exceeds 2^52; lower the scale")
        np.floor(y, out=low)
        np.subtract(y, low, out=y)  # the fraction in [0, 1), exact in float64
        rng.random(out=u)
        np.less(u, y, out=up)
        # low + up is an integer below 2^52 in magnitude, so the cast into the output is exact.
        np.add(low, up, out=out[begin:stop], casting="unsafe")
    return out.reshape(src.shape)


def integer_sensitivity(
    sensitivity: Sensitivity, *, scale: float, dim: int, integral_inputs: bool = False
) -> Sensitivity:
    """Sensitivity of the per-node *integer* sum after per-row stochastic rounding.

    Each changed row's coordinates move by less than one unit, so with ``r = rows_changed``:
    L1 <= L1·s + r·d, L2 <= L2·s + r·sqrt(d), L∞ <= L∞·s + r. With ``integral_inputs`` (a property
    of the query, e.g. counts, never inferred from the data) ``values*scale`` are integers, nothing
    is rounded and the bound is exactly the scaled one.
    """
    if dim < 1:
        raise DpParameterError("dim must be at least 1")
    slack = 0 if integral_inputs else sensitivity.rows_changed
    return Sensitivity(
        l1=sensitivity.l1 * scale + slack * dim,
        l2=sensitivity.l2 * scale + slack * math.sqrt(dim),
        linf=sensitivity.linf * scale + slack,
        rows_changed=sensitivity.rows_changed,
    )


@dataclass(frozen=True, slots=True)
class QuantisedSum:
    """A node's integer vector (sum of its quantised rows) and its integer-domain sensitivity."""

    values: IntArray
    sensitivity: Sensitivity
    scale: float


def quantise_sum(
    clipped: Clipped, *, scale: float, rng: np.random.Generator, integral_inputs: bool = False
) -> QuantisedSum:
    """Quantise every clipped row, sum over customers, and carry the integer sensitivity along."""
    rows = clipped.values
    if integral_inputs:
        scaled = rows * scale
        if not np.array_equal(scaled, np.round(scaled)):
            raise DpParameterError("integral_inputs was declared but a scaled value is not an integer")
        if np.any(np.abs(scaled) >= _MAX_ABS_SCALED):
            raise QuantisationOverflow("a scaled value exceeds 2^52; lower the scale")
        quantised = scaled.astype(np.int64)
    else:
        quantised = stochastic_round(rows, scale=scale, rng=rng)
    sens = integer_sensitivity(
        clipped.sensitivity, scale=scale, dim=rows.shape[1], integral_inputs=integral_inputs
    )
    # One customer row (a model update, say) is its own sum: skip the full-size summing pass.
    total = quantised[0] if rows.shape[0] == 1 else quantised.sum(axis=0, dtype=np.int64)
    return QuantisedSum(values=total, sensitivity=sens, scale=scale)


def dequantise(values: npt.ArrayLike, *, scale: float) -> npt.NDArray[np.float64]:
    """Map integer units back to value units (post-processing: no privacy cost)."""
    return np.asarray(values, dtype=np.float64) / scale


def signed_range(bits: int) -> tuple[int, int]:
    """Inclusive ``(lowest, highest)`` signed integers representable in ``bits`` bits."""
    half = 1 << (_check_bits(bits) - 1)
    return -half, half - 1


def encode(values: npt.ArrayLike, *, bits: int) -> UIntArray:
    """Encode signed integers into Z_2^k (two's complement). Raises ``QuantisationOverflow``.

    Returns ``uint32`` words for ``k <= 32`` and ``uint64`` words above (see ``encode_words``).
    """
    return encode_words(values, bits=bits, word=np.uint32 if _check_bits(bits) <= 32 else np.uint64)


def encode_words(values: npt.ArrayLike, *, bits: int, word: type[np.unsignedinteger[Any]]) -> UIntArray:
    """``encode`` into words of type ``word`` (``np.uint32`` needs ``k <= 32``; ``np.uint64`` any k).

    The range test is two reductions; the coding itself is one cast (integer to unsigned
    conversion keeps the value modulo 2^w, i.e. the two's-complement bits) plus, when ``k`` is
    below the word size, one in-place mask. Always returns a new array.
    """
    lo, hi = signed_range(bits)
    dtype = np.dtype(word)
    if dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)) or bits > 8 * dtype.itemsize:
        raise DpParameterError("words must be uint32 (bits <= 32) or uint64")
    ints = np.asarray(values)
    if ints.dtype.kind not in "iu":
        raise DpParameterError("only integer arrays can be encoded")
    if ints.size and (int(ints.min()) < lo or int(ints.max()) > hi):
        raise QuantisationOverflow(f"a value does not fit {bits}-bit two's complement")
    words = ints.astype(dtype)
    if bits < 8 * dtype.itemsize:
        np.bitwise_and(words, dtype.type((1 << bits) - 1), out=words)
    return words


def modular_sum(encoded: Sequence[npt.ArrayLike], *, bits: int) -> UIntArray:
    """Sum encoded vectors modulo 2^k (what secure aggregation yields), same dtype as ``encode``."""
    _check_bits(bits)
    if not encoded:
        raise DpParameterError("modular_sum needs at least one vector")
    total = np.zeros(np.shape(encoded[0]), dtype=np.uint64)
    for vector in encoded:
        # uint64 arithmetic wraps modulo 2^64, which is consistent modulo 2^k for every k <= 64.
        total += np.asarray(vector).astype(np.uint64)
    if bits == 64:
        return total
    total &= np.uint64((1 << bits) - 1)
    return total.astype(np.uint32) if bits <= 32 else total


def decode(total: npt.ArrayLike, *, bits: int) -> IntArray:
    """Read a sum modulo 2^k back as signed integers in ``signed_range(bits)``.

    Cost: one copy into int64 words and two in-place passes (mask, sign extension).
    """
    _check_bits(bits)
    raw = np.asarray(total)
    if raw.dtype.kind != "u":
        raise DpParameterError("decode expects an unsigned array from encode or modular_sum")
    word = raw.astype(np.uint64)
    if bits == 64:
        return word.view(np.int64)
    np.bitwise_and(word, np.uint64((1 << bits) - 1), out=word)
    # Sign extension: for w in [0, 2^k), (w XOR 2^(k-1)) - 2^(k-1) is w below 2^(k-1), else w - 2^k.
    signed = word.view(np.int64)
    half = np.int64(1 << (bits - 1))
    np.bitwise_xor(signed, half, out=signed)
    np.subtract(signed, half, out=signed)
    return signed
