"""The per-customer maths of ``clv_fit``: BG/NBD and Gamma-Gamma log-likelihoods, their gradients
and Hessians in log-parameters, and the special functions they need (numpy only, vectorised).

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way", eq. 6): a customer with
``x`` repeat purchases, the last at ``t_x``, observed for ``T`` (same time unit) contributes

    ln L = lnΓ(r+x) - lnΓ(r) + r ln α + lnΓ(a+b) + lnΓ(b+x) - lnΓ(b) - lnΓ(a+b+x)
           + ln[ (α+T)^-(r+x) + 1{x>0} · a/(b+x-1) · (α+t_x)^-(r+x) ]

Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves", appendix; and
Fader & Hardie 2013, "The Gamma-Gamma model of monetary value"): a customer with ``x >= 1``
repeat purchases of mean value ``m`` contributes

    ln L = lnΓ(px+q) - lnΓ(px) - lnΓ(q) + q ln γ + (px-1) ln m + px ln x - (px+q) ln(γ + m x)

Both are fitted in ``θ = ln(parameters)`` so every parameter stays positive; gradients and
Hessians here are with respect to ``θ``. The last term of BG/NBD is a log-sum-exp of two
exponents ``u`` and ``v``; its Hessian is ``w_u H_u + w_v H_v + w_u w_v (∇u-∇v)(∇u-∇v)ᵀ``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BGNBD_PARAMS = ("r", "alpha", "a", "b")
GG_PARAMS = ("p", "q", "gamma")
# Packed upper triangle (row-major) of a symmetric k×k matrix: the Hessian part of a vector.
_SHIFT = 10.0  # recurrences move arguments to >= 10, where the asymptotic series are exact to 1e-16


def triu_pairs(k: int) -> tuple[tuple[int, int], ...]:
    return tuple((i, j) for i in range(k) for j in range(i, k))


def pack(h: FloatArray) -> FloatArray:
    """``(n, k, k)`` symmetric -> ``(n, k(k+1)/2)`` upper triangle, off-diagonals times √2.

    The √2 makes the packed vector's L2 norm equal the Frobenius norm of the matrix, so clipping
    the packed vector in L2 clips the matrix in Frobenius norm.
    """
    k = h.shape[-1]
    cols = [h[..., i, j] * (1.0 if i == j else math.sqrt(2.0)) for i, j in triu_pairs(k)]
    return np.stack(cols, axis=-1)


def unpack(packed: FloatArray, k: int) -> FloatArray:
    """Inverse of ``pack`` for one matrix."""
    h = np.zeros((k, k))
    for value, (i, j) in zip(packed, triu_pairs(k), strict=True):
        h[i, j] = h[j, i] = value if i == j else value / math.sqrt(2.0)
    return h


# --- special functions (x > 0) ----------------------------------------------------------------


def _shifted(x: FloatArray, term: str) -> tuple[FloatArray, FloatArray]:
    """``y = x + n >= _SHIFT`` and the recurrence's correction for lnΓ, ψ or ψ'."""
    y = np.array(x, dtype=np.float64, copy=True)
    acc = np.zeros_like(y)
    for _ in range(int(_SHIFT)):
        low = y < _SHIFT
        if not low.any():
            break
        yl = y[low]
        acc[low] += np.log(yl) if term == "lgamma" else 1.0 / yl if term == "digamma" else 1.0 / yl**2
        y[low] = yl + 1.0
    return y, acc


def gammaln(x: npt.ArrayLike) -> FloatArray:
    """``ln Γ(x)`` for ``x > 0`` (Stirling's series after the recurrence; ~1e-15 relative)."""
    y, acc = _shifted(np.asarray(x, dtype=np.float64), "lgamma")
    z = 1.0 / (y * y)
    series = (1 / 12 + z * (-1 / 360 + z * (1 / 1260 + z * (-1 / 1680 + z * (1 / 1188))))) / y
    out: FloatArray = (y - 0.5) * np.log(y) - y + 0.5 * math.log(2 * math.pi) + series - acc
    return out


def digamma(x: npt.ArrayLike) -> FloatArray:
    """``ψ(x) = d lnΓ(x)/dx`` for ``x > 0``."""
    y, acc = _shifted(np.asarray(x, dtype=np.float64), "digamma")
    z = 1.0 / (y * y)
    series = z * (1 / 12 - z * (1 / 120 - z * (1 / 252 - z * (1 / 240 - z * (1 / 132)))))
    out: FloatArray = np.log(y) - 0.5 / y - series - acc
    return out


def trigamma(x: npt.ArrayLike) -> FloatArray:
    """``ψ'(x)`` for ``x > 0``."""
    y, acc = _shifted(np.asarray(x, dtype=np.float64), "trigamma")
    z = 1.0 / (y * y)
    series = (1 + z * (1 / 6 - z * (1 / 30 - z * (1 / 42 - z * (1 / 30 - z * (5 / 66)))))) / y
    out: FloatArray = series + 0.5 * z + acc
    return out


# --- BG/NBD --------------------------------------------------------------------------------------


def bgnbd_terms(
    theta: npt.ArrayLike, x: FloatArray, t_x: FloatArray, big_t: FloatArray, *, order: int = 2
) -> tuple[FloatArray, FloatArray | None, FloatArray | None]:
    """Per customer: ``ln L`` ``(n,)``, gradient ``(n, 4)`` and Hessian ``(n, 4, 4)`` in ``θ``.

    ``order`` 0 computes the log-likelihood only, 1 adds the gradient, 2 the Hessian too.
    """
    r, alpha, a, b = np.exp(np.asarray(theta, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    rep = x > 0
    xm1 = np.where(rep, x - 1.0, 0.0)
    lat, lax = np.log(alpha + big_t), np.log(alpha + t_x)
    u = -(r + x) * lat
    v = np.where(rep, math.log(a) - np.log(b + xm1) - (r + x) * lax, -np.inf)
    top = np.maximum(u, v)
    lse = top + np.log(np.exp(u - top) + np.exp(v - top))
    ll = (
        gammaln(r + x)
        - math.lgamma(r)
        + r * math.log(alpha)
        + math.lgamma(a + b)
        + gammaln(b + x)
        - math.lgamma(b)
        - gammaln(a + b + x)
        + lse
    )
    if order == 0:
        return ll, None, None
    wv = np.exp(v - lse)
    wu = 1.0 - wv
    du = np.zeros((n, 4))
    du[:, 0] = -r * lat
    du[:, 1] = -(r + x) * alpha / (alpha + big_t)
    dv = np.zeros((n, 4))
    dv[:, 0] = -r * lax
    dv[:, 1] = -(r + x) * alpha / (alpha + t_x)
    dv[:, 2] = 1.0
    dv[:, 3] = -b / (b + xm1)
    dv[~rep] = 0.0
    psi_rx, psi_bx, psi_abx = digamma(r + x), digamma(b + x), digamma(a + b + x)
    psi_r, psi_ab, psi_b = (float(digamma(np.array([z]))[0]) for z in (r, a + b, b))
    g = wu[:, None] * du + wv[:, None] * dv
    g[:, 0] += r * (psi_rx - psi_r + math.log(alpha))
    g[:, 1] += r
    g[:, 2] += a * (psi_ab - psi_abx)
    g[:, 3] += b * (psi_ab + psi_bx - psi_b - psi_abx)
    if order == 1:
        return ll, g, None
    hu = np.zeros((n, 4, 4))
    hu[:, 0, 0] = -r * lat
    hu[:, 0, 1] = hu[:, 1, 0] = -r * alpha / (alpha + big_t)
    hu[:, 1, 1] = -(r + x) * alpha * big_t / (alpha + big_t) ** 2
    hv = np.zeros((n, 4, 4))
    hv[:, 0, 0] = -r * lax
    hv[:, 0, 1] = hv[:, 1, 0] = -r * alpha / (alpha + t_x)
    hv[:, 1, 1] = -(r + x) * alpha * t_x / (alpha + t_x) ** 2
    hv[:, 3, 3] = -b * xm1 / (b + xm1) ** 2
    hv[~rep] = 0.0
    d = du - dv
    h = (
        wu[:, None, None] * hu
        + wv[:, None, None] * hv
        + (wu * wv)[:, None, None] * d[:, :, None] * d[:, None, :]
    )
    tg_rx, tg_bx, tg_abx = trigamma(r + x), trigamma(b + x), trigamma(a + b + x)
    tg_r, tg_ab, tg_b = (float(trigamma(np.array([z]))[0]) for z in (r, a + b, b))
    h[:, 0, 0] += r * (psi_rx - psi_r + math.log(alpha)) + r * r * (tg_rx - tg_r)
    h[:, 0, 1] += r
    h[:, 1, 0] += r
    h[:, 2, 2] += a * (psi_ab - psi_abx) + a * a * (tg_ab - tg_abx)
    h[:, 2, 3] += a * b * (tg_ab - tg_abx)
    h[:, 3, 2] += a * b * (tg_ab - tg_abx)
    h[:, 3, 3] += b * (psi_ab + psi_bx - psi_b - psi_abx) + b * b * (tg_ab + tg_bx - tg_b - tg_abx)
    return ll, g, h


# --- Gamma-Gamma ---------------------------------------------------------------------------------


def gg_terms(
    theta: npt.ArrayLike, x: FloatArray, m: FloatArray, *, order: int = 2
) -> tuple[FloatArray, FloatArray | None, FloatArray | None]:
    """Per repeat customer (``x >= 1``, mean repeat spend ``m > 0``): ``ln L``, gradient, Hessian."""
    p, q, gamma = np.exp(np.asarray(theta, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    n = x.size
    px = p * x
    mx = m * x
    lgm = np.log(gamma + mx)
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - math.lgamma(q)
        + q * math.log(gamma)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * lgm
    )
    if order == 0:
        return ll, None, None
    psi_pxq, psi_px = digamma(px + q), digamma(px)
    psi_q = float(digamma(np.array([q]))[0])
    share = gamma / (gamma + mx)  # γ/(γ + m x)
    g = np.zeros((n, 3))
    g[:, 0] = px * (psi_pxq - psi_px + np.log(mx) - lgm)
    g[:, 1] = q * (psi_pxq - psi_q + math.log(gamma) - lgm)
    g[:, 2] = q - (px + q) * share
    if order == 1:
        return ll, g, None
    tg_pxq, tg_px = trigamma(px + q), trigamma(px)
    tg_q = float(trigamma(np.array([q]))[0])
    h = np.zeros((n, 3, 3))
    h[:, 0, 0] = g[:, 0] + px * px * (tg_pxq - tg_px)
    h[:, 0, 1] = h[:, 1, 0] = px * q * tg_pxq
    h[:, 0, 2] = h[:, 2, 0] = -px * share
    h[:, 1, 1] = g[:, 1] + q * q * (tg_pxq - tg_q)
    h[:, 1, 2] = h[:, 2, 1] = q * (1.0 - share)
    h[:, 2, 2] = -(px + q) * share * (1.0 - share)
    return ll, g, h
