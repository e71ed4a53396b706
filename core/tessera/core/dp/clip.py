"""Per-customer contribution bounds: clip every customer's row so the node's sum has a known
sensitivity.

A node's vector is the sum of one row per customer (rows of shape ``(customers, d)``). Two datasets
are neighbours when one customer is added or removed (``"add_remove"``, the default, which is what
the budget ledger assumes) or when one customer's row is replaced by another (``"replace"``, twice
the sensitivity). The sensitivity returned is that of the per-node sum under the chosen relation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from tessera.core.dp.errors import DpParameterError

Neighbouring = Literal["add_remove", "replace"]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """How far one customer can move the per-node sum, in the units of the clipped values.

    ``rows_changed`` is 1 for add/remove and 2 for replace; quantisation needs it because each
    changed row can add up to one unit of rounding per coordinate.
    """

    l1: float
    l2: float
    linf: float
    rows_changed: int = 1

    def __post_init__(self) -> None:
        for name in ("l1", "l2", "linf"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise DpParameterError(f"sensitivity {name} must be finite and non-negative")
        if self.rows_changed not in (1, 2):
            raise DpParameterError("rows_changed must be 1 (add/remove) or 2 (replace)")
        # Norm inequalities hold for any real vector; a violation means a caller mixed units.
        if self.linf > self.l2 * (1 + 1e-12) or self.l2 > self.l1 * (1 + 1e-12):
            raise DpParameterError("sensitivities must satisfy linf <= l2 <= l1")


@dataclass(frozen=True, slots=True)
class Clipped:
    """Clipped rows (same shape as the input) and the sensitivity of their column sum."""

    values: FloatArray
    sensitivity: Sensitivity


def _all_finite(array: FloatArray) -> bool:
    """True iff every value is finite; one summing pass and no full-size temporary.

    Any NaN or ±inf makes the sum non-finite; a finite array whose sum overflows falls back to the
    exact (slower) element test, so the answer is always exact.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.add.reduce(array, axis=None))
    return math.isfinite(total) or bool(np.all(np.isfinite(array)))


def _rows(rows: npt.ArrayLike, *, check_finite: bool = True) -> FloatArray:
    array = np.asarray(rows, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise DpParameterError("rows must be a 2-D array of shape (customers, dimensions)")
    if check_finite and not _all_finite(array):
        # NaN would slip through np.clip and poison the whole sum.
        raise DpParameterError("rows contain a non-finite value")
    return array


def _factor(neighbouring: Neighbouring) -> int:
    if neighbouring not in ("add_remove", "replace"):
        raise DpParameterError("neighbouring must be 'add_remove' or 'replace'")
    return 1 if neighbouring == "add_remove" else 2


def clip_coordinates(
    rows: npt.ArrayLike,
    *,
    lower: float | npt.ArrayLike,
    upper: float | npt.ArrayLike,
    neighbouring: Neighbouring = "add_remove",
) -> Clipped:
    """Clip each coordinate ``j`` of every row into ``[lower_j, upper_j]``.

    Bounds are scalars or one value per column. Sensitivity of the column sum: a row contributes at
    most ``m_j = max(|lower_j|, |upper_j|)`` to coordinate ``j`` (add/remove) or ``upper_j - lower_j``
    (replace); L1/L2/L∞ are the norms of that vector. Cost: a summing pass (finiteness) and one
    clipping pass; scalar bounds take a closed form for the sensitivity.
    """
    factor = _factor(neighbouring)
    array = _rows(rows)
    if np.ndim(lower) == 0 and np.ndim(upper) == 0:
        return _clip_scalar(array, lower=lower, upper=upper, factor=factor)
    try:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (array.shape[1],))
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (array.shape[1],))
    except ValueError as exc:
        raise DpParameterError("clip bounds must be scalars or one value per column") from exc
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo > hi):
        raise DpParameterError("clip bounds must be finite with lower <= upper")
    clipped = np.clip(array, lo, hi)
    reach = hi - lo if factor == 2 else np.maximum(np.abs(lo), np.abs(hi))
    sens = Sensitivity(
        l1=float(np.sum(reach)),
        l2=float(np.sqrt(np.sum(reach * reach))),
        linf=float(np.max(reach, initial=0.0)),
        rows_changed=factor,
    )
    return Clipped(values=clipped, sensitivity=sens)


def _clip_scalar(array: FloatArray, *, lower: npt.ArrayLike, upper: npt.ArrayLike, factor: int) -> Clipped:
    """The same bounds for every column: closed-form sensitivity, one clipping pass.

    Every column has the same reach ``m``, so L1 = d·m, L2 = sqrt(d·m²) (= m·sqrt(d) when m² would
    overflow) and L∞ = m: no per-column vectors of bounds are built.
    """
    try:
        lo, hi = float(np.asarray(lower, dtype=np.float64)), float(np.asarray(upper, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise DpParameterError("clip bounds must be scalars or one value per column") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise DpParameterError("clip bounds must be finite with lower <= upper")
    clipped = np.clip(array, lo, hi, out=np.empty_like(array))
    dim = array.shape[1]
    reach = hi - lo if factor == 2 else max(abs(lo), abs(hi))
    square = dim * reach * reach
    sens = Sensitivity(
        l1=dim * reach,
        l2=math.sqrt(square) if math.isfinite(square) else reach * math.sqrt(dim),
        linf=reach if dim else 0.0,
        rows_changed=factor,
    )
    return Clipped(values=clipped, sensitivity=sens)


def clip_l2(
    rows: npt.ArrayLike,
    *,
    bound: float,
    neighbouring: Neighbouring = "add_remove",
) -> Clipped:
    """Scale every row whose Euclidean norm exceeds ``bound`` back onto the ball of radius ``bound``.

    Sensitivity of the column sum (per changed row, times 2 for replace): L2 = bound,
    L∞ = bound, L1 = bound·sqrt(d) (Cauchy–Schwarz). Rows inside the ball are returned unchanged.
    """
    factor = _factor(neighbouring)
    if not math.isfinite(bound) or bound <= 0:
        raise DpParameterError("the L2 clip bound must be a positive finite number")
    array = _rows(rows, check_finite=False)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", array, array))
        norms_finite = math.isfinite(float(np.add.reduce(norms)))
    # A NaN or ±inf makes its row's norm non-finite, so the norms stand in for a separate finiteness
    # pass; only when one is not finite (or a huge finite row overflowed) is every value examined.
    if not norms_finite and not np.all(np.isfinite(array)):
        raise DpParameterError("rows contain a non-finite value")
    # Rows with norm 0 would divide by zero; max() with the bound leaves them (and all short rows) alone.
    shrink = bound / np.maximum(norms, bound)
    clipped = array * shrink[:, None]
    dim = array.shape[1]
    sens = Sensitivity(
        l1=factor * bound * math.sqrt(dim),
        l2=factor * bound,
        linf=factor * bound,
        rows_changed=factor,
    )
    return Clipped(values=clipped, sensitivity=sens)
