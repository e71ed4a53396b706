"""ristretto255 (RFC 9496) through libsodium: the prime-order group the overlap PSI blinds in.

Why libsodium through ``ctypes``: PyNaCl (1.6.2, the current release) binds libsodium's
ed25519 core functions but not its ristretto255 ones, and its bundled library does not export
them. libsodium has had ristretto255 since 1.0.18 (``crypto_core_ristretto255_from_hash``: the
RFC 9496 one-way map of a 64-byte uniform string, i.e. two Elligator maps added — a proper
hash-to-group; ``crypto_scalarmult_ristretto255``: constant-time scalar multiplication that refuses
the identity). The Debian package ``libsodium23`` (1.0.18) is part of the project's machine image;
the loader names it when it is missing. Known-answer tests (``tests/vectors``) check this binding
against RFC 9496's published multiples of the generator and its hash-to-group vectors.

Elements travel as their canonical 32-byte encodings; lists of elements as one ``bytes`` of
32·n. Scalars are 32 bytes little-endian, reduced modulo the group order ℓ, never zero.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from functools import cache

from tessera.core.errors import ConfigError, CryptoError

ELEMENT_BYTES = 32
SCALAR_BYTES = 32
HASH_BYTES = 64
# Domain separation: an overlap element is the hash of (label, identifier kind, normalised value),
# so an email and a phone number written alike map to unrelated elements.
_LABEL = b"tessera.overlap.v1/"


@cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("sodium") or "libsodium.so.23"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise ConfigError(
            "libsodium (1.0.18 or newer) is needed for overlap jobs and was not found; "
            "install the system package libsodium23"
        ) from None
    if not hasattr(lib, "crypto_core_ristretto255_from_hash"):
        raise ConfigError("the installed libsodium is older than 1.0.18 and has no ristretto255")
    if lib.sodium_init() < 0:
        raise ConfigError("libsodium failed to initialise")
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    lib.crypto_core_ristretto255_from_hash.argtypes = [vp, vp]
    lib.crypto_scalarmult_ristretto255.argtypes = [vp, cp, vp]
    lib.crypto_scalarmult_ristretto255_base.argtypes = [vp, cp]
    lib.crypto_core_ristretto255_is_valid_point.argtypes = [cp]
    lib.crypto_core_ristretto255_scalar_random.argtypes = [vp]
    lib.crypto_core_ristretto255_scalar_reduce.argtypes = [vp, cp]
    lib.crypto_core_ristretto255_scalar_mul.argtypes = [vp, cp, cp]
    return lib


def _address(buf: bytearray) -> int:
    # The buffer must outlive every use of the address and never be resized.
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _buffer(size: int, content: bytes | None = None) -> tuple[bytearray, int]:
    """A writable buffer of ``size`` bytes (at least one, so it has an address) and its address."""
    buf = bytearray(content) if content else bytearray(max(size, 1))
    return buf, _address(buf)


def random_scalar() -> bytes:
    """A uniformly random non-zero scalar from libsodium's CSPRNG (per job, per pair, never stored)."""
    out, addr = _buffer(SCALAR_BYTES)
    _lib().crypto_core_ristretto255_scalar_random(addr)
    return bytes(out)


def scalar_from_wide(data: bytes) -> bytes:
    """``data`` (64 bytes) reduced modulo ℓ: deterministic scalars for tests and vectors only."""
    if len(data) != HASH_BYTES:
        raise ValueError("a wide scalar is 64 bytes")
    out, addr = _buffer(SCALAR_BYTES)
    _lib().crypto_core_ristretto255_scalar_reduce(addr, data)
    if not any(out):
        raise CryptoError("the scalar reduced to zero")
    return bytes(out)


def scalar_mul(x: bytes, y: bytes) -> bytes:
    out, addr = _buffer(SCALAR_BYTES)
    _lib().crypto_core_ristretto255_scalar_mul(addr, _scalar(x), _scalar(y))
    return bytes(out)


def from_hash(digest: bytes) -> bytes:
    """RFC 9496 §4.3.4: the element of a 64-byte uniform string."""
    if len(digest) != HASH_BYTES:
        raise ValueError("from_hash takes 64 bytes")
    out, addr = _buffer(ELEMENT_BYTES)
    src = ctypes.create_string_buffer(digest, HASH_BYTES)
    _lib().crypto_core_ristretto255_from_hash(addr, ctypes.addressof(src))
    return bytes(out)


