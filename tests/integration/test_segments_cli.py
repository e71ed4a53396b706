"""`tessera node segments` through the CLI on a real vault: a node labels its own customers with a
released rfm_segments or kmeans model, prints counts only (never PII), and stores the labels."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.client.vault.derived import read_derived

runner = CliRunner()
POLICY = Path(__file__).resolve().parents[2] / "policies" / "retailer.yaml"
EMAILS = [f"person{i}@canary-segments.test" for i in range(6)]


def _node(tmp_path: Path) -> list[str]:
    state = tmp_path / "state"
    base = ["--state-dir", str(state), "--policy", str(POLICY)]
    customers = tmp_path / "customers.csv"
    lines = ["customer_id,name,email,region,tenure_months,churned"]
    lines += [f"C{i},Person {i},{EMAILS[i]},north,{i * 5},{'True' if i % 2 else 'False'}" for i in range(6)]
    customers.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # C0 buys 12 times recently and big, C1..C4 in between, C5 once long ago.
    start = date(2024, 1, 1)
    rows = ["customer_id,time,amount,channel"]
    for i in range(6):
        n = {0: 12, 5: 1}.get(i, 3)
        last = start + timedelta(days=300 if i == 5 else 350 - 40 * i)
        for j in range(n):
            day = last - timedelta(days=j * (7 if i == 0 else 20) + (1000 if i == 5 else 0))
            rows.append(f"C{i},{day.isoformat()},{200.0 if i == 0 else 10.0 + j},web")
    transactions = tmp_path / "transactions.csv"
    transactions.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for args in (
        ["init"],
        ["ingest", str(customers)],
        ["ingest", str(transactions), "--dataset", "transactions"],
    ):
        result = runner.invoke(app, ["node", *args, *base])
        assert result.exit_code == 0, result.output
    return base


def _segments(base: list[str], model: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(app, ["node", "segments", *base, "--model", str(model), *extra])
    return result.exit_code, result.output


def test_rfm_labels_stay_home_and_are_stored(tmp_path: Path) -> None:
    base = _node(tmp_path)
    result = {
        "analysis": "rfm_segments",
        "dataset": "transactions",
        "model": {
            "kind": "rfm",
            "reference_date": "2024-12-31",
            "time_field": "time",
            "amount_field": "amount",
            "boundaries": {
                "recency": [20.0, 60.0, 150.0, 300.0],
                "frequency": [1.0, 2.0, 3.0, 6.0],
                "monetary": [15.0, 30.0, 100.0, 500.0],
            },
        },
    }
    path = tmp_path / "rfm.json"
    path.write_text(json.dumps(result), encoding="utf-8")
    code, out = _segments(base, path, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["customers"] == 6 and doc["stored"] == 0
    assert doc["labels"]["Champions"] == 1 and doc["labels"]["Lost"] == 1
    assert not any(e in out or "Person" in out for e in EMAILS)
    code, out = _segments(base, path, "--store")
    assert code == 0, out
    assert "6 labels stored" in out and not any(e in out for e in EMAILS)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'vault.db'}")
    try:
        stored = read_derived(engine, field="rfm_segment")
    finally:
        engine.dispose()
    assert sorted(stored.values()).count("Champions") == 1 and len(stored) == 6


def test_kmeans_labels_with_a_joined_customer_field(tmp_path: Path) -> None:
    base = _node(tmp_path)
    model = {
        "kind": "kmeans",
        "features": ["rfm.recency", "rfm.monetary", "customers.tenure_months"],
        "lower": [0.0, 0.0, 0.0],
        "upper": [2000.0, 5000.0, 60.0],
        "log": [False, True, False],
        "mean": [300.0, 4.0, 12.0],
        "sd": [300.0, 1.5, 8.0],
        "clip": 3.0,
        "centroids_z": [[-1.0, 2.0, -1.0], [2.0, -1.0, 1.0]],
        "reference_date": "2024-12-31",
        "time_field": "time",
        "amount_field": "amount",
    }
    path = tmp_path / "kmeans.json"
    path.write_text(
        json.dumps({"analysis": "kmeans", "dataset": "transactions", "model": model}), encoding="utf-8"
    )
    code, out = _segments(base, path, "--store", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["customers"] == 6 and doc["stored"] == 6
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'vault.db'}")
    try:
        stored = read_derived(engine, field="cluster")
    finally:
        engine.dispose()
    assert set(stored.values()) <= {"0", "1"} and len(stored) == 6


def test_a_file_without_a_model_is_one_sentence(tmp_path: Path) -> None:
    base = _node(tmp_path)
    path = tmp_path / "count.json"
    path.write_text(json.dumps({"analysis": "count", "cells": []}), encoding="utf-8")
    code, out = _segments(base, path)
    assert code == 1 and "no rfm_segments or kmeans model" in out
