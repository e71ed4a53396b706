"""What a node predicts for each of its customers from a released ``clv_fit`` model (pure numpy).

Nothing here leaves the node: these are functions of the PUBLIC model parameters and one
customer's own summary ``(x, t_x, T, mean_spend)`` (``clv_summary``); time is in weeks.

* ``p_alive``: P(still active at T | history) (Fader, Hardie & Lee 2005, eq. 13 of the note
  "Computing P(alive) using the BG/NBD model");
* ``expected_purchases``: E[purchases in (T, T+t] | history] (FHL 2005, eq. 10);
* ``purchases_pmf``: P(k purchases in (T, T+t] | history), k = 0..k_max-1 and k_max or more.
  Given the history, the customer is dead with 1 - P(alive), and when alive its rate and dropout
  probability follow Gamma(r+x, α+T) and Beta(a, b+x) and its process restarts (memoryless), so
  the count is P(alive) times the BG/NBD pmf (FHL 2005, eq. 8) with those updated parameters;
* ``expected_spend``: E[value of a purchase | history] under Gamma-Gamma (Fader & Hardie 2013,
  eq. 5), the population mean ``pγ/(q-1)`` for customers without a repeat purchase (needs q > 1);
* ``clv``: discounted expected revenue over a horizon: Σ_k spend · (E[Y(k)] - E[Y(k-1)]) ·
  (1 + annual rate)^(-k/52.18), k = 1..horizon weeks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from tessera.core.analyses.clv_math import gammaln
from tessera.core.errors import InvalidRequest

FloatArray = npt.NDArray[np.float64]
WEEKS_PER_YEAR = 365.25 / 7.0
# The per-customer values `tessera node clv --store` writes as derived fields of `customers`.
DERIVED_FIELDS = ("expected_purchases", "p_alive", "expected_spend", "clv")
MAX_HORIZON_WEEKS = 520.0
_HYP_TERMS = 20_000


def check_bgnbd(params: Sequence[float]) -> tuple[float, float, float, float]:
    """``(r, α, a, b)``, each a positive finite number (``InvalidRequest`` otherwise)."""
    return _positive(params, ("r", "alpha", "a", "b"))  # type: ignore[return-value]


def check_gg(params: Sequence[float]) -> tuple[float, float, float]:
    """``(p, q, γ)``, positive and finite, with ``q > 1`` (else the mean spend is infinite)."""
    p, q, gamma = _positive(params, ("p", "q", "gamma"))
    if q <= 1:
        raise InvalidRequest("the Gamma-Gamma parameter q must be above 1 (the mean spend is infinite)")
    return p, q, gamma


def _positive(params: Sequence[float], names: tuple[str, ...]) -> tuple[float, ...]:
    values = tuple(params)
    if len(values) != len(names):
        raise InvalidRequest(f"the model needs {len(names)} parameters ({', '.join(names)})")
    for name, value in zip(names, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"model parameter {name!r} must be a number")
        if not math.isfinite(value) or not 1e-8 < value < 1e8:
            raise InvalidRequest(f"model parameter {name!r} must be a positive finite number (1e-8 to 1e8)")
    return tuple(float(v) for v in values)


def _horizon(t: float) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= MAX_HORIZON_WEEKS:
        raise InvalidRequest(f"the horizon must be between 0 and {MAX_HORIZON_WEEKS:g} weeks")
    return float(t)


def hyp2f1(a: FloatArray, b: FloatArray, c: FloatArray, z: FloatArray) -> FloatArray:
    """Gauss's ₂F₁(a, b; c; z) for ``0 <= z < 1`` by its power series (vectorised; a, b, c > 0).

    The terms fall like ``z^n`` times a power of ``n``; the series stops when every customer's
    next term is below 1e-15 of its sum. Horizons are capped (``MAX_HORIZON_WEEKS``) so that z
    stays away from 1 and a few thousand terms suffice.
    """
    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c, z)))
    term = np.ones(a.shape)
    total = np.ones(a.shape)
    for n in range(_HYP_TERMS):
        term = term * (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        total = total + term
        if np.all(np.abs(term) <= 1e-15 * np.abs(total)):
            return total
    raise InvalidRequest("the horizon is too long for these customers' ages (the series does not converge)")


def p_alive(params: Sequence[float], x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
    r, alpha, a, b = check_bgnbd(params)
    x = np.asarray(x, dtype=np.float64)
    rep = x > 0
    log_odds = np.where(
        rep,
        math.log(a)
        - np.log(b + np.maximum(x - 1, 0))
        + (r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x)),
        -np.inf,
    )
    out: FloatArray = 1.0 / (1.0 + np.exp(log_odds))
    return out


def _unconditional_mean(t: float, r: FloatArray, alpha: FloatArray, a: float, b: FloatArray) -> FloatArray:
    """E[X(t)] of a fresh BG/NBD customer (FHL 2005 eq. 9), vectorised over r, α, b."""
    if t == 0:
        return np.zeros(np.shape(r))
    if abs(a - 1.0) < 1e-6:
        a = 1.0 + math.copysign(1e-6, a - 1.0)  # a removable singularity of eq. 9 at a = 1
    z = t / (alpha + t)
    f = hyp2f1(r, b, a + b - 1.0, z)
    out: FloatArray = (a + b - 1.0) / (a - 1.0) * (1.0 - (alpha / (alpha + t)) ** r * f)
    return out


def expected_purchases(
    params: Sequence[float], t: float, x: FloatArray, t_x: FloatArray, big_t: FloatArray
) -> FloatArray:
    """E[purchases in (T, T+t] | x, t_x, T] (weeks), FHL 2005 eq. 10."""
    r, alpha, a, b = check_bgnbd(params)
    t = _horizon(t)
    x = np.asarray(x, dtype=np.float64)
    alive = p_alive(params, x, t_x, big_t)
    out: FloatArray = alive * _unconditional_mean(t, r + x, alpha + np.asarray(big_t), a, b + x)
    return out


def purchases_pmf(
    params: Sequence[float], t: float, x: FloatArray, t_x: FloatArray, big_t: FloatArray, *, k_max: int
) -> FloatArray:
    """``(n, k_max + 1)``: P(k purchases in (T, T+t] | history) for k < k_max, then P(>= k_max)."""
    r, alpha, a, b = check_bgnbd(params)
    t = _horizon(t)
    if isinstance(k_max, bool) or not isinstance(k_max, int) or not 1 <= k_max <= 1000:
        raise InvalidRequest("k_max must be an integer from 1 to 1000")
    x = np.asarray(x, dtype=np.float64)
    rr, aa, bb = r + x, alpha + np.asarray(big_t, dtype=np.float64), b + x
    alive = p_alive(params, x, t_x, big_t)
    # FHL 2005 eq. 8 with (r, α, a, b) -> (r+x, α+T, a, b+x), term by term in logs.
    log_p0 = np.log(aa / (aa + t)) if t > 0 else np.zeros_like(aa)
    log_z = np.log(t / (aa + t)) if t > 0 else np.full_like(aa, -np.inf)
    lbeta_ab = gammaln(a) + gammaln(bb) - gammaln(a + bb)
    pmf = np.zeros((x.size, k_max + 1))
    cum = np.zeros(x.size)  # Σ_{j<k} Γ(r+j)/(Γ(r) j!) z^j
    log_nb = rr * log_p0  # log of the NBD term Γ(r+k)/(Γ(r)k!) p0^r z^k at k = 0
    for k in range(k_max):
        lb1 = gammaln(a) + gammaln(bb + k) - gammaln(a + bb + k) - lbeta_ab
        first = np.exp(lb1 + log_nb)
        if k > 0:
            lb2 = gammaln(a + 1) + gammaln(bb + k - 1) - gammaln(a + bb + k) - lbeta_ab
            second = np.exp(lb2) * np.clip(1.0 - np.exp(rr * log_p0) * cum, 0.0, 1.0)
        else:
            second = np.zeros(x.size)
        pmf[:, k] = first + second
        cum = cum + np.exp(log_nb - rr * log_p0)
        with np.errstate(invalid="ignore"):
            step = np.where(np.isfinite(log_z), np.log(rr + k) - math.log(k + 1) + log_z, -np.inf)
        log_nb = log_nb + step
    pmf *= alive[:, None]
    pmf[:, 0] += 1.0 - alive
    pmf[:, k_max] = np.clip(1.0 - pmf[:, :k_max].sum(axis=1), 0.0, 1.0)
    return pmf


def expected_spend(params: Sequence[float], x: FloatArray, mean_spend: FloatArray) -> FloatArray:
    """E[value of one purchase | x repeat purchases of mean m] (Gamma-Gamma; no m: population mean)."""
    p, q, gamma = check_gg(params)
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(mean_spend, dtype=np.float64)
    usable = (x > 0) & np.isfinite(m) & (m > 0)
    xs = np.where(usable, x, 0.0)
    ms = np.where(usable, m, 0.0)
    out: FloatArray = p * (gamma + ms * xs) / (p * xs + q - 1.0)
    return out


def clv(
    bgnbd: Sequence[float],
    gg: Sequence[float],
    *,
    horizon_weeks: float,
    annual_discount_rate: float,
    x: FloatArray,
    t_x: FloatArray,
    big_t: FloatArray,
    mean_spend: FloatArray,
) -> FloatArray:
    """Discounted expected revenue over ``horizon_weeks`` (whole weeks), spend per purchase times
    the expected purchases of each week, discounted at ``(1 + rate)^(-week/52.18)``."""
    rate = annual_discount_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 10:
        raise InvalidRequest("the annual discount rate must be between 0 and 10 (0.1 is 10%)")
    weeks = int(_horizon(horizon_weeks))
    spend = expected_spend(gg, x, mean_spend)
    total = np.zeros(np.shape(x))
    before = np.zeros(np.shape(x))
    for week in range(1, weeks + 1):
        now = expected_purchases(bgnbd, float(week), x, t_x, big_t)
        total += (now - before) / (1.0 + rate) ** (week / WEEKS_PER_YEAR)
        before = now
    out: FloatArray = spend * total
    return out


def model_from_result(doc: object) -> tuple[tuple[float, float, float, float], tuple[float, float, float]]:
    """``(BG/NBD (r, α, a, b), Gamma-Gamma (p, q, γ))`` from a released ``clv_fit`` result.

    Takes the ``result`` object of a job, or the whole document ``tessera job result --json``
    prints (which holds it under ``result``). Refuses anything else, and absurd parameters.
    """
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        doc = doc["result"]
    if not isinstance(doc, dict) or doc.get("analysis") != "clv_fit":
        raise InvalidRequest("the model file must hold the result of a clv_fit job")
    if doc.get("time_unit") != "week":
        raise InvalidRequest("the model's time unit must be weeks")

    def read(section: str, names: tuple[str, ...]) -> list[float]:
        block = doc.get(section)
        if not isinstance(block, dict):
            raise InvalidRequest(f"the model has no {section!r} parameters")
        out = []
        for name in names:
            entry = block.get(name)
            value = entry.get("value") if isinstance(entry, dict) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequest(f"the model's {section} parameter {name!r} is missing")
            out.append(float(value))
        return out

    return check_bgnbd(read("bgnbd", ("r", "alpha", "a", "b"))), check_gg(
        read("gamma_gamma", ("p", "q", "gamma"))
    )
