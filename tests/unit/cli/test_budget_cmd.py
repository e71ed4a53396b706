"""`tessera budget` prints one budget per node (the coordinator's mirror), not one per dataset."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

import pytest
from typer.testing import CliRunner

from tessera.cli import job_cmd
from tessera.cli.main import app
from tessera.v1 import analyst_pb2


class _FakeClient:
    def __init__(self, views: list[analyst_pb2.BudgetView]) -> None:
        self.views = views

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def budgets(self) -> list[analyst_pb2.BudgetView]:
        return self.views


VIEWS = [
    analyst_pb2.BudgetView(
        node_id=node,
        dataset="customers",
        period="30d",
        epsilon_limit=1.0,
        epsilon_spent=spent,
        epsilon_left=1.0 - spent,
        rho_spent=0.01,
        releases=releases,
        delta=1e-6,
        epsilon_per_job=0.5,
    )
    for node, spent, releases in (("bank", 0.72, 2), ("telco", 0.5, 1))
]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_cmd, "_client", lambda *args: _FakeClient(VIEWS))


def test_json_has_one_row_per_node_without_a_dataset(fake: None, pki_dir: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "--pki", str(pki_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["node"] for r in rows] == ["bank", "telco"] and all("dataset" not in r for r in rows)
    assert rows[0]["epsilon_left"] == pytest.approx(0.28) and rows[0]["releases"] == 2


def test_table_names_the_node_budget(fake: None, pki_dir: Path) -> None:
    result = CliRunner().invoke(app, ["budget", "--pki", str(pki_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "per node, all datasets" in result.output and "bank" in result.output
    assert "dataset" not in result.output.split("\n", 2)[-1]  # no per-dataset column
