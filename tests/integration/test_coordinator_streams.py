"""Long-lived streams against the real coordinator (grpc.aio, real mTLS on loopback, SQLite).

Open streams must cost no thread: with more open job watches, health watches and task streams
than the old 64-thread pool had threads, a new node's heartbeat still answers at once. And each
certificate is capped: the first stream or call over its limit is refused with
RESOURCE_EXHAUSTED and a sentence, while other certificates are unaffected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from federation import POLICIES, DroppingAgent, Federation, open_policy, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.cli.analyst_client import AnalystClient
from tessera.client.agent import NodeAgent
from tessera.core import serde
from tessera.core.pki import TlsFiles, channel_credentials
from tessera.core.policy import load_policy
from tessera.core.types import JobSpec
from tessera.server.app import Coordinator, CoordinatorConfig
from tessera.server.limits import PeerLimitConfig
from tessera.server.store import open_store
from tessera.v1 import analyst_pb2, analyst_pb2_grpc, node_pb2, node_pb2_grpc

STREAMS = 70  # more than the 64 worker threads the synchronous server had


@pytest.fixture
def start(pki_dir: Path, tmp_path: Path) -> Iterator[object]:
    stack = ExitStack()

    def start_(limits: PeerLimitConfig) -> Coordinator:
        store = open_store(f"sqlite:///{tmp_path / 'coordinator.db'}")
        stack.callback(store.close)
        config = CoordinatorConfig(
            listen="127.0.0.1:0",
            tls=TlsFiles.for_identity(pki_dir, "coordinator", "coordinator"),
            stage_timeout=timedelta(seconds=60),
            limits=limits,
        )
        coordinator = Coordinator(config, store)
        coordinator.start()
        stack.callback(coordinator.stop, 1.0)
        return coordinator

    with stack:
        yield start_


def _channel(stack: ExitStack, pki_dir: Path, port: int, kind: str, name: str) -> grpc.Channel:
    creds = channel_credentials(TlsFiles.for_identity(pki_dir, kind, name))
    return stack.enter_context(grpc.secure_channel(f"127.0.0.1:{port}", creds))


def _enrol(stub: node_pb2_grpc.NodeServiceStub, name: str) -> None:
    policy = load_policy(POLICIES / f"{name}.yaml")
    stub.Enrol(
        node_pb2.EnrolRequest(node_version="test", policy=serde.policy_summary_to_pb(policy.summary())),
        timeout=10,
    )


def _heartbeat_seconds(stub: node_pb2_grpc.NodeServiceStub) -> float:
    started = time.perf_counter()
    stub.Heartbeat(node_pb2.HeartbeatRequest(node_version="test"), timeout=2.0)
    return time.perf_counter() - started


def test_many_open_streams_do_not_stop_a_new_nodes_heartbeat(start: object, pki_dir: Path) -> None:
    coordinator = start(PeerLimitConfig(streams_per_peer=4 * STREAMS))  # type: ignore[operator]
    port = coordinator.port
    with ExitStack() as stack:
        telco = node_pb2_grpc.NodeServiceStub(_channel(stack, pki_dir, port, "node", "telco"))
        retailer = node_pb2_grpc.NodeServiceStub(_channel(stack, pki_dir, port, "node", "retailer"))
        _enrol(telco, "telco")
        _enrol(retailer, "retailer")
        with AnalystClient.from_pki(f"127.0.0.1:{port}", pki_dir, "analyst") as client:
            # Nobody answers it: the job stays open, its watchers and task streams stay open.
            job_id = client.submit(JobSpec(analysis="inventory", dataset="customers", purpose="research"))
        threads_before = threading.active_count()
        calls: list[grpc.Call] = []
        analyst = analyst_pb2_grpc.AnalystServiceStub(_channel(stack, pki_dir, port, "analyst", "analyst"))
        health = health_pb2_grpc.HealthStub(_channel(stack, pki_dir, port, "analyst", "auditor"))
        for _ in range(STREAMS):
            watch = analyst.WatchJob(analyst_pb2.WatchJobRequest(job_id=job_id), timeout=30)
            calls.append(watch)
            assert next(watch).job_id == job_id  # the servicer runs: the stream is open server-side
            beat = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            calls.append(beat)
            assert next(beat).status == health_pb2.HealthCheckResponse.SERVING
            tasks = telco.ReceiveTasks(node_pb2.ReceiveTasksRequest(), timeout=30)
            calls.append(tasks)
            assert next(tasks).job_id == job_id  # each stream is sent the node's open task
        assert coordinator.limits.open_streams("analyst:analyst") == STREAMS
        # Idle streams hold no thread: a handful of pool threads at most, not one per stream.
        assert threading.active_count() - threads_before <= coordinator.config.max_workers + 2

        bank = node_pb2_grpc.NodeServiceStub(_channel(stack, pki_dir, port, "node", "bank"))
        _enrol(bank, "bank")
        assert max(_heartbeat_seconds(bank) for _ in range(5)) < 1.0
        for call in calls:
            call.cancel()
        wait_for(lambda: coordinator.limits.open_streams("analyst:analyst") == 0)


def test_the_first_stream_over_the_limit_is_refused_and_other_peers_are_not(
    start: object, pki_dir: Path
) -> None:
    coordinator = start(PeerLimitConfig(streams_per_peer=3))  # type: ignore[operator]
    with ExitStack() as stack:
        auditor = health_pb2_grpc.HealthStub(_channel(stack, pki_dir, coordinator.port, "analyst", "auditor"))
        admin = health_pb2_grpc.HealthStub(_channel(stack, pki_dir, coordinator.port, "analyst", "admin"))
        request = health_pb2.HealthCheckRequest(service="")
        held = [auditor.Watch(request, timeout=30) for _ in range(3)]
        for watch in held:
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        over = auditor.Watch(request, timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(over)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "already holds 3 open streams" in info.value.details()  # type: ignore[attr-defined]
        # Another certificate is not affected, and unary calls of the capped one still work.
        other = admin.Watch(request, timeout=30)
        assert next(other).status == health_pb2.HealthCheckResponse.SERVING
        assert auditor.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        # A closed stream frees its slot.
        held.pop().cancel()
        wait_for(lambda: coordinator.limits.open_streams("analyst:auditor") == 2)
        again = auditor.Watch(request, timeout=30)
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        for call in (*held, other, again):
            call.cancel()


def test_calls_over_the_rate_are_refused_for_that_peer_only(start: object, pki_dir: Path) -> None:
    coordinator = start(PeerLimitConfig(calls_per_second=0.01, burst=5))  # type: ignore[operator]
    with ExitStack() as stack:
        auditor = health_pb2_grpc.HealthStub(_channel(stack, pki_dir, coordinator.port, "analyst", "auditor"))
        admin = health_pb2_grpc.HealthStub(_channel(stack, pki_dir, coordinator.port, "analyst", "admin"))
        request = health_pb2.HealthCheckRequest(service="")
        for _ in range(5):
            auditor.Check(request, timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            auditor.Check(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "too many calls from this certificate" in info.value.details()  # type: ignore[attr-defined]
        assert admin.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING


def test_a_node_whose_connection_closes_is_dropped_without_waiting_for_silence(
    pki_dir: Path, tmp_path: Path
) -> None:
    # Heartbeat silence would take 5 minutes and the stage deadline is a minute away: only the
    # closed task stream (plus its one-second grace) can end the stage this early.
    fed = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rows=100)
    fed.start_coordinator(stage_timeout=60.0, heartbeat_ms=60_000)
    try:
        for name, base in (
            ("bank", "bank"),
            ("telco", "telco"),
            ("retailer", "retailer"),
            ("stranger", "telco"),
        ):
            policy = open_policy(base, name, fed.work)
            agent_class = type("DropAtMaskedInput", (DroppingAgent,), {"drop_at": "masked_input"})
            fed.start_node(name, policy=policy, agent_class=agent_class if name == "stranger" else NodeAgent)
        spec = JobSpec(
            analysis="count",
            dataset="customers",
            purpose="research",
            epsilon=0.5,
            delta=1e-7,
            params={"max_dropouts": 1},
        )
        started = time.monotonic()
        with fed.analyst() as client:
            job_id = client.submit(spec)
            events = list(client.watch(job_id, timeout_s=50))
            doc = client.result_document(job_id)
        assert doc["status"] == "succeeded", doc
        assert doc["result"]["dropped"] == ["stranger"]
        assert any(e.message == "masked_input: stranger dropped" for e in events)
        assert time.monotonic() - started < 15
    finally:
        fed.close()


def test_a_node_restarted_mid_job_is_told_the_job_ended_and_frees_its_reservation(
    pki_dir: Path, tmp_path: Path
) -> None:
    # The node dies at masked_input and comes back (same ledgers, no keys) before the coordinator
    # counts it gone; it vetoes the task it can no longer answer, and the job goes on without it.
    # It reserved the job's budget at advertise-keys: the end notice must still reach it.
    fed = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rows=100)
    fed.start_coordinator(stage_timeout=60.0, heartbeat_ms=1000, stream_grace=60.0)
    try:
        bases = {"bank": "bank", "telco": "telco", "retailer": "retailer", "stranger": "telco"}
        policies = {name: open_policy(base, name, fed.work) for name, base in bases.items()}
        for name, policy in policies.items():
            agent_class = type("DropAtMaskedInput", (DroppingAgent,), {"drop_at": "masked_input"})
            fed.start_node(name, policy=policy, agent_class=agent_class if name == "stranger" else NodeAgent)
        spec = JobSpec(
            analysis="count",
            dataset="customers",
            purpose="research",
            epsilon=0.5,
            delta=1e-7,
            params={"max_dropouts": 1},
        )
        with fed.analyst() as client:
            job_id = client.submit(spec)
            thread = fed.threads["stranger"]
            wait_for(lambda: not thread.is_alive())  # it died on its masked-input task
            fed.start_node("stranger", policy=policies["stranger"])  # a new process, same ledgers
            list(client.watch(job_id, timeout_s=50))
            doc = client.result_document(job_id)
        assert doc["status"] == "succeeded", doc
        assert "stranger" not in doc["result"]["survivors"]
        assert [v["node_id"] for v in doc["result"]["vetoes"]] == ["stranger"]

        def released() -> bool:
            return all(r.state.value != "reserved" for r in fed.ledgers("stranger").budget.history())

        wait_for(released)
    finally:
        fed.close()
