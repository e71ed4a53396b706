"""Shared by the mTLS integration tests: a throw-away consortium PKI and a real secure server."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tessera.core import pki
from tessera.server.auth import AioAuthInterceptor
from tessera.v1 import node_pb2, node_pb2_grpc

HEARTBEAT = "/tessera.v1.NodeService/Heartbeat"
PROBE_UPLOAD = "/tessera.test.Probe/Upload"  # a service the interceptor does not know (stream-unary)


@dataclass(frozen=True)
class Consortium:
    pki_dir: Path  # our CA: coordinator "co", nodes "n1", "doomed", "old" (expired), analyst "aud"
    foreign_dir: Path  # another CA (same consortium name!) with node "n1"


def make_consortium(base: Path) -> Consortium:
    ours, theirs = base / "pki", base / "foreign"
    pki.init_ca(ours, consortium="acme")
    pki.issue(ours, kind="coordinator", name="co")
    pki.issue(ours, kind="node", name="n1")
    pki.issue(ours, kind="node", name="doomed")
    pki.issue(ours, kind="node", name="old", days=30, now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    pki.issue(ours, kind="analyst", name="aud", role="auditor")
    pki.init_ca(theirs, consortium="acme")
    pki.issue(theirs, kind="node", name="n1")
    return Consortium(pki_dir=ours, foreign_dir=theirs)


class _Node(node_pb2_grpc.NodeServiceServicer):  # type: ignore[misc]
    async def Heartbeat(
        self, request: node_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.HeartbeatResponse:
        # Echo whom the certificate names, through the public helper servicers will use.
        caller = pki.peer_identity(context)  # type: ignore[arg-type]
        return node_pb2.HeartbeatResponse(re_enrol=caller.name == "n1")


async def _upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"".join([r async for r in requests])


@contextmanager
def running_server(pki_dir: Path, logger: logging.Logger) -> Iterator[int]:
    """A coordinator-like server on 127.0.0.1:<port> — grpc's asyncio server, as the coordinator
    runs — with health, reflection, NodeService and the coordinator's auth interceptor."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-grpc-loop", daemon=True)
    thread.start()

    async def build() -> tuple[grpc.aio.Server, int]:
        interceptor = AioAuthInterceptor(pki_dir / "ca.pem", pki_dir / "crl.pem", logger)
        server = grpc.aio.server(interceptors=[interceptor])
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        node_pb2_grpc.add_NodeServiceServicer_to_server(_Node(), server)  # type: ignore[abstract]
        reflection.enable_server_reflection(
            ("tessera.v1.NodeService", reflection.SERVICE_NAME, health.SERVICE_NAME), server
        )
        probe = grpc.stream_unary_rpc_method_handler(_upload)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("tessera.test.Probe", {"Upload": probe}),)
        )
        creds = pki.server_credentials(pki.TlsFiles.for_identity(pki_dir, "coordinator", "co"))
        port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(build(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def raw_credentials(ca_dir: Path, ident_dir: Path, kind: str, name: str) -> grpc.ChannelCredentials:
    """Credentials built without load_tls, so that a client can present what load_tls would refuse."""
    folder = ident_dir / f"{kind}s"
    return grpc.ssl_channel_credentials(
        root_certificates=(ca_dir / "ca.pem").read_bytes(),
        private_key=(folder / f"{name}.key").read_bytes(),
        certificate_chain=(folder / f"{name}.pem").read_bytes(),
    )


def health_status(channel: grpc.Channel, timeout: float = 10.0) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def heartbeat(channel: grpc.Channel, timeout: float = 10.0) -> node_pb2.HeartbeatResponse:
    call = channel.unary_unary(
        HEARTBEAT,
        request_serializer=node_pb2.HeartbeatRequest.SerializeToString,
        response_deserializer=node_pb2.HeartbeatResponse.FromString,
    )
    response: node_pb2.HeartbeatResponse = call(
        node_pb2.HeartbeatRequest(node_version="test"), timeout=timeout
    )
    return response
