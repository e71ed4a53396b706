"""The coordinator process: gRPC server with mTLS, health, reflection, the job service and a ticker."""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tessera.core.errors import ConfigError
from tessera.core.grpc_status import MAX_MESSAGE_BYTES
from tessera.core.pki import TlsFiles, load_tls, peer_identity, server_credentials
from tessera.server.analyst_servicer import AnalystServicer
from tessera.server.auth import AuthInterceptor
from tessera.server.boundary import ErrorBoundary
from tessera.server.clock import Clock, utc_now
from tessera.server.jobs import JobService
from tessera.server.node_servicer import NodeServicer
from tessera.server.notifier import Notifier
from tessera.server.store import SqlStore
from tessera.v1 import analyst_pb2, analyst_pb2_grpc, node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.coordinator")

SERVICE_NAMES = (
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    analyst_pb2.DESCRIPTOR.services_by_name["AnalystService"].full_name,
)


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    listen: str
    tls: TlsFiles
    heartbeat_interval_ms: int = 2000
    stage_timeout: timedelta = timedelta(minutes=2)
    job_timeout: timedelta = timedelta(minutes=30)
    tick_seconds: float = 0.5
    max_workers: int = 64
    max_message_bytes: int = MAX_MESSAGE_BYTES
    clock: Clock = field(default=utc_now)


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


class Coordinator:
    """A running coordinator; ``start`` binds the port (0 picks a free one) and returns it."""

    def __init__(self, config: CoordinatorConfig, store: SqlStore) -> None:
        self.config = config
        self.store = store
        self.notifier = Notifier()
        self.jobs = JobService(
            store,
            clock=config.clock,
            notifier=self.notifier,
            stage_timeout=config.stage_timeout,
            job_timeout=config.job_timeout,
            # Ten missed heartbeats (at least five seconds) and a node a stage waits for has dropped:
            # long enough that a loaded machine's late heartbeats do not drop a working node.
            node_silence=timedelta(milliseconds=max(10 * config.heartbeat_interval_ms, 5000)),
        )
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        load_tls(self.config.tls)  # fail early, with one sentence, on a bad certificate or key
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="grpc"),
            # Auth first (outermost), then the boundary around the servicers.
            interceptors=[AuthInterceptor(self.config.tls.ca, self.config.tls.crl, log), ErrorBoundary(log)],
            options=grpc_options(self.config.max_message_bytes),
            maximum_concurrent_rpcs=self.config.max_workers * 4,
        )
        online_after = timedelta(milliseconds=self.config.heartbeat_interval_ms * 3)
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(
                self.jobs,
                self.notifier,
                peer_identity,
                heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            ),
            server,
        )
        analyst_pb2_grpc.add_AnalystServiceServicer_to_server(
            AnalystServicer(self.jobs, self.notifier, peer_identity, online_after=online_after), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_secure_port(self.config.listen, server_credentials(self.config.tls))
        except RuntimeError:
            port = 0
        if not port:
            raise ConfigError(
                f"cannot listen on {self.config.listen}: the port is in use or the address is wrong"
            )
        self.jobs.recover()
        server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self.port = int(port)
        self._ticker = threading.Thread(target=self._tick_loop, name="job-ticker", daemon=True)
        self._ticker.start()
        log.info("coordinator serving address=%s port=%d", self.config.listen, self.port)
        return self.port

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_seconds):
            try:
                self.jobs.tick()
            except Exception:  # a bad tick must not kill the ticker; the next one retries
                log.exception("job ticker failed")

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, tell watchers, let calls in flight finish within ``grace`` seconds."""
        if self._server is None:
            return
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.notifier.close()
        self._server.stop(grace).wait(grace + 1)
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        self._server = None
        log.info("coordinator stopped")
