"""PII detectors for a *column sample*: which kinds of personal identifiers do the values look like?

Used at ingestion to catch a column mapped to a low tier that in fact holds PII. Each detector
looks at one value; :func:`looks_like_pii` reports a kind when at least ``min_fraction`` of the
sample's non-empty values match it, so a chance match (about 1 in 10 random digit strings passes
Luhn) does not flag a column. Checks used:

* email: ``local@domain.tld`` shape;
* phone: mainland-China mobile ``1[3-9]`` + 9 digits (optionally ``+86`` / ``0086`` / ``86``), any
  ``+`` international number that ``phonenumbers`` finds valid, or a national number valid in
  ``default_region``;
* national id: the 18-character PRC resident identity number (region code, a real date of birth
  between 1900 and today, ISO 7064 MOD 11-2 check character per GB 11643-1999), or a US SSN shape
  (``AAA-GG-SSSS``, area not 000/666/9xx, group not 00, serial not 0000);
* card number: 13-19 digits, spaces or dashes allowed, Luhn check digit valid.

Costs: linear in the sample; pass a sample (a few hundred values), not a whole column.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from datetime import date

import phonenumbers

__all__ = [
    "PiiKind",
    "detect",
    "is_card_number",
    "is_email",
    "is_phone",
    "is_prc_resident_id",
    "is_us_ssn",
    "kind_fractions",
    "looks_like_pii",
    "luhn_valid",
    "mod11_2_check_char",
]


class PiiKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    NATIONAL_ID = "national_id"
    CARD_NUMBER = "card_number"


_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"  # local part (dot-atom characters)
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"  # domain.tld
)
_SEPARATORS = re.compile(r"[\s\-().]")
_CN_MOBILE = re.compile(r"(?:\+86|0086|86)?1[3-9]\d{9}")
_PRC_ID = re.compile(r"[1-9]\d{16}[\dX]")
_SSN = re.compile(r"(\d{3})[- ](\d{2})[- ](\d{4})")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
# First digit of a PRC administrative division code: 1-6 mainland provinces, 7 Taiwan, 8 HK/Macao, 9 abroad.
_PRC_REGION_FIRST = frozenset("123456789")
_MOD11_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7, 9, 10, 5, 8, 4, 2, 1, 6, 3, ...


def is_email(value: str) -> bool:
    return _EMAIL.fullmatch(value.strip()) is not None


def is_phone(value: str, *, default_region: str | None = None) -> bool:
    text = value.strip()
    compact = _SEPARATORS.sub("", text)
    if _CN_MOBILE.fullmatch(compact):
        return True
    if not compact.startswith("+") and default_region is None:
        return False
    if not re.fullmatch(r"\+?\d{6,17}", compact):
        return False
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def mod11_2_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of 17 digits (``"0"``-``"9"`` or ``"X"`` for 10)."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("the check character needs exactly 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _MOD11_WEIGHTS, strict=True))
    check = (12 - total % 11) % 11
    return "X" if check == 10 else str(check)


def is_prc_resident_id(value: str, *, today: date | None = None) -> bool:
    """18-character PRC resident ID: plausible region, real birth date (1900..today), valid check."""
    text = value.strip().upper()
    if not _PRC_ID.fullmatch(text) or text[0] not in _PRC_REGION_FIRST:
        return False
    try:
        born = date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if not date(1900, 1, 1) <= born <= (today or date.today()):
        return False
    return mod11_2_check_char(text[:17]) == text[17]


def is_us_ssn(value: str) -> bool:
    match = _SSN.fullmatch(value.strip())
    if match is None:
        return False
    area, group, serial = match.groups()
    return area not in {"000", "666"} and not area.startswith("9") and group != "00" and serial != "0000"


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card_number(value: str) -> bool:
    text = value.strip()
    if not _CARD.fullmatch(text):
        return False
    digits = re.sub(r"[ -]", "", text)
    # A run of one digit (000…0) passes Luhn but is a placeholder, not a card.
    return len(set(digits)) > 1 and luhn_valid(digits)


def detect(value: object, *, default_region: str | None = None) -> set[PiiKind]:
    """The kinds one value looks like (possibly several, e.g. an 18-digit ID that passes Luhn)."""
    if value is None:
        return set()
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return set()
    found: set[PiiKind] = set()
    if is_email(text):
        found.add(PiiKind.EMAIL)
    if is_phone(text, default_region=default_region):
        found.add(PiiKind.PHONE)
    if is_prc_resident_id(text) or is_us_ssn(text):
        found.add(PiiKind.NATIONAL_ID)
    if is_card_number(text):
        found.add(PiiKind.CARD_NUMBER)
    return found


def kind_fractions(values: Iterable[object], *, default_region: str | None = None) -> dict[PiiKind, float]:
    """Fraction of the non-empty values matching each kind (kinds never matched are absent)."""
    counts: dict[PiiKind, int] = {}
    seen = 0
    for value in values:
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        seen += 1
        for kind in detect(value, default_region=default_region):
            counts[kind] = counts.get(kind, 0) + 1
    return {kind: n / seen for kind, n in counts.items()} if seen else {}


def looks_like_pii(
    values: Iterable[object], *, min_fraction: float = 0.5, default_region: str | None = None
) -> set[str]:
    """Kinds (``"email"``, ``"phone"``, ``"national_id"``, ``"card_number"``) that at least
    ``min_fraction`` (0 < f <= 1) of the sample's non-empty values match; empty values are ignored
    and an all-empty sample gives the empty set."""
    if not 0 < min_fraction <= 1:
        raise ValueError("min_fraction must be in (0, 1]")
    fractions = kind_fractions(values, default_region=default_region)
    return {str(kind) for kind, share in fractions.items() if share >= min_fraction}
