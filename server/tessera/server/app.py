"""The coordinator process: gRPC server (asyncio) with mTLS, health, reflection, the job service.

Threads: one event loop thread ("grpc-loop") runs grpc's asyncio server and every servicer —
open task streams, job watches and health watches are parked coroutines, so thousands of them
cost no thread; a bounded pool ("coord-work", ``max_workers``) runs the synchronous job service
and store calls the servicers hand it; one ticker thread flushes heartbeats and acts on
deadlines. Per-peer limits (``PeerLimitConfig``) cap each certificate's open streams and call
rate, so no client can starve another.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tessera.core.errors import ConfigError
from tessera.core.grpc_status import KEEPALIVE_MS, MAX_MESSAGE_BYTES
from tessera.core.pki import TlsFiles, load_tls, peer_identity, server_credentials
from tessera.server.analyst_servicer import AnalystServicer
from tessera.server.auth import AioAuthInterceptor
from tessera.server.blocking import Blocking
from tessera.server.boundary import AioErrorBoundary
from tessera.server.clock import Clock, utc_now
from tessera.server.jobs import JobService
from tessera.server.limits import PeerLimitConfig, PeerLimitInterceptor, PeerLimits
from tessera.server.node_servicer import NodeServicer
from tessera.server.notifier import Notifier
from tessera.server.presence import Presence
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
    # How often deadlines, silence and closed streams are looked at: a stage waiting on a node that
    # is gone closes at most this long after its grace ran out.
    tick_seconds: float = 0.1
    # A node whose task stream closed and did not reopen within this long has dropped. A node
    # process reconnecting after a blip is back well within it (its first retry comes after at
    # most 0.2 s, then one TLS handshake and its enrolment); a longer grace makes every crashed
    # node cost the round that much more (10 nodes at 10^6 values: 0.86 s without a drop).
    stream_grace: timedelta = timedelta(seconds=0.5)
    # Threads of the pool that runs the job service and store calls (streams hold none).
    max_workers: int = 8
    max_message_bytes: int = MAX_MESSAGE_BYTES
    limits: PeerLimitConfig = field(default_factory=PeerLimitConfig)
    # All calls in flight at once, every peer together (each peer is capped by ``limits``).
    max_concurrent_rpcs: int = 50_000
    clock: Clock = field(default=utc_now)


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Nodes' keepalive pings are welcome (see KEEPALIVE_MS): half their interval leaves room.
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        ("grpc.so_reuseport", 0),
        # HTTP/2 streams one connection may hold open (a node needs a few; the per-peer limit
        # applies across connections).
        ("grpc.max_concurrent_streams", 256),
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
            connected=self._connected,
            left=self._left,
        )
        self.presence = Presence(store)
        self.limits = PeerLimits(config.limits)
        self.health = health.aio.HealthServicer()
        self._blocking: Blocking | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        load_tls(self.config.tls)  # fail early, with one sentence, on a bad certificate or key
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_run_loop, args=(loop,), name="grpc-loop", daemon=True)
        thread.start()
        self._loop, self._loop_thread = loop, thread
        self._blocking = Blocking(self.config.max_workers)
        try:
            port = self._on_loop(self._bind())
            self.jobs.recover()
            self._on_loop(self._start())
        except BaseException:
            self._close_loop()
            raise
        self.port = port
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick_loop, name="job-ticker", daemon=True)
        self._ticker.start()
        log.info("coordinator serving address=%s port=%d", self.config.listen, self.port)
        return self.port

    def _on_loop(self, coro: Coroutine[Any, Any, int], timeout: float | None = 60.0) -> int:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _bind(self) -> int:
        assert self._blocking is not None
        server = grpc.aio.server(
            # Auth first (outermost), then the per-peer limits, then the boundary around the servicers.
            interceptors=[
                AioAuthInterceptor(self.config.tls.ca, self.config.tls.crl, log),
                PeerLimitInterceptor(self.limits),
                AioErrorBoundary(log),
            ],
            options=grpc_options(self.config.max_message_bytes),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
        )
        online_after = timedelta(milliseconds=self.config.heartbeat_interval_ms * 3)
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(
                self.jobs,
                self.notifier,
                peer_identity,
                blocking=self._blocking,
                presence=self.presence,
                heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            ),
            server,
        )
        analyst_pb2_grpc.add_AnalystServiceServicer_to_server(
            AnalystServicer(
                self.jobs, self.notifier, peer_identity, blocking=self._blocking, online_after=online_after
            ),
            server,
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
        self._server = server
        return int(port)

    async def _start(self) -> int:
        assert self._server is not None
        await self._server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return 0

    def _connected(self, node_id: str) -> bool:
        return self.presence.connected(node_id)

    def _left(self, node_id: str) -> bool:
        return self.presence.left(node_id)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_seconds):
            try:
                self.presence.flush()
                gone = self.presence.disconnected(self.config.clock() - self.config.stream_grace)
                self.jobs.tick(gone=gone)
            except Exception:  # a bad tick must not kill the ticker; the next one retries
                log.exception("job ticker failed")

    def wait(self) -> None:
        if self._loop_thread is not None:
            self._loop_thread.join()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, tell watchers, let calls in flight finish within ``grace`` seconds."""
        if self._server is None:
            return
        self._stop.set()
        try:
            self._on_loop(self._shutdown(grace), timeout=grace + 10)
        finally:
            if self._ticker is not None:
                self._ticker.join(timeout=5)
            self._close_loop()
            try:
                self.presence.flush()  # the last heartbeats, for the next start
            except Exception:
                log.warning("could not record the last heartbeats at shutdown")
        log.info("coordinator stopped")

    async def _shutdown(self, grace: float) -> int:
        assert self._server is not None
        await self.health.enter_graceful_shutdown()
        self.notifier.close()
        await self._server.stop(grace)
        return 0

    def _close_loop(self) -> None:
        self._server = None
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=10)
        if self._blocking is not None:
            self._blocking.shutdown()
        self._loop = self._loop_thread = self._blocking = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
