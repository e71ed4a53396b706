"""`job result` rendering: the per-round trace (a metric a round did not report is missing, not NaN)
and the CLV fit's warning when it has not settled."""

from __future__ import annotations

from tessera.cli._common import console
from tessera.cli.job_cmd import render_trace


def test_a_round_without_a_metric_shows_a_dash_not_nan() -> None:
    doc = {
        "rounds": [
            {"round": 1, "survivors": ["a", "b", "c"], "dropped": [], "rho": 0.01, "metric": {"step": 0.5}},
            {"round": 2, "survivors": ["a", "b"], "dropped": ["c"], "rho": 0.02, "metric": {"check": 1.0}},
        ]
    }
    with console.capture() as captured:
        render_trace(doc)
    out = captured.get()
    assert "nan" not in out.lower()
    assert "0.5" in out and "c" in out


def test_an_unsettled_clv_fit_says_so_under_its_table() -> None:
    from tessera.cli.job_cmd import render_clv

    estimate = {"value": 0.3, "ci95": [0.2, 0.4]}
    doc = {"bgnbd": {"r": estimate}, "gamma_gamma": {"p": estimate}, "customers": 5000, "rounds_run": 9}
    with console.capture() as captured:
        render_clv(doc | {"warning": "bgnbd: the last Newton step was larger than its noise explains"})
    assert "not settled" in captured.get()
    with console.capture() as captured:
        render_clv(doc | {"warning": None})
    assert "not settled" not in captured.get()
