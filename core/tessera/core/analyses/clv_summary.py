"""A node's purchase rows made per-customer CLV summaries (pure numpy, no I/O).

The conventions are those of Fader, Hardie & Lee (2005) on CDNOW: purchases on the same day are
ONE purchase (their amounts added); a customer's first purchase day starts its clock; in the
calibration period (every day up to and including ``calibration_end``) ``x`` counts the repeat
purchase days, ``t_x`` is the time from the first to the last purchase day and ``T`` from the
first purchase day to ``calibration_end``, both in weeks (days / 7). Only customers whose first
purchase falls in the calibration period are in the cohort. ``mean_spend`` is the mean amount of
the repeat purchase days (the first purchase excluded, as in the Gamma-Gamma papers; days whose
amounts are all missing are left out of the mean); ``holdout`` counts the purchase days in
``(calibration_end, holdout_end]``.

Days are whole days since 1970-01-01 (``floor`` of the vault's fractional days), so a purchase at
any time of the calibration end's day is in the calibration period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import numpy.typing as npt

from tessera.core.errors import InvalidRequest

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
DAYS_PER_WEEK = 7.0
_EPOCH = date(1970, 1, 1)


def day_number(text: str, name: str) -> int:
    """An ISO date ``YYYY-MM-DD`` as whole days since 1970-01-01 (``InvalidRequest`` if not one)."""
    if not isinstance(text, str):
        raise InvalidRequest(f"parameter {name!r} must be a date written YYYY-MM-DD")
    try:
        when = date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"parameter {name!r} must be a date written YYYY-MM-DD") from None
    if len(text) != 10:
        raise InvalidRequest(f"parameter {name!r} must be a date written YYYY-MM-DD")
    return (when - _EPOCH).days


@dataclass(frozen=True, slots=True)
class Summary:
    """One entry per cohort customer, in ascending customer id."""

    customer: IntArray
    x: FloatArray  # repeat purchase days in the calibration period
    t_x: FloatArray  # weeks from the first to the last calibration purchase day
    big_t: FloatArray  # weeks from the first purchase day to the calibration end
    mean_spend: FloatArray  # mean amount of the repeat purchase days (NaN without one)
    holdout: FloatArray  # purchase days after the calibration end, up to the holdout end

    @property
    def size(self) -> int:
        return int(self.customer.size)


def summarise(
    customer: npt.ArrayLike,
    time_days: npt.ArrayLike,
    amount: npt.ArrayLike | None,
    *,
    calibration_end: int,
    holdout_end: int | None = None,
) -> Summary:
    """Per-customer ``(x, t_x, T, mean_spend, holdout)`` from purchase rows (see the module doc).

    Rows without a customer (negative id) or without a finite time are left out; so are rows
    after ``holdout_end`` (or after ``calibration_end`` without one).
    """
    ids = np.asarray(customer)
    if ids.dtype.kind not in "iu":
        raise InvalidRequest("the customer key must come as one integer id per row")
    ids = ids.astype(np.int64)
    days_f = np.asarray(time_days, dtype=np.float64)
    money = np.full(ids.shape, np.nan) if amount is None else np.asarray(amount, dtype=np.float64)
    if not ids.shape == days_f.shape == money.shape or ids.ndim != 1:
        raise InvalidRequest("every field must hold one entry per row")
    last_day = calibration_end if holdout_end is None else holdout_end
    if last_day < calibration_end:
        raise InvalidRequest("the holdout period must end after the calibration period")
    keep = (ids >= 0) & np.isfinite(days_f)
    keep[keep] = days_f[keep] < last_day + 1
    ids, day, money = ids[keep], np.floor(days_f[keep]).astype(np.int64), money[keep]
    order = np.lexsort((day, ids))
    ids, day, money = ids[order], day[order], money[order]
    # One purchase per (customer, day): amounts added over the day's rows with a finite amount.
    new = np.ones(ids.size, dtype=bool)
    new[1:] = (ids[1:] != ids[:-1]) | (day[1:] != day[:-1])
    slot = np.cumsum(new) - 1
    finite = np.isfinite(money)
    d_amount = np.bincount(slot, weights=np.where(finite, money, 0.0), minlength=int(new.sum()))
    d_known = np.bincount(slot, weights=finite.astype(np.float64), minlength=int(new.sum())) > 0
    d_id, d_day = ids[new], day[new]
    # Per customer: first day, calibration days, last calibration day, holdout days.
    c_start = np.flatnonzero(np.r_[True, d_id[1:] != d_id[:-1]]) if d_id.size else np.zeros(0, np.int64)
    cust = d_id[c_start]
    first = d_day[c_start]
    in_cal = d_day <= calibration_end
    owner = np.repeat(np.arange(cust.size), np.diff(np.r_[c_start, d_id.size]))
    cal_days = np.bincount(owner, weights=in_cal, minlength=cust.size)
    last_cal = np.full(cust.size, np.iinfo(np.int64).min)
    np.maximum.at(last_cal, owner[in_cal], d_day[in_cal])
    repeat = in_cal & (d_day > first[owner]) & d_known
    spend_sum = np.bincount(owner, weights=np.where(repeat, d_amount, 0.0), minlength=cust.size)
    spend_n = np.bincount(owner, weights=repeat, minlength=cust.size)
    hold = np.bincount(owner, weights=~in_cal, minlength=cust.size)
    cohort = first <= calibration_end
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_spend = np.where(spend_n > 0, spend_sum / np.maximum(spend_n, 1), np.nan)
    return Summary(
        customer=cust[cohort],
        x=(cal_days - 1)[cohort].astype(np.float64),
        t_x=((last_cal - first) / DAYS_PER_WEEK)[cohort].astype(np.float64),
        big_t=((calibration_end - first) / DAYS_PER_WEEK)[cohort].astype(np.float64),
        mean_spend=mean_spend[cohort],
        holdout=hold[cohort].astype(np.float64),
    )
