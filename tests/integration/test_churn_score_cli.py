"""`tessera node score` on a real vault: each customer's churn risk from a model card, computed at
home with the joined customers.<field> and derived RFM features, a summary printed (never one
customer's value or PII) and the scores stored as the general_sensitive field churn_risk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import sqlalchemy as sa
from test_segments_cli import EMAILS, _node
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.client.vault.derived import read_derived

runner = CliRunner()


def _card(tmp_path: Path) -> Path:
    model = {
        "kind": "churn_logistic",
        "label": "customers.churned",
        "features": ["customers.tenure_months", "rfm.frequency", "customers.region"],
        "numeric": ["customers.tenure_months", "rfm.frequency"],
        "categorical": ["customers.region"],
        "lower": [0.0, 1.0],
        "upper": [100.0, 50.0],
        "log": [False, False],
        "mean": [0.0, 3.0],
        "sd": [10.0, 1.0],
        "clip_sd": 10.0,
        "kept": [["north"]],
        "columns": ["intercept", "customers.tenure_months", "rfm.frequency", "customers.region=north"],
        "w": [-1.0, 1.0, 0.0, 0.5],  # frequency weighs 0: the score is σ(-0.5 + tenure/10)
        "reference_date": "2024-12-31",
        "time_field": "time",
        "amount_field": "amount",
        "split_seed": "s",
        "holdout": 0.2,
        "score_bins": 20,
    }
    path = tmp_path / "card.json"
    path.write_text(
        json.dumps({"card": {"kind": "tessera.churn_model_card"}, "dataset": "transactions", "model": model})
    )
    return path


def test_node_score_stores_each_customer_s_risk_at_home(tmp_path: Path) -> None:
    base = _node(tmp_path)
    card = _card(tmp_path)
    result = runner.invoke(app, ["node", "score", *base, "--model", str(card), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["customers"] == 6 and doc["stored"] == 0
    result = runner.invoke(app, ["node", "score", *base, "--model", str(card), "--store"])
    assert result.exit_code == 0, result.output
    assert "6 scores stored" in result.output and not any(e in result.output for e in EMAILS)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'vault.db'}")
    try:
        stored = read_derived(engine, field="churn_risk")
    finally:
        engine.dispose()
    expected = sorted(1 / (1 + math.exp(-(-0.5 + 5 * i / 10))) for i in range(6))  # tenure i·5, all north
    assert [round(float(x), 12) for x in sorted(stored.values())] == [round(x, 12) for x in expected]


def test_a_file_without_a_churn_model_is_one_sentence(tmp_path: Path) -> None:
    base = _node(tmp_path)
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"analysis": "kmeans", "model": {"kind": "kmeans"}}))
    result = runner.invoke(app, ["node", "score", *base, "--model", str(path)])
    assert result.exit_code == 1 and "no churn model" in result.output
