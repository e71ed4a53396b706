"""Shamir sharing over 2^127 - 1: known answers, properties, failures."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.errors import CryptoError
from tessera.core.secagg import shamir

VECTORS = json.loads((Path(__file__).parents[3] / "vectors" / "secagg" / "shamir_p127.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["comment"][:30])
def test_known_answer(case: dict[str, Any]) -> None:
    secret = bytes.fromhex(case["secret"])
    coefficients = [[int(a, 16) for a in chunk] for chunk in case["coefficients_hex"]]
    shares = shamir.split_with_coefficients(secret, coefficients, share_ids=case["share_ids"])
    assert {str(k): v.hex() for k, v in shares.items()} == case["shares"]
    threshold = len(coefficients[0]) + 1
    given_shares = {int(k): bytes.fromhex(v) for k, v in list(case["shares"].items())[-threshold:]}
    assert shamir.combine(given_shares, threshold=threshold) == secret


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=70),
    n=st.integers(1, 9),
    data=st.data(),
)
def test_any_threshold_subset_recovers(secret: bytes, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n))
    ids = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    seed = data.draw(st.integers(0, 2**32))
    shares = shamir.split(secret, threshold=threshold, share_ids=ids, rng=random.Random(seed).randbytes)
    subset = data.draw(st.lists(st.sampled_from(ids), min_size=threshold, max_size=n, unique=True))
    assert shamir.combine({i: shares[i] for i in subset}, threshold=threshold) == secret


def test_fewer_than_threshold_is_refused() -> None:
    shares = shamir.split(b"k" * 32, threshold=3, share_ids=[1, 2, 3, 4], rng=random.Random(1).randbytes)
    with pytest.raises(shamir.NotEnoughShares) as info:
        shamir.combine({1: shares[1], 4: shares[4]}, threshold=3)
    assert isinstance(info.value, CryptoError)


def test_one_share_below_threshold_fits_any_secret() -> None:
    # Perfect secrecy with t = 2: the single share y1 of secret S is exactly the share a sharing
    # of *any* other secret F would produce, with the valid coefficient (y1 - F) mod p.
    secret = b"\x11" * 15
    share = shamir.split(secret, threshold=2, share_ids=[1, 2], rng=random.Random(5).randbytes)[1]
    y1 = int.from_bytes(share[2:], "big")
    for fake in (b"\x00" * 15, b"\xff" * 15, b"tessera-secret!"):
        coefficient = (y1 - int.from_bytes(fake, "big")) % shamir.PRIME
        assert shamir.split_with_coefficients(fake, [[coefficient]], share_ids=[1, 2])[1] == share


def test_malformed_shares_are_refused() -> None:
    shares = shamir.split(b"secret", threshold=2, share_ids=[1, 2], rng=random.Random(2).randbytes)
    with pytest.raises(CryptoError):
        shamir.combine({1: shares[1], 2: shares[2][:-1]}, threshold=2)
    with pytest.raises(CryptoError):
        shamir.combine({1: shares[1], 2: b"\x00\x07" + shares[2][2:]}, threshold=2)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(b"x", threshold=1, share_ids=[1, 1])
    with pytest.raises(ValueError, match="at least as many"):
        shamir.split(b"x", threshold=3, share_ids=[1, 2])
    with pytest.raises(ValueError, match="share id"):
        shamir.split(b"x", threshold=1, share_ids=[0])
    with pytest.raises(ValueError, match="1 to 65535"):
        shamir.split(b"", threshold=1, share_ids=[1])
