"""PII detectors: true and false cases, check digits, column-level fractions."""

from __future__ import annotations

import random
from datetime import date

import pytest

from tessera.client.vault.pii import (
    PiiKind,
    detect,
    is_card_number,
    is_email,
    is_phone,
    is_prc_resident_id,
    is_us_ssn,
    kind_fractions,
    looks_like_pii,
    luhn_valid,
    mod11_2_check_char,
)


def _prc_id(first17: str) -> str:
    return first17 + mod11_2_check_char(first17)


def test_mod11_2_known_answers() -> None:
    # Worked examples of GB 11643-1999 / ISO 7064 MOD 11-2.
    assert mod11_2_check_char("11010519491231002") == "X"
    assert mod11_2_check_char("44052418800101001") == "4"
    with pytest.raises(ValueError):
        mod11_2_check_char("1234")


@pytest.mark.parametrize("value", ["11010519491231002X", "11010519491231002x", _prc_id("32031119700101001")])
def test_prc_id_valid(value: str) -> None:
    assert is_prc_resident_id(value)
    assert PiiKind.NATIONAL_ID in detect(value)


@pytest.mark.parametrize(
    "value",
    [
        "110105194912310021",  # wrong check digit
        "110105194913310025",  # month 13
        _prc_id("11010519490230002"),  # 30 February
        _prc_id("11010518991231002"),  # born before 1900
        "440524188001010014",  # the standard's own example: valid check, but born 1880
        _prc_id("01010519491231002"),  # region code cannot start with 0
        "11010519491231002",  # 17 characters
        "1101051949123100X2",  # X only as the check character
    ],
)
def test_prc_id_invalid(value: str) -> None:
    assert not is_prc_resident_id(value)


def test_prc_id_birth_date_not_in_future() -> None:
    value = _prc_id("11010520300101002")
    assert not is_prc_resident_id(value, today=date(2026, 1, 1))
    assert is_prc_resident_id(value, today=date(2031, 1, 1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("123-45-6789", True),
        ("123 45 6789", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("912-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("123456789", False),  # bare nine digits are too ambiguous to call an SSN
        ("12-345-6789", False),
    ],
)
def test_us_ssn_shape(value: str, expected: bool) -> None:
    assert is_us_ssn(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111 1111 1111 1111", True),
        ("4111-1111-1111-1111", True),
        ("378282246310005", True),  # 15-digit Amex test number
        ("6011000990139424", True),
        ("4222222222222", True),  # 13 digits
        ("4111 1111 1111 1112", False),  # Luhn fails
        ("411111111111", False),  # 12 digits
        ("41111111111111111111", False),  # 20 digits
        ("0000 0000 0000 0000", False),  # placeholder
        ("4111_1111_1111_1111", False),
    ],
)
def test_card_numbers(value: str, expected: bool) -> None:
    assert is_card_number(value) is expected


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("7992a398713")


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("13812345678", None, True),
        ("+86 138 1234 5678", None, True),
        ("0086-138-1234-5678", None, True),
        ("8613912345678", None, True),
        ("+44 20 7946 0958", None, True),
        ("020 7946 0958", "GB", True),
        ("020 7946 0958", None, False),  # national form needs a region
        ("12812345678", None, False),  # 12x is not a mobile prefix
        ("1381234567", None, False),  # 10 digits
        ("2024-01-01", "GB", False),
        ("hello", "GB", False),
    ],
)
def test_phones(value: str, region: str | None, expected: bool) -> None:
    assert is_phone(value, default_region=region) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice@example.com", True),
        (" Bob.Smith+tag@mail.example.co.uk ", True),
        ("no-at-sign.example.com", False),
        ("a@b", False),
        ("a@@b.com", False),
        ("@example.com", False),
    ],
)
def test_emails(value: str, expected: bool) -> None:
    assert is_email(value) is expected


def test_column_level_detection() -> None:
    emails = [f"user{i}@example.com" for i in range(20)]
    assert looks_like_pii(emails) == {"email"}
    assert looks_like_pii(emails + ["n/a"] * 25) == set()  # 20/45 below one half
    assert looks_like_pii(emails + ["n/a"] * 25, min_fraction=0.4) == {"email"}
    assert looks_like_pii(emails + [None, "", "  "] * 10) == {"email"}  # empties ignored
    assert looks_like_pii([None, ""]) == set()
    assert looks_like_pii(["13812345678", "+86 139 0000 1111", "15500001111"]) == {"phone"}
    assert looks_like_pii(["11010519491231002X", "123-45-6789"]) == {"national_id"}
    assert looks_like_pii(["4111 1111 1111 1111", "378282246310005"]) == {"card_number"}
    with pytest.raises(ValueError):
        looks_like_pii(emails, min_fraction=0)


def test_non_pii_columns_stay_clean() -> None:
    rng = random.Random(20261123)
    amounts = [f"{rng.uniform(0, 5000):.2f}" for _ in range(200)]
    regions = [rng.choice(["north", "south", "east", "west"]) for _ in range(200)]
    counts = [rng.randint(0, 10_000) for _ in range(200)]
    dates = [f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(200)]
    for column in (amounts, regions, counts, dates):
        assert looks_like_pii(column) == set()
    # Random 16-digit strings pass Luhn about one time in ten: not enough to flag a column.
    digits = ["".join(rng.choice("0123456789") for _ in range(16)) for _ in range(300)]
    share = kind_fractions(digits).get(PiiKind.CARD_NUMBER, 0.0)
    assert 0.05 < share < 0.16
    assert looks_like_pii(digits) == set()
