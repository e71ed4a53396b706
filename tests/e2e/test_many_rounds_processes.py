"""A job of many rounds over real processes: the coordinator is SIGKILLed mid-job and a node is
SIGKILLed mid-job; the job resumes with fresh keys, finishes with the others, and every node's
ledger holds exactly one charge per round its masked input was sent for."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from processes import stop, tessera, wait_file, wait_until

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo_data import write_customers
from tessera.client.budget import BudgetLedger
from tessera.client.db import node_engine
from tessera.client.vault.state import init_node_state
from tessera.core.analyses.program import rho_total
from tessera.core.policy import load_policy
from tessera.core.types import JobSpec, JobState

pytestmark = pytest.mark.slow
POLICIES = Path(__file__).resolve().parents[2] / "policies"
NODES = {"bank": "bank", "telco": "telco", "retailer": "retailer", "stranger": "telco"}
ROUNDS = 40


def _policy(tmp_path: Path, name: str) -> Path:
    doc = yaml.safe_load((POLICIES / f"{NODES[name]}.yaml").read_text())
    doc.update({"partner": name, "policy_id": f"{name}-e2e", "allowed_partners": ["*"]})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_job_of_many_rounds_survives_a_coordinator_and_a_node_sigkill(
    pki_dir: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'coordinator.db'}"
    port_file = tmp_path / "port"

    def coordinator(listen: str) -> subprocess.Popen[bytes]:
        port_file.unlink(missing_ok=True)
        return tessera(
            "coordinator", "serve", "--pki", str(pki_dir), "--listen", listen, "--db", db,
            "--port-file", str(port_file), "--heartbeat-ms", "300", "--stage-timeout", "20",
            log=tmp_path / "coordinator.log",
        )  # fmt: skip

    def node(name: str, address: str) -> subprocess.Popen[bytes]:
        policy_path = _policy(tmp_path, name)
        csv = tmp_path / name / "customers.csv"
        if not csv.exists():
            policy = load_policy(policy_path)
            write_customers(policy, "customers", csv, rows=200, seed=len(name))
            init_node_state(tmp_path / name / "state", policy).close()
        return tessera(
            "node", "serve", "--pki", str(pki_dir), "--name", name, "--coordinator", address,
            "--policy", str(policy_path), "--data", f"customers={csv}",
            "--state-dir", str(tmp_path / name / "state"),
            log=tmp_path / f"{name}.log",
        )  # fmt: skip

    spec = JobSpec(
        analysis="mean_descent",
        dataset="customers",
        purpose="research",
        epsilon=0.5,
        delta=1e-7,
        params={"field": "monthly_spend", "lower": 0.0, "upper": 200.0, "rounds": ROUNDS, "max_dropouts": 1},
    )
    first = coordinator("127.0.0.1:0")
    procs = [first]
    try:
        address = f"127.0.0.1:{wait_file(port_file, first)}"
        nodes = {name: node(name, address) for name in NODES}
        procs += list(nodes.values())
        with AnalystClient.from_pki(address, pki_dir, "analyst") as client:
            wait_until(lambda: {n.node_id for n in client.nodes() if n.online} >= set(NODES), 90)
            job_id = client.submit(spec)
            wait_until(lambda: client.job(job_id).round >= 5, 90)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = coordinator(address)
        procs.append(second)
        wait_file(port_file, second)
        with AnalystClient.from_pki(address, pki_dir, "analyst") as client:
            wait_until(lambda: client.job(job_id).round >= 15, 90)
            nodes["stranger"].send_signal(signal.SIGKILL)
            nodes["stranger"].wait(timeout=10)
            wait_until(lambda: client.job(job_id).state != 2, 180)  # 2 = running
            doc = client.result_document(job_id)
            messages = [e.message for e in client.watch(job_id, timeout_s=10)]
        assert doc["status"] == JobState.SUCCEEDED.value, doc
        result = doc["result"]
        assert [r["round"] for r in result["rounds"]] == list(range(1, ROUNDS + 1))
        assert result["out_of_job"] == ["stranger"]
        assert len(result["rounds"][-1]["survivors"]) == 3
        assert any("coordinator restarted; resuming" in m for m in messages)
        per_round = rho_total(spec) / ROUNDS
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                stop(proc)
    for name in ("bank", "telco", "retailer"):
        policy = load_policy(_policy(tmp_path, name))
        engine = node_engine(f"sqlite:///{tmp_path / name / 'state' / 'vault.db'}")
        status = BudgetLedger(engine, limits=policy.privacy, policy_hash=policy.policy_hash).remaining()
        # One charge per round however often a round ran (the one in flight at the SIGKILL ran
        # twice), nothing left reserved.
        assert status.releases == ROUNDS
        assert status.rho_spent == pytest.approx(ROUNDS * per_round)
        assert status.rho_reserved == 0
        engine.dispose()
