"""Parse and standardise one raw source value by its mapped type (no I/O, no keys).

Phone numbers become E.164 (``phonenumbers``; national numbers need the mapping's default region),
emails are trimmed and lower-cased, dates and date-times become UTC (a value without an offset is
read in the mapping's time zone), amounts become a ``Decimal`` in the currency unit (4 places).
A value that cannot be read raises :class:`BadValue` whose reason names the problem, never the value.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation

from tessera.client.vault.blind_index import normalise_email, normalise_national_id, normalise_phone
from tessera.client.vault.mapping import ColumnMap
from tessera.core.errors import InvalidRequest

_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_AMOUNT_NOISE = re.compile(r"[\s,_$€£¥]|[A-Z]{3}$|^[A-Z]{3}")
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_QUANTUM = Decimal("0.0001")

Value = str | float | bool | datetime | Decimal | None


def text_of(value: Value) -> str:
    """The canonical text of a standardised value (what is encrypted and fingerprinted)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class BadValue(ValueError):
    """A value that does not fit its column; ``reason`` is safe to show (no data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _moment(text: str, fmt: str | None, zone: tzinfo, *, kind: str) -> datetime:
    try:
        if fmt is not None:
            moment = datetime.strptime(text, fmt)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        hint = f"does not match the format {fmt}" if fmt else "is not an ISO date (YYYY-MM-DD)"
        raise BadValue(f"{kind} {hint}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    moment = moment.astimezone(UTC)
    if kind == "date":
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment


def _number(text: str, kind: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise BadValue(f"{'an integer' if kind == 'int' else 'a number'} was expected") from None
    if not math.isfinite(number):
        raise BadValue("the number is not finite")
    if kind == "int" and not number.is_integer():
        raise BadValue("an integer was expected")
    return number


def _amount(text: str, minor_units: int) -> Decimal:
    cleaned = _AMOUNT_NOISE.sub("", text.upper())
    negative = cleaned.startswith("(") and cleaned.endswith(")")  # accounting notation
    try:
        amount = Decimal(cleaned.strip("()"))
    except InvalidOperation:
        raise BadValue("an amount was expected") from None
    if not amount.is_finite():
        raise BadValue("the amount is not finite")
    if negative:
        amount = -amount
    if minor_units:
        amount = amount.scaleb(-minor_units)
    return amount.quantize(_QUANTUM)


def _identifier(kind: str, text: str, default_region: str | None) -> str:
    try:
        if kind == "email":
            value = normalise_email(text)
            if not _EMAIL_SHAPE.fullmatch(value):
                raise BadValue("an email address was expected")
            return value
        if kind == "phone":
            return normalise_phone(text, default_region=default_region)
        if kind == "national_id":
            return normalise_national_id(text)
    except InvalidRequest:
        hint = (
            " (with a country code, or set a default region)"
            if kind == "phone" and default_region is None
            else ""
        )
        raise BadValue(f"a valid {kind.replace('_', ' ')} was expected{hint}") from None
    return text


def parse_value(col: ColumnMap, raw: str | None, *, zone: tzinfo, default_region: str | None) -> Value:
    """The standardised value of ``raw`` for ``col``; ``None`` when empty; :class:`BadValue` if unreadable."""
    text = "" if raw is None else raw.strip()
    if not text:
        return None
    if col.identifier is not None:
        return _identifier(col.identifier, text, default_region)
    kind = col.type
    if kind in ("string", "category"):
        return text
    if kind in ("int", "float"):
        return _number(text.replace(",", "") if kind == "int" else text, kind)
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise BadValue("a yes/no value was expected (true/false, 1/0, yes/no)")
    if kind in ("date", "datetime"):
        return _moment(text, col.format, zone, kind=kind)
    if kind == "amount":
        return _amount(text, col.minor_units)
    raise BadValue("the column has an unknown type")
