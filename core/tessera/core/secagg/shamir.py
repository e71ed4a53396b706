"""Shamir secret sharing over the prime field p = 2^127 - 1 (Shamir, CACM 1979).

A secret of L bytes is cut into 15-byte chunks (every chunk, read big-endian, is below 2^120 < p);
each chunk is the constant term of its own random polynomial of degree ``threshold - 1``. A share
is ``u16 secret length || one 16-byte big-endian field element per chunk``; the share id is the
evaluation point and travels beside the share (the dict key), never inside it.

Any ``threshold`` shares determine the secret; fewer reveal nothing about it (information-
theoretically). Cost: O(threshold * shares * chunks) field multiplications to split and
O(threshold^2 + threshold * chunks) to combine; a 32-byte secret has 3 chunks.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from tessera.core.errors import CryptoError
from tessera.core.secagg._util import RandomBytes, random_source

PRIME = (1 << 127) - 1
CHUNK_BYTES = 15
_ELEMENT_BYTES = 16
_MAX_SECRET = 0xFFFF


class NotEnoughShares(CryptoError):
    """Fewer shares than the threshold were supplied: the secret cannot be recovered."""

    code = "secagg.not_enough_shares"


def _chunks(secret: bytes) -> list[int]:
    return [int.from_bytes(secret[i : i + CHUNK_BYTES], "big") for i in range(0, len(secret), CHUNK_BYTES)]


def _field_element(rng: RandomBytes) -> int:
    # Rejection sampling from 127 random bits: uniform on [0, p); a retry has probability 2^-127.
    while True:
        value = int.from_bytes(rng(_ELEMENT_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def _check_ids(share_ids: Sequence[int], threshold: int) -> None:
    if not isinstance(threshold, int) or threshold < 1:
        raise ValueError("the threshold is a whole number of at least 1")
    if len(set(share_ids)) != len(share_ids):
        raise ValueError("share ids must be distinct")
    if any(not isinstance(i, int) or not 0 < i < PRIME for i in share_ids):
        raise ValueError("a share id is a whole number in [1, p)")
    if len(share_ids) < threshold:
        raise ValueError("there must be at least as many share ids as the threshold")


def split_with_coefficients(
    secret: bytes, coefficients: Sequence[Sequence[int]], *, share_ids: Sequence[int]
) -> dict[int, bytes]:
    """Deterministic split: ``coefficients[c]`` are the degree-1..t-1 terms for chunk ``c``.

    Exposed for known-answer tests; production code calls :func:`split`.
    """
    if not 0 < len(secret) <= _MAX_SECRET:
        raise ValueError("a secret has 1 to 65535 bytes")
    chunks = _chunks(secret)
    if len(coefficients) != len(chunks):
        raise ValueError("one coefficient list per 15-byte chunk is needed")
    degrees = {len(c) for c in coefficients}
    if len(degrees) > 1 or any(not 0 <= a < PRIME for c in coefficients for a in c):
        raise ValueError("coefficients must be field elements, the same number for every chunk")
    threshold = (degrees.pop() if degrees else 0) + 1
    _check_ids(share_ids, threshold)
    header = struct.pack(">H", len(secret))
    shares: dict[int, bytes] = {}
    for x in share_ids:
        parts = [header]
        for constant, terms in zip(chunks, coefficients, strict=True):
            acc = 0
            for a in reversed(terms):  # Horner: ((a_{t-1} x + a_{t-2}) x + ...) x + secret
                acc = (acc + a) * x % PRIME
            parts.append(((acc + constant) % PRIME).to_bytes(_ELEMENT_BYTES, "big"))
        shares[x] = b"".join(parts)
    return shares


def split(
    secret: bytes, *, threshold: int, share_ids: Sequence[int], rng: RandomBytes | None = None
) -> dict[int, bytes]:
    """Share ``secret`` among ``share_ids`` so that any ``threshold`` of them recover it.

    ``rng`` supplies the polynomial coefficients: leave it ``None`` (``os.urandom``) in production;
    tests pass a seeded byte source.
    """
    _check_ids(share_ids, threshold)
    source = random_source(rng)
    coefficients = [[_field_element(source) for _ in range(threshold - 1)] for _ in _chunks(secret)]
    return split_with_coefficients(secret, coefficients, share_ids=share_ids)


def _lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    weights = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return weights


def combine(shares: Mapping[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the ``threshold`` lowest ids are used).

    Raises :class:`NotEnoughShares` below the threshold and :class:`CryptoError` for malformed
    or inconsistent shares. A wrong but well-formed share yields a wrong secret: callers that can
    check the result (e.g. against a public key) must do so.
    """
    if not isinstance(threshold, int) or threshold < 1:
        raise ValueError("the threshold is a whole number of at least 1")
    if len(shares) < threshold:
        raise NotEnoughShares("too few shares to recover a secret")
    xs = sorted(shares)[:threshold]
    if any(not 0 < x < PRIME for x in xs):
        raise CryptoError("a share id is outside the field")
    blobs = [shares[x] for x in xs]
    if len(blobs[0]) < 2 or any(len(b) != len(blobs[0]) or b[:2] != blobs[0][:2] for b in blobs):
        raise CryptoError("the shares do not belong to one secret")
    (length,) = struct.unpack(">H", blobs[0][:2])
    n_chunks = -(-length // CHUNK_BYTES)
    if len(blobs[0]) != 2 + n_chunks * _ELEMENT_BYTES:
        raise CryptoError("a share has the wrong length")
    weights = _lagrange_at_zero(xs)
    out = bytearray()
    for c in range(n_chunks):
        lo = 2 + c * _ELEMENT_BYTES
        value = sum(
            w * int.from_bytes(b[lo : lo + _ELEMENT_BYTES], "big")
            for w, b in zip(weights, blobs, strict=True)
        )
        value %= PRIME
        size = min(CHUNK_BYTES, length - c * CHUNK_BYTES)
        if value >= 1 << (8 * size):
            raise CryptoError("the shares do not belong to one secret")
        out += value.to_bytes(size, "big")
    return bytes(out)
