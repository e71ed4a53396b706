"""SIGKILL the coordinator in the middle of a job, restart it: the job resumes, it is not lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from processes import stop, tessera, wait_file, wait_until

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo_data import write_customers
from tessera.client.vault.state import init_node_state
from tessera.core.policy import load_policy
from tessera.core.types import JobSpec, JobState

pytestmark = pytest.mark.slow
POLICIES = Path(__file__).resolve().parents[2] / "policies"


def test_job_resumes_after_the_coordinator_is_killed(pki_dir: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'coordinator.db'}"
    port_file = tmp_path / "port"

    def coordinator(listen: str) -> object:
        port_file.unlink(missing_ok=True)
        return tessera(
            "coordinator",
            "serve",
            "--pki",
            str(pki_dir),
            "--listen",
            listen,
            "--db",
            db,
            "--port-file",
            str(port_file),
            "--heartbeat-ms",
            "300",
            log=tmp_path / "coordinator.log",
        )

    def node(name: str, address: str) -> object:
        csv = tmp_path / name / "customers.csv"
        if not csv.exists():
            policy = load_policy(POLICIES / f"{name}.yaml")
            write_customers(policy, "customers", csv, rows=10, seed=1)
            init_node_state(tmp_path / name / "state", policy).close()
        return tessera(
            "node",
            "serve",
            "--pki",
            str(pki_dir),
            "--name",
            name,
            "--coordinator",
            address,
            "--policy",
            str(POLICIES / f"{name}.yaml"),
            "--data",
            f"customers={csv}",
            "--state-dir",
            str(tmp_path / name / "state"),
            log=tmp_path / f"{name}.log",
        )

    first = coordinator("127.0.0.1:0")
    procs = [first]
    try:
        address = f"127.0.0.1:{wait_file(port_file, first)}"
        nodes = {name: node(name, address) for name in ("bank", "telco", "retailer")}
        procs += list(nodes.values())
        with AnalystClient.from_pki(address, pki_dir, "analyst") as client:
            wait_until(
                lambda: {n.node_id for n in client.nodes() if n.online} >= {"bank", "telco", "retailer"}
            )
            # Connected but frozen: it is asked (offline nodes are not) and the job waits for it.
            away = nodes.pop("retailer")
            away.send_signal(signal.SIGSTOP)
            job_id = client.submit(JobSpec(analysis="inventory", purpose="research"))
            wait_until(lambda: client.job(job_id).status_detail.startswith("waiting for 1 "))

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        away.kill()  # gone for good; a fresh retailer comes back below
        away.wait(timeout=10)
        second = coordinator(address)
        procs.append(second)
        wait_file(port_file, second)
        procs.append(node("retailer", address))
        with AnalystClient.from_pki(address, pki_dir, "analyst") as client:
            wait_until(lambda: client.job(job_id).state != 2)  # 2 = running
            doc = client.result_document(job_id)
            assert doc["status"] == JobState.SUCCEEDED.value, doc
            assert sorted(doc["result"]["nodes"]) == ["bank", "retailer", "telco"]
            messages = [e.message for e in client.watch(job_id, timeout_s=10)]
        assert "coordinator restarted; job resumes" in messages
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                stop(proc)
