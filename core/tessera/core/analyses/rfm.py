"""RFM maths: log-scaled bins, quintile boundaries from a (noisy) histogram, 1-5 scores and the
named segments (pure numpy; ``rfm_segments`` runs it jointly, nodes label their customers with it).

Scores. With the consortium's quintile boundaries ``b1 <= b2 <= b3 <= b4`` of an axis, a value
``x`` scores ``1 + #{q : x > b_q}`` for frequency and monetary (more is better) and
``5 - #{q : x > b_q}`` for recency (more recent is better). Ties at a boundary take the lower
score of F and M and the higher of R; when boundaries coincide (most customers bought once) the
scores skip values rather than split equal customers at random.

Segments: the common R x FM grid, FM = the mean of the F and M scores rounded half up,
``(F + M + 1) // 2``. Rows are R from 5 (recent) down to 1, columns FM from 1 to 5::

    R\\FM 1               2                   3               4            5
    5    New             Potential Loyalist  Loyal           Champions    Champions
    4    Promising       Potential Loyalist  Loyal           Champions    Champions
    3    About to Sleep  Need Attention      Need Attention  Loyal        Loyal
    2    Hibernating     Hibernating         At Risk         At Risk      Can't Lose
    1    Lost            Lost                At Risk         Can't Lose   Can't Lose

It follows the usual reading of the grid (Champions: recent and frequent big spenders; Can't
Lose: once-frequent big spenders gone quiet; New: recent first-time, low-value buyers; Lost:
long gone and low value), resolved into one cell each where published charts overlap.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from tessera.core.analyses.vector import FloatArray, IntArray
from tessera.core.errors import InvalidRequest

AXES = ("recency", "frequency", "monetary")
# Whole numbers by construction (days, purchases): their boundaries are rounded to the nearest
# integer, so a bin narrower than 1 that holds one integer puts the boundary ON it, not just below.
INTEGER_AXES = ("recency", "frequency")
LEVELS = (0.2, 0.4, 0.6, 0.8)
SEGMENTS = (
    "Champions",
    "Loyal",
    "Potential Loyalist",
    "New",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose",
    "Hibernating",
    "Lost",
)
_C, _L, _PL, _N, _PR, _NA, _AS, _AR, _CL, _H, _LO = range(len(SEGMENTS))
# GRID[r - 1][fm - 1]: segment index of recency score r and FM score fm.
GRID = np.array(
    [
        [_LO, _LO, _AR, _CL, _CL],
        [_H, _H, _AR, _AR, _CL],
        [_AS, _NA, _NA, _L, _L],
        [_PR, _PL, _L, _C, _C],
        [_N, _PL, _L, _C, _C],
    ],
    dtype=np.int64,
)


def log_edges(upper: float, bins: int) -> FloatArray:
    """``bins + 1`` edges over ``[0, upper]``, equal-width in ``log1p``: fine where customers are
    many (small counts, recent days, small spend), coarse in the long tail."""
    return np.expm1(np.linspace(0.0, np.log1p(upper), bins + 1))


def log_bins(values: npt.ArrayLike, *, upper: float, bins: int) -> IntArray:
    """Bin of each value on ``log_edges(upper, bins)``; values are clamped into ``[0, upper]``."""
    x = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, upper)
    position = np.log1p(x) / np.log1p(upper) * bins
    out: IntArray = np.clip(np.floor(position), 0, bins - 1).astype(np.int64)
    return out


def quantiles_from_histogram(
    counts: npt.ArrayLike, *, upper: float, levels: tuple[float, ...] = LEVELS, integer: bool = False
) -> tuple[float, ...]:
    """Quantiles of a (noisy) histogram on ``log_edges(upper, len(counts))``, interpolated linearly
    in ``log1p`` inside the bin where the cumulative share reaches each level.

    Negative noisy counts count as 0 (post-processing). The result is non-decreasing and lies in
    the bin that holds the true quantile when the histogram is exact. With ``integer`` (whole-number
    data) the bin's mass is spread evenly over the integers the bin holds (``integer_span``), not
    over its width, and the quantile is the integer where the cumulative share reaches the level
    (numpy's ``inverted_cdf``): exact wherever a bin holds one integer. Rounding the interpolated
    width instead was one day off at CDNOW's recency quintiles (bins 20 days wide at 450 days),
    which cost 1.5% of label agreement even without noise. Raises ``InvalidRequest`` when the
    histogram holds no mass (nothing to place boundaries on).
    """
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    total = float(c.sum())
    if not total > 0:
        raise InvalidRequest("the released histogram is empty: no boundaries can be placed")
    bins = c.size
    cumulative = np.concatenate([[0.0], np.cumsum(c)]) / total
    log_upper = float(np.log1p(upper))
    out = []
    for level in levels:
        b = int(np.clip(np.searchsorted(cumulative, level, side="left") - 1, 0, bins - 1))
        inside = float(np.clip(0.0 if c[b] == 0 else (level - cumulative[b]) / (c[b] / total), 0.0, 1.0))
        span = integer_span(b, upper=upper, bins=bins) if integer else None
        if span is not None:
            first, last = span
            # A share that lands exactly on an integer's cumulative mass is that integer (1e-9:
            # float error must not push it to the next one).
            out.append(float(first + max(math.ceil(inside * (last - first + 1) - 1e-9), 1) - 1))
        else:
            out.append(float(np.expm1((b + inside) / bins * log_upper)))
    values = np.maximum.accumulate(np.array(out))
    if integer:
        values = np.minimum(np.round(values), upper)
    return tuple(float(x) for x in values)


def integer_span(b: int, *, upper: float, bins: int) -> tuple[int, int] | None:
    """The first and last integer that ``log_bins`` puts in bin ``b`` (None: the bin holds none)."""
    edges = log_edges(upper, bins)

    def bin_of(x: int) -> int:
        return int(log_bins([float(x)], upper=upper, bins=bins)[0])

    top = math.floor(upper)
    first = min(max(math.floor(edges[b]), 0), top)
    while first <= top and bin_of(first) < b:
        first += 1
    while first > 0 and bin_of(first - 1) >= b:
        first -= 1
    last = min(max(math.ceil(edges[b + 1]), 0), top)
    while last >= 0 and bin_of(last) > b:
        last -= 1
    while last < top and bin_of(last + 1) <= b:
        last += 1
    if first > last or bin_of(first) != b:
        return None
    return first, last


def score(values: npt.ArrayLike, boundaries: tuple[float, ...], *, higher_is_better: bool) -> IntArray:
    """1-5 scores against four non-decreasing boundaries (see the module docstring)."""
    b = np.asarray(boundaries, dtype=np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or np.any(np.diff(b) < 0):
        raise InvalidRequest("an RFM axis needs four finite, non-decreasing boundaries")
    above = (np.asarray(values, dtype=np.float64)[:, None] > b[None, :]).sum(axis=1)
    out: IntArray = (1 + above if higher_is_better else 5 - above).astype(np.int64)
    return out


def fm_score(frequency: IntArray, monetary: IntArray) -> IntArray:
    return (frequency + monetary + 1) // 2


def segments(
    recency: npt.ArrayLike,
    frequency: npt.ArrayLike,
    monetary: npt.ArrayLike,
    boundaries: dict[str, tuple[float, ...]],
) -> IntArray:
    """Segment index (into ``SEGMENTS``) of each customer from its R, F and M values."""
    r = score(recency, boundaries["recency"], higher_is_better=False)
    f = score(frequency, boundaries["frequency"], higher_is_better=True)
    m = score(monetary, boundaries["monetary"], higher_is_better=True)
    return GRID[r - 1, fm_score(f, m) - 1]
