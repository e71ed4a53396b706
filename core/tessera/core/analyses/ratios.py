"""Ratios of released noisy totals with delta-method 95% intervals (post-processing, no budget).

For ``R = A / B`` with independent zero-mean noises of variances ``var_a`` and ``var_b``:
``Var(R) ≈ (var_a + R²·var_b) / B²``. Intervals are clipped to public bounds (a rate to [0, 1],
a mean to its clip range), which never moves them away from a true value inside those bounds.
"""

from __future__ import annotations

import math
from typing import Any

from tessera.core.analyses import vector as v


def ratio(
    a: float, b: float, *, var_a: float, var_b: float, lower: float = -math.inf, upper: float = math.inf
) -> dict[str, Any] | None:
    """``a / b`` with a 95% interval, or ``None`` when the noisy denominator is not positive."""
    if not b > 0:
        return None
    r = a / b
    half = v.Z95 * math.sqrt(var_a + r * r * var_b) / b

    def clip(x: float) -> float:
        return float(min(max(x, lower), upper))

    return {"value": clip(r), "ci95": [clip(r - half), clip(r + half)]}


def share(part: float, total: float, *, var_cell: float, cells: int) -> dict[str, Any] | None:
    """``part / total`` where ``total`` sums ``cells`` independently noised cells, ``part`` one of
    them: ``Var ≈ var_cell·((total - part)² + (cells - 1)·part²) / total⁴``."""
    if not total > 0:
        return None
    s = part / total
    rest = total - part
    half = v.Z95 * math.sqrt(var_cell * (rest * rest + (cells - 1) * part * part)) / total**2
    return {"value": min(max(s, 0.0), 1.0), "ci95": [max(s - half, 0.0), min(s + half, 1.0)]}
