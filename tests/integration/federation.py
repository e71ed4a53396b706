"""An in-process federation for integration tests: a real coordinator on 127.0.0.1:0 and real node
agents (threads) talking real gRPC over mTLS."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo_data import write_customers
from tessera.client.agent import NodeAgent, NodeConfig
from tessera.client.datasource import CsvDataSource
from tessera.client.db import node_engine
from tessera.client.outgoing import NodeLedgers, open_ledgers
from tessera.core.pki import TlsFiles
from tessera.core.policy import Policy, load_policy
from tessera.server.app import Coordinator, CoordinatorConfig
from tessera.server.store import SqlStore, open_store

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


@dataclass
class Federation:
    pki_dir: Path
    work: Path
    db_url: str
    store: SqlStore | None = None
    coordinator: Coordinator | None = None
    rows: int = 20
    agents: dict[str, NodeAgent] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_coordinator(
        self,
        *,
        port: int = 0,
        stage_timeout: float = 30.0,
        heartbeat_ms: int = 200,
        stream_grace: float = 1.0,
    ) -> int:
        self.store = open_store(self.db_url)
        config = CoordinatorConfig(
            listen=f"127.0.0.1:{port}",
            tls=TlsFiles.for_identity(self.pki_dir, "coordinator", "coordinator"),
            heartbeat_interval_ms=heartbeat_ms,
            tick_seconds=0.1,
            stage_timeout=timedelta(seconds=stage_timeout),
            stream_grace=timedelta(seconds=stream_grace),
        )
        self.coordinator = Coordinator(config, self.store)
        self.port = self.coordinator.start()
        return self.port

    def stop_coordinator(self) -> None:
        if self.coordinator is not None:
            self.coordinator.stop(grace=1.0)
            self.coordinator = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def policy(self, name: str) -> Policy:
        return load_policy(POLICIES / f"{name}.yaml")

    def start_node(
        self,
        name: str,
        *,
        policy: Policy | None = None,
        agent_class: type[NodeAgent] = NodeAgent,
        data: dict[str, Path] | None = None,
    ) -> NodeAgent:
        policy = policy or self.policy(name)
        csv = self.work / name / "customers.csv"
        if not csv.exists():
            write_customers(policy, "customers", csv, rows=self.rows, seed=len(name))
        config = NodeConfig(
            node_id=name,
            coordinator=self.address,
            tls=TlsFiles.for_identity(self.pki_dir, "node", name),
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
        )
        engine = node_engine(f"sqlite:///{self.work / name / 'ledgers.db'}")
        source = CsvDataSource({"customers": csv, **(data or {})}, policy)
        agent = agent_class(config, policy, source, open_ledgers(engine, policy))
        thread = threading.Thread(target=agent.run, name=f"node-{name}", daemon=True)
        thread.start()
        self.agents[name], self.threads[name] = agent, thread
        if not agent.enrolled.wait(15):
            raise AssertionError(f"node {name} did not enrol")
        return agent

    def stop_node(self, name: str) -> None:
        self.agents.pop(name).stop()
        self.threads.pop(name).join(timeout=10)

    def ledgers(self, name: str) -> NodeLedgers:
        return self.agents[name].ledgers

    def analyst(self, role: str = "analyst") -> AnalystClient:
        return AnalystClient.from_pki(self.address, self.pki_dir, role)

    def close(self) -> None:
        for name in list(self.agents):
            self.stop_node(name)
        self.stop_coordinator()


def spend_elsewhere(
    fed: Federation, node: str, job_id: str, *, dataset: str, epsilon: float, delta: float
) -> None:
    """Budget ``node`` spent on a job this coordinator never saw (a node is the authority on its own
    budget): reserved and committed with an egress entry, as a real round would be."""
    from tessera.client.egress import EgressRecord

    ledgers = fed.ledgers(node)
    reservation = ledgers.budget.reserve(job_id=job_id, dataset=dataset, epsilon=epsilon, delta=delta)
    record = EgressRecord(
        job_id=job_id,
        round=1,
        stage="masked_input",
        purpose="research",
        analysis="count",
        fields=(),
        shape=(1,),
        noise={},
        rho=reservation.rho,
        epsilon=epsilon,
        delta=delta,
        policy_hash="test",
    )
    ledgers.budget.commit(reservation, egress=ledgers.egress, record=record, payload=b"x")


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def open_policy(base: str, name: str, work: Path, **changes: object) -> Policy:
    """A variant of an example policy for node ``name`` (any partner allowed unless changed)."""
    import yaml

    doc = yaml.safe_load((POLICIES / f"{base}.yaml").read_text())
    doc.update({"partner": name, "policy_id": f"{name}-test", "allowed_partners": ["*"]})
    doc.update(changes)
    path = work / f"{name}-policy.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_policy(path)


class DroppingAgent(NodeAgent):
    """A node that crashes (stops for good) when a task of ``drop_at`` reaches it, in round
    ``drop_round`` or later."""

    drop_at: str = ""
    drop_round: int = 0

    def _answer(self, stub: Any, task: Any) -> None:
        from tessera.core import serde

        if serde.stage_from_pb(task.stage).value == self.drop_at and task.round >= self.drop_round:
            self.stop()
            return
        super()._answer(stub, task)
