"""BG/NBD and Gamma-Gamma per-customer maths: special functions, log-likelihoods against finite
differences and the paper's known value, and the CDNOW calibration conventions of the summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _clv_helpers import cdnow, day

from tessera.core.analyses import clv_math as cm
from tessera.core.analyses.clv_summary import day_number, summarise
from tessera.core.errors import InvalidRequest

RNG_X = np.array([0.0, 1, 2, 3, 7, 15, 40])


def _bg_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.choice(RNG_X, 60)
    big_t = rng.uniform(20, 40, 60)
    t_x = np.where(x > 0, rng.uniform(0, 1, 60) * big_t, 0.0)
    return x, t_x, big_t


def test_special_functions_match_scipy() -> None:
    special = pytest.importorskip("scipy.special")
    z = np.array([1e-6, 0.01, 0.243, 1.0, 2.5, 7.9, 9.99, 10.0, 55.5, 1e4])
    assert np.allclose(cm.gammaln(z), special.gammaln(z), rtol=1e-13, atol=1e-13)
    assert np.allclose(cm.digamma(z), special.digamma(z), rtol=1e-13, atol=1e-13)
    assert np.allclose(cm.trigamma(z), special.polygamma(1, z), rtol=1e-12)


@pytest.mark.parametrize("model", ["bgnbd", "gg"])
def test_gradient_and_hessian_match_finite_differences(model: str) -> None:
    x, t_x, big_t = _bg_data()
    m = np.random.default_rng(2).gamma(3.0, 10.0, x.size)
    if model == "bgnbd":
        theta = np.log([0.3, 5.0, 0.8, 2.5])

        def terms(t: np.ndarray, order: int) -> tuple:  # type: ignore[type-arg]
            return cm.bgnbd_terms(t, x, t_x, big_t, order=order)
    else:
        keep = x > 0
        theta = np.log([5.0, 3.5, 15.0])

        def terms(t: np.ndarray, order: int) -> tuple:  # type: ignore[type-arg]
            return cm.gg_terms(t, x[keep], m[keep], order=order)

    _, grad, hess = terms(theta, 2)
    eps = 1e-6
    for k in range(theta.size):
        e = np.zeros(theta.size)
        e[k] = eps
        fd_grad = (terms(theta + e, 0)[0] - terms(theta - e, 0)[0]) / (2 * eps)
        fd_hess = (terms(theta + e, 1)[1] - terms(theta - e, 1)[1]) / (2 * eps)
        assert np.allclose(grad[:, k], fd_grad, rtol=1e-6, atol=1e-6)
        assert np.allclose(hess[:, :, k], fd_hess, rtol=1e-6, atol=1e-6)
    assert np.allclose(hess, np.swapaxes(hess, 1, 2))


def test_bgnbd_log_likelihood_of_a_one_customer_case_by_hand() -> None:
    r, alpha, a, b = 0.5, 4.0, 0.8, 2.0
    x, t_x, big_t = 2.0, 10.0, 30.0
    a1 = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
    a2 = math.lgamma(a + b) + math.lgamma(b + x) - math.lgamma(b) - math.lgamma(a + b + x)
    a3 = (alpha + big_t) ** -(r + x)
    a4 = a / (b + x - 1) * (alpha + t_x) ** -(r + x)
    ll, _, _ = cm.bgnbd_terms(
        np.log([r, alpha, a, b]), np.array([x]), np.array([t_x]), np.array([big_t]), order=0
    )
    assert ll[0] == pytest.approx(a1 + a2 + math.log(a3 + a4), rel=1e-12)


def test_pack_keeps_the_frobenius_norm_and_unpacks() -> None:
    h = np.random.default_rng(3).normal(size=(4, 4))
    h = h + h.T
    packed = cm.pack(h[None])[0]
    assert np.linalg.norm(packed) == pytest.approx(np.linalg.norm(h))
    assert np.allclose(cm.unpack(packed, 4), h)


def test_summaries_follow_the_paper_conventions() -> None:
    d = day
    rows = [
        (5, d("2020-01-01") + 0.1, 10.0),  # first purchase
        (5, d("2020-01-01") + 0.9, 5.0),  # same day: one purchase, not a repeat
        (5, d("2020-01-15") + 0.5, 20.0),  # repeat 1
        (5, d("2020-01-15") + 0.6, 4.0),  # same day as repeat 1: amounts added (24)
        (5, d("2020-01-29") + 0.2, float("nan")),  # repeat 2, amount missing: left out of the mean
        (5, d("2020-03-01") + 0.5, 7.0),  # holdout
        (6, d("2020-02-10"), 3.0),  # one purchase only
        (7, d("2020-02-20"), 9.0),  # first purchase after the calibration end: not in the cohort
        (-1, d("2020-01-02"), 1.0),  # no customer
        (8, float("nan"), 1.0),  # no time
    ]
    ids, times, amounts = (np.array(c) for c in zip(*rows, strict=True))
    s = summarise(
        ids.astype(np.int64),
        times,
        amounts,
        calibration_end=int(d("2020-02-15")),
        holdout_end=int(d("2020-03-31")),
    )
    assert s.customer.tolist() == [5, 6]
    assert s.x.tolist() == [2.0, 0.0]
    assert s.t_x.tolist() == [4.0, 0.0]  # 28 days
    assert s.big_t[0] == pytest.approx(45 / 7) and s.big_t[1] == pytest.approx(5 / 7)
    assert s.mean_spend[0] == 24.0 and np.isnan(s.mean_spend[1])
    assert s.holdout.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("text", ["1997-9-30", "30/09/1997", "", "1997-02-30"])
def test_dates_must_be_iso(text: str) -> None:
    with pytest.raises(InvalidRequest, match="YYYY-MM-DD"):
        day_number(text, "calibration_end")


def test_cdnow_sample_reproduces_the_paper_summaries_and_log_likelihood() -> None:
    data = cdnow("CDNOW_sample.txt")
    s = summarise(
        data["customer"], data["time"], data["amount"], calibration_end=day_number("1997-09-30", "c")
    )
    assert s.size == 2357 and s.x.sum() == 2457  # the paper's calibration repeat purchases
    ll, _, _ = cm.bgnbd_terms(np.log([0.243, 4.414, 0.793, 2.426]), s.x, s.t_x, s.big_t, order=0)
    assert ll.sum() == pytest.approx(-9582.4, abs=0.05)  # FHL 2005, section 5
    assert int(((s.x > 0) & (s.mean_spend > 0)).sum()) == 946  # Fader & Hardie's Gamma-Gamma sample
