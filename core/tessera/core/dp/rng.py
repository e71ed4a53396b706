"""The one place product code gets the random generator that feeds DP noise and stochastic rounding.

``secure_generator()`` returns an ``AesCtrGenerator``: every random bit it hands out is a bit of an
AES-256-CTR keystream (``cryptography``; AES-NI where the CPU has it) under a fresh 256-bit key from
``os.urandom``, so its output is computationally indistinguishable from uniform for anyone without
the key, and a node's noise share cannot be predicted or reconstructed from other outputs. (numpy's
``PCG64DXSM``, used before, is a statistical generator: its state follows from enough raw output.)

It subclasses ``numpy.random.Generator`` so that every kernel keeps one injected ``rng`` type, and
implements the methods the samplers and ``stochastic_round`` use, with numpy's semantics, from raw
keystream words:

* ``random``: ``(w >> 11)·2^-53``, the 53-bit uniform on ``[0, 1)`` numpy itself produces;
* ``standard_exponential``: ``-log(((w >> 11) + 1)·2^-53)`` (inversion of a uniform on ``(0, 1]``);
  its law differs from ``Exp(1)`` only by the 2^-53 granularity of the uniform (total variation
  below 2^-52 per draw, no tail beyond ``53·ln 2 ≈ 36.7``), the float64 standard the samplers
  already document;
* ``geometric(p)``: ``floor(E/λ) + 1`` with ``λ = -ln(1-p)``, exact given ``E``:
  ``P(floor(E/λ) >= k) = e^{-kλ} = (1-p)^k``;
* ``integers``: raw words (masked, with rejection for ranges that are not powers of two);
* ``bytes``: raw keystream.

Any other ``Generator`` method (``normal``, ``poisson``, ``bit_generator``…) raises
``NotImplementedError`` instead of silently drawing from the placeholder bit generator that numpy's
constructor requires (it is never used). Skellam and Pólya shares (``poisson``,
``negative_binomial``) therefore need a seeded numpy generator today; no product path adds them.

Tests that need reproducibility pass a seeded ``numpy.random.Generator`` or
``AesCtrGenerator(key=...)`` (an explicit 32-byte key, same stream every time).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_KEY_BYTES = 32
_CHUNK_WORDS = 1 << 15  # 256 KiB of keystream per AES call: stays in L2, amortises the call
_SHIFT = np.uint64(11)
_ONE = np.uint64(1)
_TWO53 = 2.0**-53
_ALLOWED = frozenset({"random", "standard_exponential", "geometric", "integers", "bytes", "words"})


class AesCtrGenerator(np.random.Generator):
    """A ``numpy.random.Generator`` look-alike whose every bit comes from AES-256-CTR.

    ``key``: 32 bytes for a reproducible stream (tests); omitted, 32 bytes from ``os.urandom``.
    The counter starts at 0 with a zero nonce: a key is never reused across generators unless a
    caller passes the same explicit key on purpose. Not thread-safe (one per round, as before).
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(_KEY_BYTES)
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("the key must be bytes")
        if len(key) != _KEY_BYTES:
            raise ValueError("the key must be 32 bytes (AES-256)")
        # numpy's constructor needs a bit generator; it is never drawn from (see __getattribute__).
        super().__init__(np.random.PCG64(0))
        cipher = Cipher(algorithms.AES(bytes(key)), modes.CTR(bytes(16)))
        object.__setattr__(self, "_enc", cipher.encryptor())
        object.__setattr__(self, "_zeros", bytes(8 * _CHUNK_WORDS))
        object.__setattr__(self, "_buf", bytearray(8 * _CHUNK_WORDS + 16))

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_") or name in _ALLOWED:
            return object.__getattribute__(self, name)
        raise NotImplementedError(
            f"AesCtrGenerator does not provide {name!r}: only AES-CTR keystream methods are exposed"
        )

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        """``n`` raw 64-bit keystream words (little-endian)."""
        out = np.empty(n, dtype=np.uint64)
        self._fill(out)
        return out

    def _fill(self, out: npt.NDArray[np.uint64]) -> None:
        enc, zeros, buf = self._enc, self._zeros, self._buf
        for begin in range(0, out.size, _CHUNK_WORDS):
            n = min(_CHUNK_WORDS, out.size - begin)
            enc.update_into(zeros[: 8 * n], buf)
            out[begin : begin + n] = np.frombuffer(buf, dtype="<u8", count=n)

    def bytes(self, length: int) -> bytes:  # type: ignore[override]
        """``length`` raw keystream bytes."""
        return bytes(self._enc.update(bytes(length)))

    def _floats(self, size: Any, out: npt.NDArray[np.float64] | None, plus: np.uint64) -> Any:
        target = np.empty(() if size is None else size, dtype=np.float64) if out is None else out
        if target.dtype != np.float64 or not target.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float64 array")
        flat = target.reshape(-1)  # a view: the array is contiguous
        words = np.empty(min(_CHUNK_WORDS, max(flat.size, 1)), dtype=np.uint64)
        for begin in range(0, flat.size, _CHUNK_WORDS):
            n = min(_CHUNK_WORDS, flat.size - begin)
            w = words[:n]
            self._fill(w)
            np.right_shift(w, _SHIFT, out=w)
            if plus:
                np.add(w, plus, out=w)
            chunk = flat[begin : begin + n]
            np.multiply(w, _TWO53, out=chunk)  # exact: integers below 2^53 times a power of two
        return float(target) if size is None and out is None else target

    def random(  # type: ignore[override]
        self, size: Any = None, dtype: Any = np.float64, out: npt.NDArray[np.float64] | None = None
    ) -> Any:
        """Uniform floats on ``[0, 1)`` with 53 random bits, as numpy's ``random``."""
        if np.dtype(dtype) != np.float64:
            raise NotImplementedError("only float64 uniforms are provided")
        return self._floats(size, out, np.uint64(0))

    def standard_exponential(  # type: ignore[override]
        self,
        size: Any = None,
        dtype: Any = np.float64,
        method: str = "inv",
        out: npt.NDArray[np.float64] | None = None,
    ) -> Any:
        """``Exp(1)`` by inversion of a 53-bit uniform on ``(0, 1]`` (see the module docstring)."""
        del method
        if np.dtype(dtype) != np.float64:
            raise NotImplementedError("only float64 exponentials are provided")
        values = self._floats(size, out, _ONE)
        if isinstance(values, float):
            return -math.log(values)
        np.log(values, out=values)
        np.negative(values, out=values)
        return values

    def geometric(self, p: Any, size: Any = None) -> Any:  # type: ignore[override]
        """Trials to the first success, ``P(G = k) = (1-p)^(k-1)·p`` (``p`` a scalar in (0, 1])."""
        prob = float(p)
        if not 0 < prob <= 1:
            raise ValueError("p must be in (0, 1]")
        e = self.standard_exponential(size=size)
        if prob == 1:
            return np.ones_like(e, dtype=np.int64) if size is not None else 1
        lam = -math.log1p(-prob)
        g = np.floor(np.asarray(e) / lam).astype(np.int64) + 1
        return g if size is not None else int(g)

    def integers(  # type: ignore[override]
        self,
        low: int,
        high: int | None = None,
        size: Any = None,
        dtype: Any = np.int64,
        endpoint: bool = False,
    ) -> Any:
        """Uniform integers in ``[low, high)`` (``[low, high]`` with ``endpoint``), as numpy's."""
        if high is None:
            low, high = 0, low
        top = int(high) + (1 if endpoint else 0)
        span = top - int(low)
        if span < 1 or span > 1 << 64:
            raise ValueError("the range must hold between 1 and 2^64 integers")
        count = 1 if size is None else math.prod((size,) if isinstance(size, int) else size)
        if span == 1 << 64:
            raw = self.words(count)
        else:
            shift = np.uint64(64 - (span - 1).bit_length()) if span > 1 else np.uint64(63)
            raw = np.empty(count, dtype=np.uint64)
            filled = 0
            while filled < count:
                w = self.words(count - filled) >> shift
                if span == 1:
                    w[:] = 0
                w = w[w < np.uint64(span)]  # rejection keeps the law uniform
                raw[filled : filled + w.size] = w
                filled += w.size
        out_type = np.dtype(dtype)
        # Python integers for the offset: low + 2^64 - 1 may not fit any numpy integer type.
        result = raw.astype(out_type) if int(low) == 0 else (raw.astype(object) + int(low)).astype(out_type)
        if size is None:
            return result[0].item()
        return result.reshape(size)

    def __repr__(self) -> str:
        return "AesCtrGenerator(<key hidden>)"


def secure_generator() -> AesCtrGenerator:
    """A new AES-256-CTR generator under a fresh key from ``os.urandom`` (use one per round)."""
    return AesCtrGenerator()
