"""`job result`'s per-round trace: a metric a round did not report is shown as missing, not NaN."""

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
