"""Tight accounting of the distributed discrete Gaussian: the sum of ``t`` shares ``N_Z(0, σ²/t)``.

``ddg_rho`` returns a zCDP ρ (``D_α <= ρα`` for EVERY ``α > 1``, every pair of neighbours) of
``f(x) + Z``, ``Z`` a vector of iid coordinates, each the sum of ``t`` iid ``N_Z(0, s²)``,
``s = σ/sqrt(t)``; sensitivities are integer shift vectors ``k`` with ``‖k‖₁ <= l1``,
``‖k‖₂ <= l2``, ``‖k‖∞ <= linf``. It is the pointwise minimum, order by order, of three sound
Rényi bounds, then the supremum over orders:

1. **exact**: the pmf ``p`` of one coordinate of ``Z`` by log-domain convolution (binary powering),
   truncated to a window with a rigorously bounded deficit ``η`` (the computed ``p̃ <= p``, and
   ``Σ(p - p̃) <= η`` by Chernoff bounds with the share's exact moment generating function
   ``M``); the divergence ``g_α(m) = D_α(p ‖ p(· - m))`` for integer shifts ``m`` up to ``linf``,
   exact where ``p̃ >= e^30·η`` and bounded outside by the pointwise bound (4) and ``M``;
2. **KLS**: Kairouz, Liu & Steinke 2021, Thm. 1 (``accounting.distributed_gaussian_rho``), with
   ``d`` replaced by the most coordinates an integer shift can touch (``min(d, l1, l2²)``):
   unshifted coordinates have the same law under both neighbours and add zero divergence;
3. **Jensen**: ``D_α <= ‖k‖₂²·(t + α - 1)/(2σ²)``, from (4) and ``σ²``-subgaussianity of the sum
   (Canonne, Kamath & Steinke 2020: ``N_Z(0, s²)`` is ``s²``-subgaussian);
4. the pointwise bound behind 1 and 3: ``log p(x)/p(x-k) <= (t·k² - 2xk)/(2σ²)`` for all ``x``.
   Proof: adding ``-k`` to share ``j`` maps the configurations summing to ``x`` injectively onto
   configurations summing to ``x - k``, so ``p(x-k)/p(x) >= E[exp((2Y_j·k - k²)/(2s²)) | S = x]``;
   average over ``j`` and apply Jensen with ``Σ_j Y_j = x``.

Vectors: coordinates are independent, so a shift vector's divergence is ``Σ_j g_α(|k_j|)``; its
maximum over the sensitivity set is bounded by the smaller of an exact knapsack over the L1 budget
(``Σ m_j <= l1``), ``max_m g_α(m)/m² · l2²`` and ``d·max_m g_α(m)``; no superadditivity is assumed.

Orders: bounds are computed on a geometric grid of ``α`` up to ``_ALPHA_TOP``. Between grid points,
``(α - 1)·D_α`` is convex in ``α`` (and 0 at ``α = 1``), so it lies below the chord through the grid
values; the chord's maximum of ``D_α/α`` on each interval is found in closed form. Above the grid the
KLS and Jensen bounds divided by ``α`` decrease in ``α``, so their value at the top bounds the rest.
Floating point: ``p̃`` is given a relative slack of ``_FLOAT_SLACK`` either way (float64 logsumexp
over a few dozen convolutions is accurate to ~1e-13).

Cost: one ρ is one pmf (a few dozen log-domain convolutions of a few hundred points) and a few
hundred vectorised divergence sums: milliseconds to tens of milliseconds; when the KLS bound is
already within ``1e-3`` of ``Δ₂²/(2σ²)`` (large shares; nothing smaller is possible there, see
``ddg_rho``) the pmf is skipped. ``ddg_sigma`` calibrates by bracketing and secant steps on
``log σ`` (about 5 pmfs where bisection took 11), one calibration at a time per process, and is
cached on exact integer keys and ρ rounded down.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tessera.core.dp.accounting import ddg_tau
from tessera.core.dp.errors import DpParameterError

FloatArray = npt.NDArray[np.float64]

_ALPHA_MIN = 1e-3  # smallest α - 1 on the grid
_ALPHA_TOP = 2.0e4  # largest α on the grid; above it only the analytic bounds are used
_ALPHA_POINTS = 240  # grid ratio about 1.08: the chord over-estimates a Gaussian's ρ by < 0.2%
_DEPTH = 4000.0  # the pmf is resolved down to about exp(-_DEPTH)
_UNDERFLOW = 11000.0  # every positive longdouble product above exp(-_UNDERFLOW) is representable
_MARGIN = 30.0  # p̃ is used only where p̃ >= e^_MARGIN · η (so p <= p̃·(1 + e^-30))
_FLOAT_SLACK = 1e-9
_MAX_WINDOW = 2500  # half-width of the computed pmf, in integer units
_MAX_SHIFT = 64  # largest per-coordinate shift the exact path handles
_MAX_KNAPSACK = 200_000  # L1 budget x shift cap beyond which the knapsack is bounded, not solved
_KLS_TIGHT = 1e-3  # skip the pmf when KLS is within this relative distance of Δ₂²/(2σ²)


def _logsumexp(a: FloatArray, axis: int) -> FloatArray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out: FloatArray = np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)
    return out


def _logconv(a: FloatArray, b: FloatArray) -> FloatArray:
    """``log(exp(a) * exp(b))`` (full convolution) exactly in the log domain."""
    if a.size < b.size:
        a, b = b, a
    n = a.size + b.size - 1
    grid = np.full((b.size, n), -np.inf)
    rows = np.arange(b.size)[:, None]
    grid[rows, rows + np.arange(a.size)[None, :]] = a[None, :] + b[:, None]
    return _logsumexp(grid, axis=0)


class _Share:
    """One share ``N_Z(0, s²)``: its log pmf on ``[-l, l]``, tail bound and moment generating fn."""

    def __init__(self, s: float, depth: float) -> None:
        self.s = s
        self.l = math.ceil(s * math.sqrt(2 * depth)) + 2
        y = np.arange(-self.l, self.l + 1, dtype=np.float64)
        logw = -(y * y) / (2 * s * s)
        # Z is summed over the window; the omitted terms are < exp(-depth) relative and the
        # result is covered by _FLOAT_SLACK.
        self.log_z = float(_logsumexp(logw, axis=0))
        self.y = y
        self.logp: FloatArray = logw - self.log_z
        # P(|Y| > l) <= 2·w(l+1)/Z/(1 - r), r = exp(-(2l+3)/(2s²)) bounds every later term ratio.
        l1 = self.l + 1
        ratio = math.exp(-(2 * self.l + 3) / (2 * s * s))
        self.log_tail = math.log(2) - l1 * l1 / (2 * s * s) - self.log_z - math.log1p(-ratio)

    def log_mgf(self, mu: FloatArray) -> FloatArray:
        """An upper bound on ``log E[exp(μY)]`` for ``μ >= 0`` (exact on the window + tail bound).

        Outside the window ``w(y)e^{μy}`` decreases geometrically once ``y > μs²`` (the window is far
        wider than the ``μ`` used), so the tail is at most ``2·w(l+1)e^{μ(l+1)}/Z/(1 - r_μ)``.
        """
        mu = np.asarray(mu, dtype=np.float64)
        inner = _logsumexp(self.logp[None, :] + mu[:, None] * self.y[None, :], axis=1)
        l1 = self.l + 1
        s2 = self.s * self.s
        step = (2 * self.l + 3) / (2 * s2) - mu  # log of the ratio of successive tail terms
        ok = step > 0
        safe = np.where(ok, step, 1.0)
        tail = math.log(2) - l1 * l1 / (2 * s2) - self.log_z + mu * l1 - np.log1p(-np.exp(-safe))
        tail = np.where(ok, tail, np.inf)
        out: FloatArray = np.logaddexp(inner, tail)
        return out


class _SumPmf:
    """``p̃``: log pmf of the sum of ``t`` shares on ``[-W, W]``, with ``p̃ <= p`` and deficit ``η``.

    The convolutions run in the linear domain in x87 extended precision (``np.longdouble``: 64-bit
    mantissa, exponent down to about ``e^-11355``), so values down to ``e^-_DEPTH`` neither
    underflow nor lose relative precision, and ``np.convolve`` sums non-negative terms directly
    (relative error ~1e-16). Terms that do underflow are dropped, which only lowers ``p̃``; their
    mass, under ``n_a·n_b·e^-11000`` per convolution, is added to ``η``.
    """

    def __init__(self, share: _Share, t: int, window: int) -> None:
        self.share = share
        self.t = t
        self.window = window
        self.mu_grid = np.concatenate(([0.0], np.geomspace(1e-4, 60.0 / max(share.s, 1e-3), 400)))
        self.log_m = share.log_mgf(self.mu_grid)
        deficits = [math.log(t) + share.log_tail]
        one = np.exp(share.logp.astype(np.longdouble))
        result: npt.NDArray[np.longdouble] | None = None
        result_n = 0
        base, base_n = one, 1
        k = t
        while k:
            if k & 1:
                if result is None:
                    result, result_n = base, base_n
                else:
                    result_n += base_n
                    result = self._truncate(self._conv(result, base, deficits), result_n, deficits)
            k >>= 1
            if k:
                base_n *= 2
                base = self._truncate(self._conv(base, base, deficits), base_n, deficits)
        assert result is not None
        with np.errstate(divide="ignore"):
            self.logp: FloatArray = np.log(result).astype(np.float64)
        self.offset = (result.size - 1) // 2  # index of x = 0
        self.log_eta = float(np.logaddexp.reduce(np.array(deficits)))

    @staticmethod
    def _conv(
        a: npt.NDArray[np.longdouble], b: npt.NDArray[np.longdouble], deficits: list[float]
    ) -> npt.NDArray[np.longdouble]:
        deficits.append(math.log(a.size) + math.log(b.size) - _UNDERFLOW)
        out: npt.NDArray[np.longdouble] = np.convolve(a, b)
        return out

    def log_chernoff(self, n: int, b: float) -> float:
        """``log P(S_n >= b)`` upper bound: ``min_μ n·log M(μ) - μb`` (``S_n`` a sum of n shares)."""
        return float(np.min(n * self.log_m - self.mu_grid * b))

    def _truncate(
        self, pmf: npt.NDArray[np.longdouble], n: int, deficits: list[float]
    ) -> npt.NDArray[np.longdouble]:
        half = (pmf.size - 1) // 2
        if half <= self.window:
            return pmf
        # What is dropped is at most the true partial sum's mass beyond the window (both sides).
        deficits.append(math.log(2) + self.log_chernoff(n, self.window + 1))
        return pmf[half - self.window : half + self.window + 1]


def _shift_cap(l1: float, l2: float, linf: float) -> tuple[int, int, int]:
    """Integer caps: (largest per-coordinate shift, L1 budget, L2² budget) of integer shifts."""
    b1 = math.floor(l1 + 1e-9)
    b2 = min(math.floor(l2 * l2 + 1e-9), b1 * b1, math.floor(linf + 1e-9) * b1)
    cap = min(math.floor(linf + 1e-9), b1, math.isqrt(b2))
    return cap, b1, b2


def _alpha_grid() -> FloatArray:
    grid: FloatArray = 1.0 + np.geomspace(_ALPHA_MIN, _ALPHA_TOP - 1.0, _ALPHA_POINTS)
    return grid


def _analytic(alpha: FloatArray, *, s: float, t: int, b2: int, d_eff: int) -> FloatArray:
    """min(KLS, Jensen) Rényi bounds of the vector at each order (each /α is non-increasing)."""
    var = t * s * s
    jensen = b2 * (t + alpha - 1) / (2 * var)
    if s < 0.5:
        return jensen
    tau = ddg_tau(sigma_node=s, summands=t)
    first = alpha * b2 / (2 * var) + tau * d_eff
    second = alpha / 2 * (math.sqrt(b2 / var) + tau * math.sqrt(d_eff)) ** 2
    out: FloatArray = np.minimum(jensen, np.minimum(first, second))
    return out


def _exact_g(pmf: _SumPmf, alpha: FloatArray, cap: int) -> FloatArray:
    """Upper bounds on ``D_α(p ‖ p(· - m))``, shape ``(len(alpha), cap)`` for ``m = 1..cap``."""
    share = pmf.share
    var = pmf.t * share.s * share.s
    logp = pmf.logp
    # The usable set is the run of points around 0 where p̃ >= e^MARGIN·η (an interval in exact
    # arithmetic, p being log-concave; taking the run itself needs no such argument).
    bad = np.nonzero(logp < pmf.log_eta + _MARGIN)[0]
    below, above = bad[bad < pmf.offset], bad[bad > pmf.offset]
    if np.any(bad == pmf.offset):
        return np.full((alpha.size, cap), np.inf)  # even x = 0 is unusable: no exact bound
    lo = int(below[-1]) + 1 if below.size else 0
    hi = int(above[0]) - 1 if above.size else logp.size - 1
    usable = logp[lo : hi + 1]
    x_lo, x_hi = lo - pmf.offset, hi - pmf.offset
    am1 = alpha - 1
    # p <= p̃(1 + e^-MARGIN + slack) inside; p(x - m) >= p̃(x - m)(1 - slack).
    corr = alpha * math.log1p(math.exp(-_MARGIN) + _FLOAT_SLACK) - am1 * math.log1p(-_FLOAT_SLACK)
    out = np.empty((alpha.size, cap))
    mu = pmf.mu_grid
    t_log_m = pmf.t * pmf.log_m
    for m in range(1, cap + 1):
        if usable.size <= m:
            out[:, m - 1] = np.inf
            continue
        terms = alpha[:, None] * usable[None, m:] + (1 - alpha)[:, None] * usable[None, :-m]
        inner = _logsumexp(terms, axis=1) + corr
        offset = am1 * pmf.t * m * m / (2 * var)
        lam = am1 * m / var
        # Left tail x <= x_lo + m - 1, i.e. Y = -x >= a: E[e^{λY}; Y >= a] <= M(μ)^t e^{-(μ-λ)a}.
        a = -(x_lo + m - 1)
        left_mu = np.where(
            mu[None, :] >= lam[:, None], t_log_m[None, :] - (mu[None, :] - lam[:, None]) * a, np.inf
        )
        at_lam = pmf.t * pmf.share.log_mgf(lam)  # μ = λ itself
        left = offset + np.minimum(np.min(left_mu, axis=1), at_lam)
        # Right tail x >= b = x_hi + 1: e^{(α-1)u(x)} <= e^{offset - λb} there, times P(S >= b).
        b = x_hi + 1
        right = offset - lam * b + pmf.log_chernoff(pmf.t, b)
        total = np.logaddexp(inner, np.logaddexp(left, right))
        out[:, m - 1] = total / am1
    return out


def _vector_max(g: FloatArray, *, b1: int, b2: int, d: int) -> FloatArray:
    """Bound on ``max Σ_j g(k_j)`` over integer shift vectors within the caps, per order."""
    cap = g.shape[1]
    m = np.arange(1, cap + 1, dtype=np.float64)
    g = np.maximum(g, 0.0)
    l2_bound = np.max(g / (m * m), axis=1) * b2
    count_bound = np.max(g, axis=1) * min(d, b1)
    bound: FloatArray = np.minimum(l2_bound, count_bound)
    if b1 * cap <= _MAX_KNAPSACK:
        best = np.zeros((b1 + 1, g.shape[0]))
        for budget in range(1, b1 + 1):
            top = best[budget - 1].copy()
            for shift in range(1, min(cap, budget) + 1):
                np.maximum(top, g[:, shift - 1] + best[budget - shift], out=top)
            best[budget] = top
        bound = np.minimum(bound, best[b1])
    else:
        bound = np.minimum(bound, np.max(g / m, axis=1) * b1)
    return bound


def _sup_over_orders(alpha: FloatArray, rdp: FloatArray, tail: FloatArray) -> float:
    """``sup_α D_α/α`` given upper bounds ``rdp`` at grid orders (convexity of ``(α-1)D_α``).

    ``tail[i]`` bounds ``D_α/α`` on the interval ending at ``alpha[i]`` by a non-increasing analytic
    bound evaluated at the interval's left end; the smaller of it and the chord maximum is used.
    """
    xs = np.concatenate(([1.0], alpha))
    ks = np.concatenate(([0.0], (alpha - 1) * rdp))
    best = 0.0
    for i in range(alpha.size):
        x0, x1, k0, k1 = xs[i], xs[i + 1], ks[i], ks[i + 1]
        if not math.isfinite(k1):
            chord = math.inf
        else:
            slope = (k1 - k0) / (x1 - x0)
            a_, b_ = k0 - slope * x0, slope  # chord A + Bα
            cands = [x1]
            if x0 > 1.0:
                cands.append(x0)
            # d/dα (A + Bα)/(α² - α) = 0  <=>  Bα² + 2Aα - A = 0
            if b_ != 0:
                disc = a_ * a_ + a_ * b_
                if disc >= 0:
                    for root in ((-a_ + math.sqrt(disc)) / b_, (-a_ - math.sqrt(disc)) / b_):
                        if x0 < root < x1:
                            cands.append(root)
            vals = [(a_ + b_ * c) / (c * (c - 1)) for c in cands]
            if x0 == 1.0:
                vals.append(b_)  # the limit α -> 1 (A + B = 0 there)
            chord = max(vals)
        best = max(best, min(chord, float(tail[i])))
    return best


def _check(sigma_total: float, survivors_t: int, *, l1: float, l2: float, linf: float, dim: int) -> None:
    if not math.isfinite(sigma_total) or sigma_total <= 0:
        raise DpParameterError("sigma_total must be a positive finite number")
    for name, value in (("survivors_t", survivors_t), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DpParameterError(f"{name} must be a positive integer")
    for name, bound in (("l1", l1), ("l2", l2), ("linf", linf)):
        if not math.isfinite(bound) or bound < 0:
            raise DpParameterError(f"{name} sensitivity must be a non-negative finite number")


def ddg_rho(
    *,
    sigma_total: float,
    survivors_t: int,
    l1: float,
    l2: float,
    dim: int,
    linf: float | None = None,
) -> float:
    """zCDP ρ of ``x + Σ_{i<t} N_Z(0, σ²/t)^dim`` for integer shifts within ``(l1, l2, linf)``.

    A sound upper bound (never below the exact ρ, see the module docstring); ``linf`` defaults to
    ``l1``. Sensitivities are in integer units and are floored (``‖k‖₁ <= floor(l1)`` for integer
    ``k``). ``dim`` matters only through ``min(dim, l1, l2²)`` coordinates.
    """
    linf = l1 if linf is None else linf
    _check(sigma_total, survivors_t, l1=l1, l2=l2, linf=linf, dim=dim)
    cap, b1, b2 = _shift_cap(l1, l2, linf)
    if cap == 0:
        return 0.0
    return _rho(float(sigma_total), survivors_t, cap=cap, b1=b1, b2=b2, d=min(dim, b1, b2))


@functools.lru_cache(maxsize=4096)
def _rho(sigma: float, t: int, *, cap: int, b1: int, b2: int, d: int) -> float:
    s = sigma / math.sqrt(t)
    var = sigma * sigma
    alpha = _alpha_grid()
    analytic = _analytic(alpha, s=s, t=t, b2=b2, d_eff=d)
    tail_bound = np.concatenate(
        ([float(_analytic(np.array([1.0]), s=s, t=t, b2=b2, d_eff=d)[0])], analytic[:-1] / alpha[:-1])
    )
    top = float(analytic[-1] / alpha[-1])
    central = b2 / (2 * var)
    if cap > _MAX_SHIFT or float(np.max(tail_bound)) <= central * (1 + _KLS_TIGHT):
        # Large shifts (large σ) or shares so wide that KLS is already tight: analytic only.
        return float(max(float(np.max(tail_bound)), top))
    depth = _depth_needed(alpha, analytic, sigma=sigma, t=t, cap=cap, b2=b2)
    window = _window(s, t, depth)
    pmf = _SumPmf(_Share(s, depth + math.log(t) + 2 * _MARGIN), t, window)
    g = _exact_g(pmf, alpha, cap)
    exact = _vector_max(g, b1=b1, b2=b2, d=d)
    rdp = np.minimum(exact, analytic)
    return float(max(_sup_over_orders(alpha, rdp, tail_bound), top))


def _depth_needed(
    alpha: FloatArray, analytic: FloatArray, *, sigma: float, t: int, cap: int, b2: int
) -> float:
    """How deep the pmf must be resolved (a cost knob only: every depth gives a sound bound).

    The exact divergences are needed up to the order where the analytic bounds come within 1% of
    the Gaussian value at the sum's real variance; at order α a Gaussian-like sum's tilted mass
    sits near ``-(α-1)·cap``, where ``log p ≈ -((α-1)·cap)²/(2V)``.
    """
    var = ddg_sum_variance(sigma_total=sigma, survivors_t=t)
    close = np.nonzero(analytic / alpha <= 1.01 * b2 / (2 * var))[0]
    need = float(alpha[close[0]]) if close.size else _ALPHA_TOP
    return min(_DEPTH, max(600.0, 1.3 * (need * cap) ** 2 / (2 * var) + 200.0))


def _window(s: float, t: int, depth: float = _DEPTH) -> int:
    """Half-width so that the deficit of truncating the sum is below ``exp(-depth - 2·MARGIN)``."""
    share = _Share(s, depth + math.log(t) + 2 * _MARGIN)
    mu = np.geomspace(1e-4, 60.0 / max(s, 1e-3), 400)
    log_m = t * share.log_mgf(mu)
    target = -depth - 2 * _MARGIN - math.log(4 * t)
    lo, hi = 1, _MAX_WINDOW
    if float(np.min(log_m - mu * hi)) > target:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if float(np.min(log_m - mu * mid)) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def ddg_sum_variance(*, sigma_total: float, survivors_t: int) -> float:
    """Exact variance of the sum of ``t`` shares ``N_Z(0, σ²/t)``: ``t·Var(N_Z(0, σ²/t))``.

    Well below ``σ²`` when ``σ²/t`` is small (``Var N_Z(0, s²) ≈ 2e^{-1/(2s²)}`` for small ``s``);
    equal to it within 1e-12 relative once ``s >= 1``.
    """
    if not math.isfinite(sigma_total) or sigma_total <= 0 or survivors_t < 1:
        raise DpParameterError("sigma_total must be positive and survivors_t at least 1")
    s = sigma_total / math.sqrt(survivors_t)
    if s > 40:
        # Poisson summation: the relative gap to s² is below 4π²s²·exp(-2π²s²)·... < 1e-300.
        return float(sigma_total**2)
    share = _Share(s, 60.0)
    return float(survivors_t * np.sum(np.exp(share.logp) * share.y**2))


def ddg_sigma(
    *,
    rho: float,
    survivors_t: int,
    l1: float,
    l2: float,
    dim: int,
    linf: float | None = None,
    rel_tol: float = 1e-4,
) -> float:
    """Least ``sigma_total`` (to ``rel_tol``) with ``ddg_rho(...) <= rho``; the returned σ meets it.

    Cached: keys are the integer caps of the sensitivities and ``rho`` rounded DOWN to 12
    significant digits (a smaller ρ only asks for more noise).
    """
    linf = l1 if linf is None else linf
    if not math.isfinite(rho) or rho <= 0:
        raise DpParameterError("rho must be a positive finite number")
    _check(1.0, survivors_t, l1=l1, l2=l2, linf=linf, dim=dim)
    cap, b1, b2 = _shift_cap(l1, l2, linf)
    if cap == 0:
        raise DpParameterError("a zero sensitivity needs no noise; refuse rather than guess")
    exponent = math.floor(math.log10(rho)) - 11
    rho_key = math.floor(rho / 10.0**exponent) * 10.0**exponent
    rho_key = min(rho_key, rho)
    # One calibration at a time in a process: threads that ask for the same σ at once (the nodes
    # of one process, or a coordinator's planners) wait for the first and read its cache instead
    # of each repeating the convolutions. 250 harness nodes at t = 1,000 did that under one GIL
    # and none answered advertise_keys in ten minutes.
    with _SIGMA_LOCK:
        return _sigma(rho_key, survivors_t, cap=cap, b1=b1, b2=b2, d=min(dim, b1, b2), rel_tol=rel_tol)


_SIGMA_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _sigma(rho: float, t: int, *, cap: int, b1: int, b2: int, d: int, rel_tol: float) -> float:
    def cost(sigma: float) -> float:
        return _rho(sigma, t, cap=cap, b1=b1, b2=b2, d=d)

    # First guess: the σ whose sum has the central Gaussian's variance b2/(2ρ) (cheap, exact).
    target_var = b2 / (2 * rho)
    lo, hi = 1e-3, math.sqrt(target_var) * 4 + 1
    while hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ddg_sum_variance(sigma_total=mid, survivors_t=t) < target_var else (lo, mid)
    hi *= 1.01

    # Bracket the root. ρ goes nearly as σ^-2, so an excess of e = log(ρ(σ)/ρ) is undone by a step
    # of about e/2 in log σ; a step 20% longer lands just past the root (and at least 0.1%).
    def excess(sigma: float) -> float:
        return math.log(cost(sigma) / rho)

    f_hi = excess(hi)
    lo = hi
    while f_hi > 0:
        lo, hi = hi, hi * math.exp(min(max(0.6 * f_hi, 1e-3), 0.5))
        if hi > 1e30:
            raise DpParameterError("no finite noise meets this rho")
        f_hi = excess(hi)
    if lo == hi:  # the first guess already meets ρ: step down until one does not
        f_lo = f_hi
        while f_lo <= 0:
            hi, lo = lo, lo * math.exp(max(min(0.6 * f_lo, -1e-3), -0.5))
            if lo < 1e-6:
                return hi
            f_lo = excess(lo)
    return _narrow(excess, lo, hi, rel_tol)


def _narrow(excess: Callable[[float], float], lo: float, hi: float, rel_tol: float) -> float:
    """The ``hi`` of a bracket ``excess(lo) > 0 >= excess(hi)`` narrowed to ``rel_tol``.

    Each probe is one pmf (about 0.6 CPU s at t = 300, 1.6 s at t = 900). The root is estimated in ``log σ``
    by the secant through the two probes nearest to it (close to the root the curve is nearly
    straight), and each probe is aimed a quarter of the tolerance past the estimate, on the side of
    the bracket's end that did not move last: once the estimate is good, two probes close the
    bracket. Two probes in a row that move one end without halving the bracket are followed by a
    bisection, so a bent curve cannot stall it. Only the sign of ``excess`` decides which end
    moves: the σ returned is one whose cost was computed and meets ``ρ``.
    """
    seen = [(math.log(lo), excess(lo)), (math.log(hi), excess(hi))]
    tol = -math.log1p(-rel_tol)  # hi - lo <= rel_tol·hi, in log σ
    last, stalled = -1, 0  # the end the last probe moved (+1 hi, -1 lo); probes that barely did
    while (width := math.log(hi / lo)) > tol:
        x_lo, x_hi = math.log(lo), math.log(hi)
        if stalled >= 2:
            x, stalled = (x_lo + x_hi) / 2, 0
        else:
            x = _root_estimate(seen) + (tol / 4 if last < 0 else -tol / 4)
            x = min(max(x, x_lo + tol / 8), x_hi - tol / 8)
        sigma = math.exp(x)
        if not lo < sigma < hi:
            break  # the bracket is as narrow as floats allow
        f = excess(sigma)
        seen.append((x, f))
        side = 1 if f <= 0 else -1
        if side > 0:
            hi = sigma
        else:
            lo = sigma
        stalled = stalled + 1 if side == last and math.log(hi / lo) > width / 2 else 0
        last = side
    return hi


def _root_estimate(points: list[tuple[float, float]]) -> float:
    """Where ``f`` is 0, by the secant through the two (x, f(x)) points nearest to it."""
    (x0, f0), (x1, f1) = sorted(points, key=lambda p: abs(p[1]))[:2]
    return x0 if f0 == f1 else x0 - f0 * (x1 - x0) / (f1 - f0)
