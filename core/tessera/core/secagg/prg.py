"""Mask expansion: a 256-bit seed -> a pseudo-random vector of uint32 or uint64 words.

The PRG is AES-256-CTR keyed with the seed, the counter block starting at 16 zero bytes; the
keystream bytes are read as little-endian words. Every seed in the protocol is used for exactly one
keystream (self-mask seeds are fresh per round, pairwise seeds come from HKDF bound to job, round
and pair), so a fixed initial counter never repeats a (key, counter) pair.

Cost: one AES pass over ``4 * n`` (uint32) or ``8 * n`` (uint64) bytes; with AES-NI about
1-3 GB/s per core. No Python loop touches individual elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
_BLOCK = 16
_ZERO_COUNTER = bytes(_BLOCK)
# Elements per slice in `add_keystreams`: 64 Ki words keep the working set in L2 cache.
_SLICE = 1 << 16


def _check_dtype(dtype: np.dtype[np.unsignedinteger] | type) -> np.dtype[np.unsignedinteger]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise TypeError("the mask PRG produces uint32 or uint64 words only")
    return dt.newbyteorder("<")


def _encryptor(seed: bytes, counter: bytes = _ZERO_COUNTER) -> CipherContext:
    if len(seed) != SEED_BYTES:
        raise ValueError("a mask seed is exactly 32 bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(counter)).encryptor()


def keystream(seed: bytes, nbytes: int, *, counter: bytes = _ZERO_COUNTER) -> bytes:
    """Raw AES-256-CTR keystream of ``nbytes`` bytes (``counter`` only for known-answer tests)."""
    if nbytes < 0:
        raise ValueError("nbytes cannot be negative")
    return _encryptor(seed, counter).update(bytes(nbytes))


def expand(seed: bytes, length: int, *, dtype: np.dtype[np.unsignedinteger] | type) -> np.ndarray:
    """``length`` pseudo-random words of ``dtype`` (uint32 or uint64) from a 32-byte seed."""
    dt = _check_dtype(dtype)
    if length < 0:
        raise ValueError("length cannot be negative")
    nbytes = length * dt.itemsize
    # update_into needs room for one extra block; the words are a view on the front of it.
    buf = np.empty(nbytes + _BLOCK - 1, dtype=np.uint8)
    _encryptor(seed).update_into(np.zeros(nbytes, dtype=np.uint8).data, buf.data)
    return buf[:nbytes].view(dt).astype(dt.newbyteorder("="), copy=False)


def add_keystreams(acc: np.ndarray, seeds: Sequence[tuple[bytes, int]]) -> None:
    """In place: ``acc += sum(sign * expand(seed))`` modulo 2^(word bits), sign in {+1, -1}.

    ``acc`` is a contiguous uint32/uint64 vector. The keystreams are produced slice by slice (one
    AES context per seed, continuing its counter) so each slice is added while still in cache;
    the result equals adding the full ``expand`` vectors.
    """
    dt = _check_dtype(acc.dtype)
    if acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ValueError("the accumulator must be a contiguous 1-D vector")
    if any(sign not in (1, -1) for _, sign in seeds):
        raise ValueError("a keystream sign is +1 or -1")
    contexts = [(_encryptor(seed), sign) for seed, sign in seeds]
    n = acc.shape[0]
    step = min(_SLICE, max(n, 1))
    zeros = np.zeros(step * dt.itemsize, dtype=np.uint8).data
    buf = np.empty(step * dt.itemsize + _BLOCK - 1, dtype=np.uint8)
    out = buf.data
    for start in range(0, n, step):
        stop = min(start + step, n)
        nbytes = (stop - start) * dt.itemsize
        words = buf[:nbytes].view(dt)
        target = acc[start:stop]
        for ctx, sign in contexts:
            ctx.update_into(zeros[:nbytes], out)
            if sign > 0:
                np.add(target, words, out=target)
            else:
                np.subtract(target, words, out=target)