def base_mult(scalar: bytes) -> bytes:
    """``scalar`` times the generator (a party's public key ``g^a``)."""
    out, addr = _buffer(ELEMENT_BYTES)
    if _lib().crypto_scalarmult_ristretto255_base(addr, _scalar(scalar)) != 0:
        raise CryptoError("scalar multiplication gave the identity")
    return bytes(out)


def is_valid(element: bytes) -> bool:
    return len(element) == ELEMENT_BYTES and bool(_lib().crypto_core_ristretto255_is_valid_point(element))


def _scalar(scalar: bytes) -> bytes:
    if not isinstance(scalar, bytes) or len(scalar) != SCALAR_BYTES:
        raise ValueError("a scalar is 32 bytes")
    return scalar


def element_digest(kind: str, value: str) -> bytes:
    """The 64-byte hash an identifier is mapped to the group through (domain-separated by kind)."""
    return hashlib.sha512(_LABEL + kind.encode("ascii") + b"\x00" + value.encode("utf-8")).digest()


def hash_to_group(kind: str, value: str) -> bytes:
    return from_hash(element_digest(kind, value))


def hash_and_blind(scalar: bytes, kind: str, values: list[str]) -> bytes:
    """``H(kind, v)^scalar`` for every value, concatenated (one libsodium call pair per value)."""
    lib = _lib()
    scalar = _scalar(scalar)
    if not values:
        return b""
    out, out_addr = _buffer(ELEMENT_BYTES * len(values))
    _point, point_addr = _buffer(ELEMENT_BYTES)
    digest_buf, digest_addr = _buffer(HASH_BYTES)
    prefix = hashlib.sha512(_LABEL + kind.encode("ascii") + b"\x00")
    from_hash_fn, mult = lib.crypto_core_ristretto255_from_hash, lib.crypto_scalarmult_ristretto255
    for i, value in enumerate(values):
        h = prefix.copy()
        h.update(value.encode("utf-8"))
        digest_buf[:] = h.digest()
        from_hash_fn(point_addr, digest_addr)
        if mult(out_addr + ELEMENT_BYTES * i, scalar, point_addr) != 0:
            raise CryptoError("scalar multiplication gave the identity")
    return bytes(out)


def hash_many(kind: str, values: list[str]) -> bytes:
    """``H(kind, v)`` for every value, concatenated: computed once per job, blinded once per pair.
    These unblinded elements are as sensitive as the identifiers: they never leave the node."""
    lib = _lib()
    if not values:
        return b""
    out, out_addr = _buffer(ELEMENT_BYTES * len(values))
    digest_buf, digest_addr = _buffer(HASH_BYTES)
    prefix = hashlib.sha512(_LABEL + kind.encode("ascii") + b"\x00")
    from_hash_fn = lib.crypto_core_ristretto255_from_hash
    for i, value in enumerate(values):
        h = prefix.copy()
        h.update(value.encode("utf-8"))
        digest_buf[:] = h.digest()
        from_hash_fn(out_addr + ELEMENT_BYTES * i, digest_addr)
    return bytes(out)


def blind(scalar: bytes, elements: bytes) -> bytes:
    """Every 32-byte element of ``elements`` raised to ``scalar``; refuses a non-element."""
    if len(elements) % ELEMENT_BYTES:
        raise CryptoError("a list of group elements has a length that is not a multiple of 32")
    lib = _lib()
    scalar = _scalar(scalar)
    n = len(elements) // ELEMENT_BYTES
    if n == 0:
        return b""
    _src, src_addr = _buffer(len(elements), elements)
    out, out_addr = _buffer(len(elements))
    mult = lib.crypto_scalarmult_ristretto255
    for i in range(n):
        off = ELEMENT_BYTES * i
        # libsodium decodes the input (rejecting a non-canonical or invalid encoding) and refuses
        # an identity result: a malformed element from a partner fails here, never silently.
        if mult(out_addr + off, scalar, src_addr + off) != 0:
            raise CryptoError("a relayed list holds something that is not a valid group element")
    return bytes(out)


def random_elements(count: int) -> bytes:
    """``count`` uniformly random elements (from_hash of CSPRNG bytes): padding no one can tell
    from a blinded identifier, and that matches nothing except with probability ~count²/ℓ."""
    import os

    lib = _lib()
    out, out_addr = _buffer(ELEMENT_BYTES * count)
    if count == 0:
        return b""
    _src, src_addr = _buffer(HASH_BYTES * count, os.urandom(HASH_BYTES * count))
    for i in range(count):
        lib.crypto_core_ristretto255_from_hash(out_addr + ELEMENT_BYTES * i, src_addr + HASH_BYTES * i)
    return bytes(out)
