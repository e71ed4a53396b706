"""`tessera budget` prints one budget per node (the coordinator's mirror), not one per dataset."""

from __future__ import annotations

import json
from datetime import UTC, datetime
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


def _view_with_spend() -> analyst_pb2.BudgetView:
    view = analyst_pb2.BudgetView(
        node_id="bank",
        period="30d",
        epsilon_limit=1.0,
        epsilon_spent=0.72,
        epsilon_left=0.28,
        rho_spent=0.0131708,  # ε 0.72 at δ 1e-6
        rho_limit=0.0243560,  # ε 1 at δ 1e-6
        releases=2,
        delta=1e-6,
        epsilon_per_job=0.5,
        next_renewal_rho=0.006,
    )
    view.next_renewal.FromDatetime(datetime(2026, 12, 3, 9, 30, tzinfo=UTC))
    return view


def test_what_a_next_job_of_an_epsilon_costs_against_the_rho_left(
    monkeypatch: pytest.MonkeyPatch, pki_dir: Path
) -> None:
    monkeypatch.setattr(job_cmd, "_client", lambda *args: _FakeClient([_view_with_spend()]))
    base = ["budget", "--pki", str(pki_dir), "--json"]
    (row,) = json.loads(CliRunner().invoke(app, [*base, "--epsilon", "0.28"]).output)
    # "ε left 0.28" is not a price: in zCDP a job of ε 0.28 costs ρ 0.00223 of the ρ 0.0112 left.
    assert row["rho_left"] == pytest.approx(0.0111852, rel=1e-4)
    assert row["job_rho"] == pytest.approx(0.0022302, rel=1e-3)
    assert row["job_fits"] and row["jobs_of_that_epsilon_left"] == 5
    assert row["next_renewal"].startswith("2026-12-03T09:30")
    (capped,) = json.loads(CliRunner().invoke(app, [*base, "--epsilon", "0.6"]).output)
    assert not capped["job_fits"] and capped["jobs_of_that_epsilon_left"] == 0
    table = CliRunner().invoke(app, [*base[:-1], "--epsilon", "0.28"], env={"COLUMNS": "200"}).output
    assert "ρ 0.00223: fits (5 such)" in table and "2026-12-03: ρ 0.006 back" in table
