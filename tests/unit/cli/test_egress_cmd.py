"""`tessera node egress report|verify` and `tessera node budget` (issue 12, item 4): the report reads
at 80 columns without cutting a value, verify names a cut tail and an edited budget, and partners
see their own budget."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.client.egress import EgressRecord
from tessera.client.outgoing import open_ledgers
from tessera.core.policy import load_policy

runner = CliRunner()
POLICY = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
JOB = "0123456789abcdef0123456789abcdef"


def node(*args: str, columns: int = 80) -> tuple[int, str]:
    result = runner.invoke(app, ["node", *args], env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


def _state(tmp_path: Path) -> tuple[list[str], sa.Engine]:
    state = tmp_path / "state"
    base = ["--state-dir", str(state)]
    assert node("init", *base, "--policy", str(POLICY))[0] == 0
    engine = sa.create_engine(f"sqlite:///{state / 'vault.db'}")
    policy = load_policy(POLICY)
    ledgers = open_ledgers(engine, policy)
    job = ledgers.budget.reserve(job_id=JOB, epsilon=0.5, delta=policy.privacy.delta)
    record = EgressRecord(
        job_id=JOB,
        round=1,
        stage="masked_input",
        purpose="research",
        analysis="histogram",
        fields=("monthly_spend", "region", "tenure_months", "signup_date"),
        shape=(5, 12),
        noise={"mechanism": "discrete_gaussian", "sigma": 12.25, "quorum": 3},
        rho=job.rho,
        epsilon=job.epsilon,
        delta=job.delta,
        policy_hash=policy.policy_hash,
        analyst="alice.analyst@partner-consortium.example",
    )
    ledgers.budget.commit(job, egress=ledgers.egress, record=record, payload=b"payload")  # spent: closes it
    return base, engine


def test_report_reads_at_80_columns_and_cuts_nothing(tmp_path: Path) -> None:
    base, engine = _state(tmp_path)
    code, out = node("egress", "report", *base)
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and JOB in out and "alice.analyst@partner-consortium.example" in out
    sha = json.loads(node("egress", "report", *base, "--json")[1])[1]["payload_sha256"]
    assert sha in out.replace("\n" + " " * 11, "")  # a folded value reads back whole
    assert "budget.reserve" in out and "masked_input" in out
    engine.dispose()


def test_verify_names_an_edited_budget_and_a_cut_tail(tmp_path: Path) -> None:
    base, engine = _state(tmp_path)
    code, out = node("egress", "verify", *base)
    assert code == 0 and "2 entries verified" in out and "no head acknowledged" in out, out
    from tessera.client.egress import EgressLedger

    ledger = EgressLedger(engine)
    ledger.acknowledge(*ledger.head())
    assert "1 head(s) acknowledged" in node("egress", "verify", *base)[1]
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM budget_charges")
    code, out = node("egress", "verify", *base)
    assert code == 1 and "holds no such charge" in out
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM egress_ledger WHERE seq = 2")
        conn.exec_driver_sql(
            "UPDATE egress_head SET seq = 1, hash = (SELECT hash FROM egress_ledger WHERE seq = 1)"
        )
    code, out = node("egress", "verify", *base)
    assert code == 1 and "acknowledged entry 2" in out, out
    engine.dispose()


def test_node_budget_shows_what_is_left_and_what_a_job_can_get(tmp_path: Path) -> None:
    base, engine = _state(tmp_path)
    code, out = node("budget", *base, "--policy", str(POLICY), "--epsilon", "0.5", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["releases"] == 1 and doc["open_reservations"] == 0 and doc["rho_left"] > 0
    assert doc["job_fits"] is True and doc["jobs_of_that_epsilon_left"] >= 1
    assert doc["next_renewal"] and doc["largest_next_job_epsilon"] <= doc["epsilon_per_job"]
    code, out = node("budget", *base, "--policy", str(POLICY), "--epsilon", "0.5")
    assert code == 0 and "the next on" in out
    # In zCDP the price of a job is a ρ, set against the ρ left (not a difference of ε).
    assert f"a job of ε 0.5 costs ρ {doc['job_rho']:.3g} of the ρ {doc['rho_left']:.3g} left: fits" in out
    engine.dispose()
