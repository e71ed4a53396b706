"""Per-peer limits: open streams and call rate, so no certificate can starve the others.

A peer is one certificate identity (kind and name, from mTLS, checked by the auth interceptor
first). Each peer may hold at most ``streams_per_peer`` open server streams (task streams, job
watches, health watches, reflection) and start at most ``calls_per_second`` calls on average
with bursts of ``burst`` (a token bucket; a stream's opening counts as one call). Over either limit
the call ends at once with ``RESOURCE_EXHAUSTED`` and one sentence saying which limit and what
to do; other peers are unaffected. The limits cost no thread and no I/O: a dict lookup per call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc import aio

from tessera.core.errors import AuthError
from tessera.core.pki import peer_identity
from tessera.server.aio_wrap import wrap_handler

log = logging.getLogger("tessera.coordinator.limits")


@dataclass(frozen=True, slots=True)
class PeerLimitConfig:
    streams_per_peer: int = 32
    calls_per_second: float = 100.0
    burst: int = 200

    def __post_init__(self) -> None:
        if self.streams_per_peer < 1 or self.burst < 1 or self.calls_per_second <= 0:
            raise ValueError("peer limits must be positive")


class LimitExceeded(Exception):
    """A peer went over one of its limits; ``sentence`` is what the caller is told."""

    def __init__(self, sentence: str, reason: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.reason = reason


class PeerLimits:
    """The book-keeping behind the interceptor; thread-safe, clock injectable for tests."""

    def __init__(self, config: PeerLimitConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[str, int] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, at)

    def take_call(self, peer: str) -> None:
        """Spend one call from ``peer``'s bucket; ``LimitExceeded`` when it is empty."""
        cfg = self.config
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(peer, (float(cfg.burst), now))
            tokens = min(float(cfg.burst), tokens + (now - at) * cfg.calls_per_second)
            if tokens < 1.0:
                self._buckets[peer] = (tokens, now)
                raise LimitExceeded(
                    f"too many calls from this certificate: at most {cfg.calls_per_second:g} per second "
                    f"(bursts of {cfg.burst}); slow down and retry",
                    "call_rate",
                )
            self._buckets[peer] = (tokens - 1.0, now)

    def open_stream(self, peer: str) -> None:
        """Count one more open stream of ``peer``; ``LimitExceeded`` when it holds the maximum."""
        with self._lock:
            open_now = self._streams.get(peer, 0)
            if open_now >= self.config.streams_per_peer:
                raise LimitExceeded(
                    f"this certificate already holds {open_now} open streams, the most allowed per "
                    "peer; close one (e.g. a finished watch) before opening another",
                    "streams",
                )
            self._streams[peer] = open_now + 1

    def close_stream(self, peer: str) -> None:
        with self._lock:
            left = self._streams.get(peer, 0) - 1
            if left > 0:
                self._streams[peer] = left
            else:
                self._streams.pop(peer, None)

    def open_streams(self, peer: str) -> int:
        with self._lock:
            return self._streams.get(peer, 0)


def _peer_key(context: grpc.aio.ServicerContext) -> str:
    try:
        identity = peer_identity(context)  # type: ignore[arg-type]
    except AuthError:
        return "-"  # the auth interceptor refuses such calls before they get here
    return f"{identity.kind}:{identity.name}"


class PeerLimitInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Applies ``PeerLimits`` inside every call; must sit inside the auth interceptor."""

    def __init__(self, limits: PeerLimits, logger: logging.Logger = log) -> None:
        self.limits = limits
        self._log = logger

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method, limits, logger = details.method, self.limits, self._log

        @contextlib.asynccontextmanager
        async def around(context: grpc.aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
            peer = _peer_key(context)
            try:
                limits.take_call(peer)
                if streaming:
                    limits.open_stream(peer)
            except LimitExceeded as exc:
                logger.warning(
                    "limit.refused method=%s peer=%s reason=%s",
                    method,
                    peer,
                    exc.reason,
                    extra={
                        "event": "limit.refused",
                        "rpc_method": method,
                        "peer": peer,
                        "reason": exc.reason,
                    },
                )
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, exc.sentence)
            try:
                yield
            finally:
                if streaming:
                    limits.close_stream(peer)

        return wrap_handler(handler, around)
