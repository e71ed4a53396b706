"""ristretto255 through libsodium: RFC 9496 known answers, then the algebra the PSI relies on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.errors import CryptoError
from tessera.core.psi import group
from tessera.core.psi.parallel import Blinder

VECTORS = json.loads(
    (Path(__file__).resolve().parents[3] / "vectors" / "psi" / "ristretto255_rfc9496.json").read_text()
)


@pytest.mark.parametrize("k", range(1, 9))
def test_multiples_of_the_generator_match_rfc9496(k: int) -> None:
    scalar = k.to_bytes(32, "little")
    assert group.base_mult(scalar).hex() == VECTORS["multiples_of_generator"][k - 1]


@pytest.mark.parametrize(("text", "expected"), VECTORS["hash_to_group"])
def test_hash_to_group_matches_rfc9496(text: str, expected: str) -> None:
    assert group.from_hash(hashlib.sha512(text.encode()).digest()).hex() == expected


def test_scalar_mult_of_a_known_element_matches_the_vectors() -> None:
    # 3·(2B) = 6B: scalar multiplication of an arbitrary element, not only of the generator.
    two_b = bytes.fromhex(VECTORS["multiples_of_generator"][1])
    three = (3).to_bytes(32, "little")
    assert group.blind(three, two_b).hex() == VECTORS["multiples_of_generator"][5]


def _scalar(seed: int) -> bytes:
    return group.scalar_from_wide(hashlib.sha512(seed.to_bytes(8, "little")).digest())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**40), st.text(max_size=40))
def test_blinding_commutes(sa: int, sb: int, value: str) -> None:
    a, b = _scalar(sa), _scalar(sb)
    h = group.hash_and_blind(a, "email", [value])
    assert group.blind(b, h) == group.blind(a, group.hash_and_blind(b, "email", [value]))
    assert group.blind(b, h) == group.hash_and_blind(group.scalar_mul(a, b), "email", [value])


def test_hash_is_domain_separated_by_kind_and_value() -> None:
    one = (1).to_bytes(32, "little")
    email = group.hash_and_blind(one, "email", ["x"])
    assert email == group.hash_to_group("email", "x")
    assert email != group.hash_and_blind(one, "phone", ["x"])
    assert email != group.hash_and_blind(one, "email", ["y"])
    assert group.is_valid(email)


def test_a_non_element_is_refused() -> None:
    with pytest.raises(CryptoError):
        group.blind(_scalar(1), b"\xff" * 32)  # not a canonical encoding
    with pytest.raises(CryptoError):
        group.blind(_scalar(1), b"\x00" * 32)  # the identity
    with pytest.raises(CryptoError):
        group.blind(_scalar(1), b"\x01" * 31)


def test_random_scalars_and_elements_differ() -> None:
    assert group.random_scalar() != group.random_scalar()
    pad = group.random_elements(50)
    chunks = {pad[i : i + 32] for i in range(0, len(pad), 32)}
    assert len(chunks) == 50 and all(group.is_valid(c) for c in chunks)


def test_the_pool_gives_what_one_process_gives() -> None:
    values = [f"user{i}@example.com" for i in range(2500)]
    a = _scalar(7)
    inline = group.hash_and_blind(a, "email", values)
    with Blinder(workers=2) as blinder:
        import tessera.core.psi.parallel as parallel

        old = parallel.PARALLEL_FROM
        parallel.PARALLEL_FROM = 100
        try:
            assert blinder.hash_and_blind(a, "email", values) == inline
            assert blinder.blind(_scalar(8), inline) == group.blind(_scalar(8), inline)
        finally:
            parallel.PARALLEL_FROM = old


def test_hashing_once_then_blinding_is_hashing_and_blinding() -> None:
    values = [f"v{i}" for i in range(300)]
    a = _scalar(11)
    assert group.blind(a, group.hash_many("phone", values)) == group.hash_and_blind(a, "phone", values)
    assert group.hash_many("phone", values[:1]) == group.hash_to_group("phone", "v0")
