"""Shared helpers of the DP kernel tests: seeded generators and a chi-square goodness-of-fit test.

Threshold: a sampler fails when the chi-square p-value is below ``P_MIN = 1e-3``. Generators are
seeded, so each test is deterministic; the threshold only says how surprising a fixed sample may be
before we call the sampler wrong. A negative control (a deliberately wrong pmf) shows the test can
fail. The p-value uses the Wilson–Hilferty cube-root normal approximation of the chi-square law,
accurate to a few percent of p at the >= 10 degrees of freedom used here (no scipy needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

P_MIN = 1e-3
MIN_EXPECTED = 5.0

Pmf = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float64]]


def chi2_sf(stat: float, dof: int) -> float:
    """Upper tail of the chi-square law (Wilson–Hilferty)."""
    k = float(dof)
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def gof_pvalue(samples: npt.ArrayLike, pmf: Pmf) -> float:
    """Chi-square p-value of integer ``samples`` against ``pmf``.

    Bins are the single integers whose expected count is at least 5, plus one bin for each tail
    (all values below, all values above) carrying the remaining probability.
    """
    xs = np.asarray(samples, dtype=np.int64).ravel()
    n = xs.size
    centre = int(np.round(np.median(xs)))
    width = int(max(np.max(np.abs(xs - centre)), 1))
    support = np.arange(centre - width - 5, centre + width + 6)
    probs = pmf(support)
    keep = np.nonzero(probs * n >= MIN_EXPECTED)[0]
    lo, hi = support[keep[0]], support[keep[-1]]
    inner = (support >= lo) & (support <= hi)
    expected = probs[inner] * n
    observed = np.bincount(xs[(xs >= lo) & (xs <= hi)] - lo, minlength=hi - lo + 1).astype(float)
    cells_obs = [observed]
    cells_exp = [expected]
    below = float(np.sum(probs[support < lo]))
    above = max(0.0, 1.0 - float(np.sum(probs[support <= hi])))
    for tail_prob, count in ((below, np.sum(xs < lo)), (above, np.sum(xs > hi))):
        if tail_prob * n >= 1.0:
            cells_obs.append(np.array([float(count)]))
            cells_exp.append(np.array([tail_prob * n]))
        elif count > 3:
            return 0.0  # many samples where the pmf puts (almost) no mass
    obs = np.concatenate(cells_obs)
    exp = np.concatenate(cells_exp)
    stat = float(np.sum((obs - exp) ** 2 / exp))
    return chi2_sf(stat, obs.size - 1)


def two_sample_pvalue(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Chi-square test of homogeneity of two integer samples (bins with >= 10 pooled counts)."""
    xa = np.asarray(a, dtype=np.int64).ravel()
    xb = np.asarray(b, dtype=np.int64).ravel()
    lo = int(min(xa.min(), xb.min()))
    ca = np.bincount(xa - lo).astype(float)
    cb = np.bincount(xb - lo).astype(float)
    size = max(ca.size, cb.size)
    ca = np.pad(ca, (0, size - ca.size))
    cb = np.pad(cb, (0, size - cb.size))
    pooled = ca + cb
    # Merge sparse bins into one so every cell is well populated.
    dense = pooled >= 10
    rows_a = np.append(ca[dense], ca[~dense].sum())
    rows_b = np.append(cb[dense], cb[~dense].sum())
    if rows_a[-1] + rows_b[-1] == 0:
        rows_a, rows_b = rows_a[:-1], rows_b[:-1]
    total = rows_a + rows_b
    na, nb = xa.size, xb.size
    ea = total * na / (na + nb)
    eb = total * nb / (na + nb)
    stat = float(np.sum((rows_a - ea) ** 2 / ea + (rows_b - eb) ** 2 / eb))
    return chi2_sf(stat, rows_a.size - 1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.Generator(np.random.PCG64DXSM(20260523))


@pytest.fixture
def gof() -> Callable[[npt.ArrayLike, Pmf], float]:
    return gof_pvalue


@pytest.fixture
def two_sample() -> Callable[[npt.ArrayLike, npt.ArrayLike], float]:
    return two_sample_pvalue


@pytest.fixture
def p_min() -> float:
    return P_MIN
