"""`tessera node clv`: predictions at home from a released clv_fit model, a summary without any one
customer's values, and `--store` into the vault under the policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tessera.cli.demo_data import write_customers, write_transactions
from tessera.cli.main import app
from tessera.client.vault.derived import read_derived
from tessera.core.analyses import clv_predict as cp
from tessera.core.policy import load_policy

runner = CliRunner()
POLICY = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
MODEL = {
    "job_id": "j1",
    "status": "succeeded",
    "result": {
        "analysis": "clv_fit",
        "time_unit": "week",
        "bgnbd": {
            k: {"value": v}
            for k, v in zip(("r", "alpha", "a", "b"), (0.243, 4.414, 0.793, 2.426), strict=True)
        },
        "gamma_gamma": {
            k: {"value": v} for k, v in zip(("p", "q", "gamma"), (6.25, 3.74, 15.44), strict=True)
        },
    },
}


def _node(tmp_path: Path, policy: Path = POLICY) -> list[str]:
    state = tmp_path / "state"
    base = ["--state-dir", str(state), "--policy", str(policy)]
    loaded = load_policy(policy)
    write_customers(loaded, "customers", tmp_path / "customers.csv", rows=40, seed=3)
    write_transactions(loaded, tmp_path / "transactions.csv", customers=40, seed=3)
    assert runner.invoke(app, ["node", "init", *base]).exit_code == 0
    for name in ("customers", "transactions"):
        out = runner.invoke(
            app, ["node", "ingest", str(tmp_path / f"{name}.csv"), "--dataset", name, "--region", "GB", *base]
        )
        assert out.exit_code == 0, out.output
    (tmp_path / "model.json").write_text(json.dumps(MODEL), encoding="utf-8")
    return base


def test_predicts_summarises_and_stores_under_the_policy(tmp_path: Path) -> None:
    base = _node(tmp_path)
    args = ["node", "clv", *base, "--model", str(tmp_path / "model.json"), "--horizon-weeks", "26"]
    out = runner.invoke(app, [*args, "--as-of", "2026-06-30"])
    assert out.exit_code == 0, out.output
    assert "customers predicted as of 2026-06-30 over 26 weeks" in out.output and "CLV" in out.output
    assert "C003" not in out.output  # no customer id, nothing per customer
    out = runner.invoke(app, [*args, "--store", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'vault.db'}")
    try:
        stored = {name: read_derived(engine, field=name) for name in cp.DERIVED_FIELDS}
    finally:
        engine.dispose()
    assert doc["stored"] == {name: doc["customers"] for name in cp.DERIVED_FIELDS}
    assert all(len(values) == doc["customers"] > 0 for values in stored.values())
    p_alive = np.array(list(stored["p_alive"].values()), dtype=float)
    assert np.all((p_alive > 0) & (p_alive <= 1))
    assert sum(stored["clv"].values()) == pytest.approx(doc["summary"]["clv"]["total"])
    assert '"action": "clv_predict"' in (tmp_path / "state" / "audit.log").read_text()


def test_store_refuses_fields_the_policy_does_not_classify(tmp_path: Path) -> None:
    text = POLICY.read_text(encoding="utf-8")
    policy = tmp_path / "bank.yaml"
    policy.write_text(
        text.replace("      clv:                {tier: general_sensitive, type: float}\n", ""),
        encoding="utf-8",
    )
    base = _node(tmp_path, policy)
    out = runner.invoke(app, ["node", "clv", *base, "--model", str(tmp_path / "model.json"), "--store"])
    assert out.exit_code == 1 and 'field "clv"' in out.output and "not classified" in out.output
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'vault.db'}")
    try:
        assert read_derived(engine, field="p_alive") == {}  # nothing half-stored
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ({"analysis": "mean"}, "clv_fit"),
        (
            {
                **MODEL["result"],
                "gamma_gamma": {"p": {"value": 1.0}, "q": {"value": 0.5}, "gamma": {"value": 2.0}},
            },
            "q must be above 1",
        ),  # type: ignore[dict-item]
    ],
)
def test_bad_models_are_refused_with_one_sentence(
    tmp_path: Path, model: dict[str, object], match: str
) -> None:
    (tmp_path / "bad.json").write_text(json.dumps(model), encoding="utf-8")
    out = runner.invoke(
        app,
        [
            "node",
            "clv",
            "--state-dir",
            str(tmp_path / "none"),
            "--policy",
            str(POLICY),
            "--model",
            str(tmp_path / "bad.json"),
        ],
    )
    assert out.exit_code == 1 and match in out.output
