"""Errors of the DP kernels, placed in Tessera's one hierarchy (``tessera.core.errors``).

They also derive from ``ValueError`` so that numeric callers that only know the standard library can
still catch a bad value as a bad value. Messages name the parameter, never a data value.
"""

from __future__ import annotations

from tessera.core.errors import InvalidRequest


class DpParameterError(InvalidRequest, ValueError):
    """A privacy or kernel parameter is missing, out of range or inconsistent (fail closed)."""

    code = "dp.invalid_parameter"


class QuantisationOverflow(InvalidRequest, ValueError):
    """An integer does not fit the chosen modular bit width; wrapping it would corrupt the sum."""

    code = "dp.overflow"
