"""Local predictions from a released model: against the paper's formulas computed independently
(scipy), against each other (pmf vs expectation), node by node vs centrally, and refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _clv_helpers import simulate, split

from tessera.core.analyses import clv_predict as cp
from tessera.core.analyses.clv_summary import summarise
from tessera.core.errors import InvalidRequest

BG = (0.243, 4.414, 0.793, 2.426)
GG = (6.25, 3.74, 15.44)
X = np.array([0.0, 1, 2, 5, 10, 29])
TX = np.array([0.0, 5, 20, 30, 35, 38])
T = np.array([38.0, 38, 39, 32, 36, 38])
M = np.array([np.nan, 20.0, 30, 40, 50, 60])


def _paper_expected(t: float) -> np.ndarray:
    """FHL 2005 eq. 10 written out with scipy's hyp2f1 (an independent implementation)."""
    special = pytest.importorskip("scipy.special")
    r, alpha, a, b = BG
    f = special.hyp2f1(r + X, b + X, a + b + X - 1, t / (alpha + T + t))
    num = (a + b + X - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + X) * f)
    den = 1 + (X > 0) * a / (b + np.maximum(X, 1) - 1) * ((alpha + T) / (alpha + TX)) ** (r + X)
    out: np.ndarray = num / den
    return out


def test_expected_purchases_and_p_alive_match_the_paper_formulas() -> None:
    assert np.allclose(cp.expected_purchases(BG, 39.0, X, TX, T), _paper_expected(39.0), rtol=1e-9)
    r, alpha, a, b = BG
    odds = (X > 0) * a / (b + np.maximum(X, 1) - 1) * ((alpha + T) / (alpha + TX)) ** (r + X)
    assert np.allclose(cp.p_alive(BG, X, TX, T), 1 / (1 + odds))
    assert cp.p_alive(BG, X, TX, T)[0] == 1.0  # no repeat purchase: alive for sure under BG/NBD


def test_the_conditional_pmf_sums_to_one_and_its_mean_is_the_expectation() -> None:
    pmf = cp.purchases_pmf(BG, 39.0, X, TX, T, k_max=400)
    assert np.allclose(pmf.sum(axis=1), 1.0)
    assert np.all(pmf >= 0) and np.all(pmf[:, -1] < 1e-9)
    mean = (pmf[:, :-1] * np.arange(400)).sum(axis=1)
    assert np.allclose(mean, cp.expected_purchases(BG, 39.0, X, TX, T), rtol=1e-8)
    short = cp.purchases_pmf(BG, 39.0, X, TX, T, k_max=3)
    assert np.allclose(short[:, :3], pmf[:, :3]) and np.allclose(short[:, 3], pmf[:, 3:].sum(axis=1))


def test_spend_is_the_credibility_weighted_mean_and_clv_adds_discounted_weeks() -> None:
    p, q, gamma = GG
    spend = cp.expected_spend(GG, X, M)
    population = p * gamma / (q - 1)
    assert spend[0] == pytest.approx(population)
    weight = (q - 1) / (p * X[1:] + q - 1)
    assert np.allclose(spend[1:], weight * population + (1 - weight) * M[1:])
    flat = cp.clv(BG, GG, horizon_weeks=52, annual_discount_rate=0.0, x=X, t_x=TX, big_t=T, mean_spend=M)
    assert np.allclose(flat, spend * cp.expected_purchases(BG, 52.0, X, TX, T))
    discounted = cp.clv(
        BG, GG, horizon_weeks=52, annual_discount_rate=0.1, x=X, t_x=TX, big_t=T, mean_spend=M
    )
    assert np.all(discounted < flat) and np.all(discounted > flat / 1.1)


def test_predictions_at_each_node_equal_the_central_computation() -> None:
    data = simulate(np.random.default_rng(5), 600, bgnbd=(0.5, 6.0, 0.8, 2.5), gg=GG)
    cal = int(data["time"].min()) + 7 * 40

    def predict(d: dict[str, np.ndarray]) -> dict[int, tuple[float, float, float]]:
        s = summarise(d["customer"], d["time"], d["amount"], calibration_end=cal)
        e = cp.expected_purchases(BG, 26.0, s.x, s.t_x, s.big_t)
        v = cp.clv(
            BG,
            GG,
            horizon_weeks=26,
            annual_discount_rate=0.05,
            x=s.x,
            t_x=s.t_x,
            big_t=s.big_t,
            mean_spend=s.mean_spend,
        )
        pa = cp.p_alive(BG, s.x, s.t_x, s.big_t)
        return dict(
            zip(s.customer.tolist(), zip(e.tolist(), v.tolist(), pa.tolist(), strict=True), strict=True)
        )

    local: dict[int, tuple[float, float, float]] = {}
    for node in split(data, 3):
        local |= predict(node)
    central = predict(data)
    assert sorted(local) == sorted(central)
    assert np.allclose([local[k] for k in sorted(local)], [central[k] for k in sorted(central)], rtol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        (0.2, 4.0, 0.8),
        (-0.2, 4.0, 0.8, 2.0),
        (0.2, math.nan, 0.8, 2.0),
        (0.2, 4.0, 0.8, 1e12),
        (0.2, True, 0.8, 2.0),
    ],
)
def test_absurd_bgnbd_parameters_are_refused(bad: tuple[float, ...]) -> None:
    with pytest.raises(InvalidRequest):
        cp.p_alive(bad, X, TX, T)


def test_absurd_spend_parameters_and_horizons_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="q must be above 1"):
        cp.expected_spend((6.0, 0.9, 15.0), X, M)
    with pytest.raises(InvalidRequest, match="horizon"):
        cp.expected_purchases(BG, 1e4, X, TX, T)
    with pytest.raises(InvalidRequest, match="discount"):
        cp.clv(BG, GG, horizon_weeks=4, annual_discount_rate=-0.1, x=X, t_x=TX, big_t=T, mean_spend=M)


def _result() -> dict[str, object]:
    names = {"bgnbd": ("r", "alpha", "a", "b"), "gamma_gamma": ("p", "q", "gamma")}
    doc: dict[str, object] = {"analysis": "clv_fit", "time_unit": "week"}
    for section, values in (("bgnbd", BG), ("gamma_gamma", GG)):
        doc[section] = {
            n: {"value": v, "ci95": [v / 2, v * 2]} for n, v in zip(names[section], values, strict=True)
        }
    return doc


def test_a_model_is_read_from_a_job_result_or_its_result_object() -> None:
    assert cp.model_from_result(_result()) == (BG, GG)
    assert cp.model_from_result({"job_id": "j1", "status": "succeeded", "result": _result()}) == (BG, GG)
    with pytest.raises(InvalidRequest, match="clv_fit"):
        cp.model_from_result({"analysis": "mean", "cells": []})
    broken = _result()
    broken["bgnbd"] = {"r": {"value": 0.2}}
    with pytest.raises(InvalidRequest, match="alpha"):
        cp.model_from_result(broken)
    absurd = _result()
    absurd["gamma_gamma"] = {"p": {"value": 6.0}, "q": {"value": 0.5}, "gamma": {"value": 15.0}}
    with pytest.raises(InvalidRequest, match="q must be above 1"):
        cp.model_from_result(absurd)
