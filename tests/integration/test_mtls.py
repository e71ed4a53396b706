"""mTLS end to end on loopback: real gRPC server, real certificates, the auth interceptor."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import grpc
import pytest
from _pki_helpers import (
    PROBE_UPLOAD,
    Consortium,
    health_status,
    heartbeat,
    make_consortium,
    raw_credentials,
    running_server,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tessera.core import pki

LOGGER = "tessera.test.mtls"
OpenChannel = Callable[[grpc.ChannelCredentials], grpc.Channel]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return make_consortium(tmp_path_factory.mktemp("mtls"))


@pytest.fixture(scope="module")
def port(consortium: Consortium) -> Iterator[int]:
    with running_server(consortium.pki_dir, logging.getLogger(LOGGER)) as bound:
        yield bound


@pytest.fixture
def channel_for(port: int) -> Iterator[OpenChannel]:
    opened: list[grpc.Channel] = []

    def open_(creds: grpc.ChannelCredentials) -> grpc.Channel:
        channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
        opened.append(channel)
        return channel

    yield open_
    for channel in opened:
        channel.close()


def _ours(consortium: Consortium, kind: str, name: str) -> grpc.ChannelCredentials:
    return pki.channel_credentials(pki.TlsFiles.for_identity(consortium.pki_dir, kind, name))


def test_node_certificate_gets_serving(consortium: Consortium, channel_for: OpenChannel) -> None:
    channel = channel_for(_ours(consortium, "node", "n1"))
    assert health_status(channel) == "SERVING"
    # The servicer sees who called (re_enrol echoes "the caller is n1").
    assert heartbeat(channel).re_enrol is True


def test_foreign_ca_certificate_fails_the_handshake(consortium: Consortium, channel_for: OpenChannel) -> None:
    creds = raw_credentials(consortium.pki_dir, consortium.foreign_dir, "node", "n1")
    with pytest.raises(grpc.RpcError) as info:
        health_status(channel_for(creds), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_expired_certificate_fails_the_handshake(consortium: Consortium, channel_for: OpenChannel) -> None:
    creds = raw_credentials(consortium.pki_dir, consortium.pki_dir, "node", "old")
    with pytest.raises(grpc.RpcError) as info:
        health_status(channel_for(creds), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_revoked_after_start_is_unauthenticated(
    consortium: Consortium,
    channel_for: OpenChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = channel_for(_ours(consortium, "node", "doomed"))
    assert heartbeat(channel).re_enrol is False  # accepted before the revocation
    serial = pki.revoke(consortium.pki_dir, kind="node", name="doomed")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(grpc.RpcError) as info:
        heartbeat(channel)  # same channel, same TLS session: only the reloaded CRL can refuse it
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert info.value.details() == "certificate revoked"  # type: ignore[attr-defined]
    assert f"peer=doomed kind=node serial={serial:x} reason=revoked" in caplog.text


def test_auditor_calling_node_service_is_denied(
    consortium: Consortium,
    channel_for: OpenChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = channel_for(_ours(consortium, "analyst", "aud"))
    assert health_status(channel) == "SERVING"  # health is open to any valid certificate
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(grpc.RpcError) as info:
        heartbeat(channel)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert info.value.details() == "this method is for node certificates, not analyst certificates"  # type: ignore[attr-defined]
    assert "method=/tessera.v1.NodeService/Heartbeat peer=aud kind=analyst" in caplog.text
    assert "reason=wrong_kind" in caplog.text


def test_every_cardinality_is_checked(consortium: Consortium, channel_for: OpenChannel) -> None:
    channel = channel_for(_ours(consortium, "analyst", "aud"))
    # unary-stream, allowed: health Watch streams SERVING first.
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    # stream-stream, allowed: reflection lists services.
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {s.name for s in next(reflect).list_services_response.service}
    assert "tessera.v1.NodeService" in names
    reflect.cancel()
    # unary-stream, refused: an auditor may not receive node tasks.
    tasks = channel.unary_stream("/tessera.v1.NodeService/ReceiveTasks")
    with pytest.raises(grpc.RpcError) as info:
        next(tasks(b"", timeout=10))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    # stream-unary on a service the interceptor does not know: refused (fail closed).
    upload = channel.stream_unary(PROBE_UPLOAD)
    with pytest.raises(grpc.RpcError) as info:
        upload(iter([b"a", b"b"]), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


_CLIENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tessera.core import pki

    port, pki_dir, foreign_dir = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    if sys.argv[4] == "valid":
        creds = pki.channel_credentials(pki.TlsFiles.for_identity(pki_dir, "node", "n1"))
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki_dir / "ca.pem").read_bytes(),
            private_key=(foreign_dir / "nodes" / "n1.key").read_bytes(),
            certificate_chain=(foreign_dir / "nodes" / "n1.pem").read_bytes(),
        )
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            print("FAILED", exc.code().name)
            sys.exit(3)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "rc", "out"), [("valid", 0, "SERVING"), ("foreign", 3, "FAILED UNAVAILABLE")]
)
def test_health_check_from_a_separate_process(
    consortium: Consortium, port: int, mode: str, rc: int, out: str
) -> None:
    args = [str(port), str(consortium.pki_dir), str(consortium.foreign_dir), mode]
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (rc, out), done.stderr[-2000:]
