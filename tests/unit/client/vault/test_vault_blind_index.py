"""Blind index: known answers, normalisation equivalences, domain separation, errors."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.client.vault.blind_index import BlindIndexer, IdentifierKind
from tessera.core.errors import InvalidRequest

VECTORS = json.loads(
    (Path(__file__).parents[4] / "tests" / "vectors" / "vault" / "blind_index.json").read_text()
)
KEY = bytes.fromhex(VECTORS["key"])


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: f"{v['kind']}:{v['value']}")
def test_known_answer_vectors(vector: dict[str, str]) -> None:
    indexer = BlindIndexer(KEY, default_region=vector["default_region"])
    assert indexer.normalise(vector["kind"], vector["value"]) == vector["normalised"]
    assert indexer.index_hex(vector["kind"], vector["value"]) == vector["index"]


def test_vectors_follow_the_documented_construction() -> None:
    # Recomputed here from the module docstring with the standard library alone.
    for v in VECTORS["vectors"]:
        sub = hmac.new(KEY, b"tessera.blind_index.v1/" + v["kind"].encode(), hashlib.sha256).digest()
        assert hmac.new(sub, v["normalised"].encode(), hashlib.sha256).hexdigest() == v["index"]


@pytest.mark.parametrize(
    ("kind", "a", "b", "region"),
    [
        ("email", " Foo@Bar.com ", "foo@bar.com", None),
        ("email", "ALICE@EXAMPLE.COM\t", "alice@example.com", None),
        ("phone", "+44 20 7946 0958", "020 7946 0958", "GB"),
        ("phone", "+86 138-1234-5678", "13812345678", "CN"),
        ("phone", "(415) 555-2671", "+1 415 555 2671", "US"),
        ("national_id", "11010519491231002x", "110105 1949 1231 002X", None),
        ("national_id", "ab-12.34/56", "AB123456", None),
    ],
)
def test_equivalent_forms_share_one_index(kind: str, a: str, b: str, region: str | None) -> None:
    indexer = BlindIndexer(KEY, default_region=region)
    assert indexer.index(kind, a) == indexer.index(kind, b)


def test_distinct_values_keys_and_kinds_differ() -> None:
    indexer = BlindIndexer(KEY)
    assert indexer.index("email", "a@example.com") != indexer.index("email", "b@example.com")
    assert BlindIndexer(bytes(32)).index("email", "a@example.com") != indexer.index("email", "a@example.com")
    # Domain separation: the same normalised text under another kind's subkey gives another index.
    other = hmac.new(
        hmac.new(KEY, b"tessera.blind_index.v1/email", hashlib.sha256).digest(), b"AB12", hashlib.sha256
    ).digest()
    assert indexer.index(IdentifierKind.NATIONAL_ID, "ab-12") != other


@pytest.mark.parametrize(
    ("kind", "value", "region"),
    [
        ("email", "not-an-email", None),
        ("email", "a@b@c", None),
        ("email", "a b@c.com", None),
        ("phone", "020 7946 0958", None),  # national form without a region
        ("phone", "call me", "GB"),
        ("phone", "+44 12", None),
        ("national_id", " -./ ", None),
    ],
)
def test_invalid_identifiers_are_refused_without_echoing(kind: str, value: str, region: str | None) -> None:
    with pytest.raises(InvalidRequest) as info:
        BlindIndexer(KEY, default_region=region).index(kind, value)
    assert value.strip() not in str(info.value) or not value.strip()


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        BlindIndexer(b"short")
    with pytest.raises(ValueError):
        BlindIndexer(KEY, default_region="XX")
    with pytest.raises(ValueError):
        BlindIndexer(KEY).index("passport", "X1")
    assert KEY.hex() not in repr(BlindIndexer(KEY))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    local=st.from_regex(r"[a-z0-9._+-]{1,12}", fullmatch=True),
    domain=st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,4}", fullmatch=True),
    pad=st.sampled_from(["", " ", "\t", "  \n"]),
)
def test_email_index_ignores_case_and_padding(local: str, domain: str, pad: str) -> None:
    indexer = BlindIndexer(KEY)
    email = f"{local}@{domain}"
    assert indexer.index("email", pad + email.upper() + pad) == indexer.index("email", email)
