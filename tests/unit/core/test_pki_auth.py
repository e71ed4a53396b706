"""Unit tests of tessera.server.auth: the access table and the decision, with a stub context."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
import pytest

from tessera.core import pki
from tessera.core.errors import PkiError
from tessera.server.auth import AccessRule, AuthInterceptor, access_rule


@pytest.mark.parametrize(
    ("method", "rule"),
    [
        ("/tessera.v1.NodeService/Heartbeat", AccessRule(kind="node")),
        (
            "/tessera.v1.AnalystService/SubmitJob",
            AccessRule(kind="analyst", roles=frozenset({"admin", "analyst"})),
        ),
        (
            "/tessera.v1.AnalystService/CancelJob",
            AccessRule(kind="analyst", roles=frozenset({"admin", "analyst"})),
        ),
        (
            "/tessera.v1.AnalystService/ListAudit",
            AccessRule(kind="analyst", roles=frozenset({"admin", "auditor"})),
        ),
        ("/tessera.v1.AnalystService/GetJob", AccessRule(kind="analyst")),
        ("/grpc.health.v1.Health/Check", AccessRule(kind=None)),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", AccessRule(kind=None)),
        ("/tessera.v1.Other/Thing", None),
        ("/tessera.v1.NodeServiceX/Heartbeat", None),
    ],
)
def test_access_table(method: str, rule: AccessRule | None) -> None:
    assert access_rule(method) == rule


class _Aborted(Exception):
    pass


class _Context:
    """Stands in for grpc.ServicerContext: auth_context() and abort() are all the check uses."""

    def __init__(self, pem: bytes | None) -> None:
        self._pem = pem
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self._pem]} if self._pem else {}

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path)
    for kind, name, role in [
        ("node", "n1", None),
        ("coordinator", "co", None),
        ("analyst", "aud", "auditor"),
        ("analyst", "adm", "admin"),
        ("analyst", "ana", "analyst"),
    ]:
        pki.issue(tmp_path, kind=kind, name=name, role=role)
    return tmp_path


def _pem(ca_dir: Path, kind: str, name: str) -> bytes:
    return (ca_dir / f"{kind}s" / f"{name}.pem").read_bytes()


def _call(interceptor: AuthInterceptor, method: str, pem: bytes | None) -> _Context:
    context = _Context(pem)
    try:
        identity = interceptor.check(method, context)  # type: ignore[arg-type]
    except _Aborted:
        return context
    assert identity.serial > 0
    return context


@pytest.mark.parametrize(
    ("kind", "name", "method", "code"),
    [
        ("node", "n1", "/tessera.v1.NodeService/Heartbeat", None),
        ("node", "n1", "/tessera.v1.AnalystService/GetJob", grpc.StatusCode.PERMISSION_DENIED),
        ("analyst", "aud", "/tessera.v1.NodeService/Heartbeat", grpc.StatusCode.PERMISSION_DENIED),
        ("analyst", "aud", "/tessera.v1.AnalystService/SubmitJob", grpc.StatusCode.PERMISSION_DENIED),
        ("analyst", "aud", "/tessera.v1.AnalystService/ListAudit", None),
        ("analyst", "ana", "/tessera.v1.AnalystService/ListAudit", grpc.StatusCode.PERMISSION_DENIED),
        ("analyst", "ana", "/tessera.v1.AnalystService/CancelJob", None),
        ("analyst", "adm", "/tessera.v1.AnalystService/SubmitJob", None),
        ("analyst", "adm", "/tessera.v1.AnalystService/ListAudit", None),
        ("analyst", "aud", "/tessera.v1.AnalystService/WatchJob", None),
        ("coordinator", "co", "/grpc.health.v1.Health/Check", None),
        ("node", "n1", "/tessera.v1.Secret/Do", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_decisions(ca_dir: Path, kind: str, name: str, method: str, code: grpc.StatusCode | None) -> None:
    interceptor = AuthInterceptor(ca_dir / "ca.pem", ca_dir / "crl.pem", logging.getLogger("test.auth"))
    assert _call(interceptor, method, _pem(ca_dir, kind, name)).code == code


def test_refusals_are_logged_without_key_material(ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    interceptor = AuthInterceptor(ca_dir / "ca.pem", ca_dir / "crl.pem", logging.getLogger("test.auth"))
    serial = pki.identity_from_pem(_pem(ca_dir, "analyst", "aud")).serial
    with caplog.at_level(logging.WARNING, logger="test.auth"):
        ctx = _call(interceptor, "/tessera.v1.AnalystService/SubmitJob", _pem(ca_dir, "analyst", "aud"))
    assert ctx.details == "this method needs the role admin or analyst, not auditor"
    [record] = caplog.records
    assert record.getMessage() == (
        f"auth.refused method=/tessera.v1.AnalystService/SubmitJob peer=aud kind=analyst "
        f"serial={serial:x} reason=wrong_role"
    )
    assert record.reason == "wrong_role"  # type: ignore[attr-defined]
    assert "BEGIN" not in caplog.text


def test_no_certificate_or_foreign_subject_is_unauthenticated(ca_dir: Path) -> None:
    interceptor = AuthInterceptor(ca_dir / "ca.pem", None, logging.getLogger("test.auth"))
    assert _call(interceptor, "/grpc.health.v1.Health/Check", None).code == grpc.StatusCode.UNAUTHENTICATED
    ca_pem = (ca_dir / "ca.pem").read_bytes()
    assert _call(interceptor, "/grpc.health.v1.Health/Check", ca_pem).code == grpc.StatusCode.UNAUTHENTICATED


def test_crl_reload_and_last_good_list(
    ca_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    interceptor = AuthInterceptor(ca_dir / "ca.pem", ca_dir / "crl.pem", logging.getLogger("test.auth"))
    method, pem = "/tessera.v1.NodeService/Heartbeat", _pem(ca_dir, "node", "n1")
    assert _call(interceptor, method, pem).code is None
    pki.revoke(ca_dir, kind="node", name="n1")
    ctx = _call(interceptor, method, pem)
    assert (ctx.code, ctx.details) == (grpc.StatusCode.UNAUTHENTICATED, "certificate revoked")
    # A CRL from another CA replaces the file: logged, and the revocation stays in force.
    pki.init_ca(tmp_path / "other")
    os.replace(tmp_path / "other" / "crl.pem", ca_dir / "crl.pem")
    with caplog.at_level(logging.ERROR, logger="test.auth"):
        assert _call(interceptor, method, pem).code == grpc.StatusCode.UNAUTHENTICATED
    assert "auth.crl_unreadable" in caplog.text


def test_bad_crl_at_start_up_is_an_error(ca_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="does not exist"):
        AuthInterceptor(ca_dir / "ca.pem", tmp_path / "missing.pem", logging.getLogger("test.auth"))
    with pytest.raises(PkiError, match="CA certificate"):
        AuthInterceptor(tmp_path / "nope.pem", None, logging.getLogger("test.auth"))
