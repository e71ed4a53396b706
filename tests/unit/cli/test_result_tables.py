"""The segment analyses' result tables: readable at 80 columns, every released interval shown,
suppressed cells said so, and `tessera job result` (render_result) using them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from tessera.cli import result_tables
from tessera.cli.job_cmd import render_result
from tessera.core.analyses import cohort_retention, funnel
from tessera.core.analyses.registry import get_program
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

KEY = FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE)
TX = {
    "customer": KEY,
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
}
EVENTS = {
    "customer": KEY,
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "event_type": FieldSchema("event_type", "category", Tier.NON_SENSITIVE),
}
DAY0 = 9862.0  # 1997-01-01 in days since 1970


def _spec(analysis: str, dataset: str, **params: ParamValue) -> JobSpec:
    return JobSpec(analysis=analysis, dataset=dataset, epsilon=1.0, delta=1e-6, params=params)


def _transactions(seed: int, n: int = 600) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 8, n)
    customer = np.repeat(np.arange(n), rows)
    return {
        "customer": customer,
        "time": DAY0 + rng.integers(0, 540, customer.size).astype(np.float64),
        "amount": np.round(rng.lognormal(3.0, 1.0, customer.size), 2),
    }


def _program(
    spec: JobSpec, fields: dict[str, FieldSchema], nodes: list[dict[str, np.ndarray]], floor: int = 10
) -> dict[str, Any]:
    """The real program in memory without noise (its release still states intervals)."""
    program = get_program(spec.analysis)
    public = program.start(spec)
    for round_no in range(1, program.max_rounds(spec) + 1):
        plan = program.plan(spec, fields, survivors_t=3, n_nodes=3, round_no=round_no, public=public)
        rng = np.random.default_rng(round_no)
        total = np.sum([program.local_vector(plan, x, rng=rng) for x in nodes], axis=0)
        released = program.release(plan, total.astype(np.int64), summands=3, min_cohort_size=floor)
        step = program.step(spec, round_no=round_no, public=public, released=released)
        if step.result is not None:
            return step.result
        assert step.next_public is not None
        public = step.next_public
    raise AssertionError("the program did not end")


def _one_round(module: Any, spec: JobSpec, fields: dict[str, FieldSchema], data: dict) -> dict[str, Any]:
    plan = module.plan(spec, fields, survivors_t=3, n_nodes=3)
    total = module.local_vector(plan, data, rng=np.random.default_rng(0))
    truth = module.exact(plan, data)
    doc: dict[str, Any] = module.release(plan, total * 3, summands=3, min_cohort_size=10, truth=truth)
    return doc


def _rendered(analysis: str, doc: dict[str, Any], width: int = 80) -> str:
    console = Console(width=width, record=True, color_system=None)
    assert result_tables.render(analysis, doc, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width, text
    return text


def _rfm() -> dict[str, Any]:
    nodes = [_transactions(s) for s in range(3)]
    return _program(
        _spec("rfm_segments", "transactions", reference_date="1998-06-30", monetary_max=1000.0),
        TX,
        nodes,
        floor=40,  # New (about 28 customers) and Promising (about 30) fall under it
    )


def test_rfm_segments_table() -> None:
    doc = _rfm()
    text = _rendered("rfm_segments", doc)
    for header in ("segment", "customers", "share %", "mean monetary"):
        assert header in text
    released = [c for c in doc["segments"] if not c["suppressed"]]
    assert released and any(c["suppressed"] for c in doc["segments"])
    for cell in released:
        assert cell["segment"] in text
        low, high = cell["size"]["ci95"]
        assert f"{low:,.0f}–{high:,.0f}" in text  # the interval, not only the value
    assert text.count("suppressed") >= 1 + sum(c["suppressed"] for c in doc["segments"])
    words = " ".join(text.split())
    assert "quintile boundaries: recency" in words and "boundaries (round 1) 50%, sizes" in words


def test_kmeans_table_has_centroids_in_original_units_sizes_and_the_split() -> None:
    nodes = [_transactions(s) for s in range(3)]
    spec = _spec(
        "kmeans",
        "transactions",
        features=("rfm.recency", "rfm.frequency", "rfm.monetary"),
        lower=(0.0, 1.0, 0.0),
        upper=(600.0, 20.0, 3000.0),
        log_features=("rfm.monetary",),
        reference_date="1998-06-30",
        k=3,
        iterations=2,
    )
    doc = _program(spec, TX, nodes)
    text = _rendered("kmeans", doc)
    assert "recency" in text and "frequency" in text and "monetary" in text
    for cluster in doc["clusters"]:
        low, high = cluster["size"]["ci95"]
        assert f"{low:,.0f}–{high:,.0f}" in text
        recency = cluster["centroid"]["rfm.recency"]
        assert f"{recency:,.0f}" in text  # days, not standardised units
    words = " ".join(text.split())
    assert "statistics 15%, grid start 15%, 2 Lloyd iterations 35.0% each" in words


def test_funnel_table() -> None:
    rows = [(c, DAY0 + c % 5, step) for c in range(200) for step in ("visit", "cart", "buy")[: 1 + c % 3]]
    data = {
        "customer": np.array([r[0] for r in rows]),
        "time": np.array([r[1] for r in rows], dtype=np.float64),
        "event_type": np.array([r[2] for r in rows], dtype=object),
    }
    doc = _one_round(
        funnel,
        _spec("funnel", "events", steps=("visit", "cart", "buy", "refund"), window_days=7.0),
        EVENTS,
        data,
    )
    text = _rendered("funnel", doc)
    assert "1. visit" in text and "4. refund" in text and "from previous %" in text
    cart = doc["cells"][1]
    low, high = cart["conversion_from_first"]["ci95"]
    assert (
        f"{cart['conversion_from_first']['value'] * 100:.1f}" in text
        and f"{low * 100:.1f}–{high * 100:.1f}" in text
    )
    assert doc["cells"][3]["suppressed"] and "suppressed" in text
    assert "true" in text  # the demo's truth column
    doc["coverage"] = {"released": 3, "inside_ci95": 3}
    assert "3 of 3 released values lie inside" in _rendered("funnel", doc)


@pytest.mark.parametrize("width", [80, 120, 40])
def test_cohort_matrix_is_cut_to_the_width(width: int) -> None:
    data = _transactions(1, n=900)
    spec = _spec("cohort_retention", "transactions", first_month="1997-01", cohorts=3, months=18)
    doc = _one_round(cohort_retention, spec, TX, data)
    text = _rendered("cohort_retention", doc, width=width)
    per_table = (width - 9) // 7
    assert text.count("cohort ") == math.ceil(18 / per_table) + 1  # matrix parts + the sizes table
    assert "+17" in text and "1997-03" in text
    first = doc["cells"][1]  # cohort 1997-01, one month on
    assert f"{first['retention']['value'] * 100:.1f}" in text


def test_job_result_prints_the_tables_and_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    result = _rfm()
    result["rounds"] = [
        {"round": r, "survivors": ["a", "b", "c"], "dropped": [], "rho": 0.01, "metric": {"m": 1.0}}
        for r in (1, 2)
    ]
    result["budget"] = {"rho_used": 0.02, "rho_reserved": 0.02, "epsilon_used": 1.0, "delta": 1e-6}
    doc = {
        "job_id": "j1",
        "analysis": "rfm_segments",
        "status": "succeeded",
        "error": "",
        "vetoes": [],
        "result": result,
    }
    render_result(doc)
    out = capsys.readouterr().out
    assert "Champions" in out and "share %" in out and "rounds" in out and "budget: ρ 0.02 used" in out


def test_an_analysis_without_a_table_is_left_to_the_caller() -> None:
    assert not result_tables.render("count", {"cells": []}, Console(width=80))
    assert not result_tables.render("funnel", {}, Console(width=80))
