"""After a coordinator restart, nodes are not counted dropped for the time the coordinator was down.

Their heartbeats stopped because nothing was listening; each gets a whole silence window from the
restart to reconnect before a stage closes without it (a SIGKILLed coordinator that took longer
than the window to come back used to fail every running job at its first tick).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tessera.cli.demo_data import write_customers
from tessera.client.datasource import CsvDataSource
from tessera.core.policy import load_policy
from tessera.core.types import JobSpec, JobState, PeerIdentity
from tessera.server.jobs import JobService
from tessera.server.notifier import Notifier
from tessera.server.store import open_store

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SILENCE = timedelta(seconds=10)
ANALYST = PeerIdentity(name="ana", kind="analyst", role="analyst", serial=1)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_a_restarted_coordinator_waits_a_silence_window_before_dropping_anyone(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    clock = Clock()
    for name in ("bank", "telco", "retailer"):
        policy = load_policy(REPO / "policies" / f"{name}.yaml")
        csv = tmp_path / f"{name}.csv"
        write_customers(policy, "customers", csv, rows=20, seed=1)
        schemas = CsvDataSource({"customers": csv}, policy).schemas()
        store.upsert_node(name, node_version="1", policy=policy.summary(), datasets=schemas, now=T0)

    def service() -> JobService:
        return JobService(store, clock=clock, notifier=Notifier(), node_silence=SILENCE)

    spec = JobSpec(analysis="count", dataset="customers", purpose="research", epsilon=0.5, delta=1e-7)
    job = service().submit(spec, actor=ANALYST)
    # The coordinator dies; it comes back 30 s later, long after every node's last heartbeat.
    clock.now = T0 + timedelta(seconds=30)
    restarted = service()
    restarted.recover()
    clock.now += SILENCE - timedelta(seconds=1)
    restarted.tick()
    assert store.get_job(job.job_id).state is JobState.RUNNING  # still waiting for the nodes
    clock.now += timedelta(seconds=2)  # a whole window after the restart and still nobody: dropped
    restarted.tick()
    failed = store.get_job(job.job_id)
    assert failed.state is JobState.FAILED and "advertise_keys" in failed.error
    store.close()
