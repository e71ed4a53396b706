"""Who may call what on the coordinator: a gRPC server interceptor over the mTLS identity.

Layers, from the outside in:

1. **TLS handshake** (``tessera.core.pki.server_credentials``, ``require_client_auth=True``): a
   client certificate from a foreign CA, an expired or not-yet-valid one, or none at all never
   reaches this module — gRPC core refuses the handshake (and logs it itself); the client sees
   ``UNAVAILABLE``.
2. **This interceptor**, inside every call (all four cardinalities), with the real context:

   * a serial on the CRL -> ``UNAUTHENTICATED`` ("certificate revoked"). gRPC's Python credentials
     cannot check a CRL, so it happens here; the CRL is re-read whenever the file changes
     (mtime, size or inode), so ``tessera pki revoke`` takes effect without a restart;
   * ``/tessera.v1.NodeService/*`` -> kind ``node``;
   * ``/tessera.v1.AnalystService/*`` -> kind ``analyst``; ``SubmitJob``/``CancelJob`` need role
     admin or analyst, ``ListAudit`` admin or auditor, the other methods any role;
   * ``/grpc.health.v1.Health/*`` and ``/grpc.reflection.*`` -> any valid certificate;
   * any other method -> ``PERMISSION_DENIED`` (fail closed: a new service must be added here).

Every refusal is one structured log line, ``auth.refused method=... peer=... kind=... serial=...
reason=...`` (the same fields in ``extra``); never key material or certificate bytes. Servicers
read the caller with ``tessera.core.pki.peer_identity(context)`` (cached).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from tessera.core.errors import AuthError, PkiError
from tessera.core.pki import identity_from_pem, load_certificate, load_revoked_serials
from tessera.core.types import PeerIdentity
from tessera.server.aio_wrap import wrap_handler

_NODE_SERVICE = "/tessera.v1.NodeService/"
_ANALYST_SERVICE = "/tessera.v1.AnalystService/"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_ANY_ROLE = frozenset({"admin", "analyst", "auditor"})
_ANALYST_ROLES: dict[str, frozenset[str]] = {
    "SubmitJob": frozenset({"admin", "analyst"}),
    "CancelJob": frozenset({"admin", "analyst"}),
    "ListAudit": frozenset({"admin", "auditor"}),
}


@dataclass(frozen=True, slots=True)
class AccessRule:
    """``kind`` None = any valid certificate; ``roles`` applies to analysts only."""

    kind: str | None
    roles: frozenset[str] = _ANY_ROLE


def access_rule(method: str) -> AccessRule | None:
    """The rule for a full method name (``/package.Service/Method``); None = nobody may call it."""
    if method.startswith(_NODE_SERVICE):
        return AccessRule(kind="node")
    if method.startswith(_ANALYST_SERVICE):
        return AccessRule(kind="analyst", roles=_ANALYST_ROLES.get(method.rsplit("/", 1)[-1], _ANY_ROLE))
    if method.startswith(_OPEN_PREFIXES):
        return AccessRule(kind=None)
    return None


@dataclass(frozen=True, slots=True)
class _Refusal:
    code: grpc.StatusCode
    details: str  # one plain sentence for the caller
    reason: str  # short stable token for the log


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks revocation, kind and role of the caller's certificate inside every call.

    ``ca_path`` verifies the CRL's signature; ``crl_path`` None disables revocation checks (dev
    only). A CRL that is unreadable at construction raises ``PkiError``; one that becomes unreadable
    later is logged (``auth.crl_unreadable``) and the last good list stays in force, so a broken
    or forged file can never un-revoke a certificate.
    """

    def __init__(self, ca_path: Path, crl_path: Path | None, logger: logging.Logger) -> None:
        load_certificate(Path(ca_path), "CA certificate")  # fail at start-up, not at the first call
        self._ca_path = Path(ca_path)
        self._crl_path = None if crl_path is None else Path(crl_path)
        self._logger = logger
        self._lock = threading.Lock()
        self._crl_key: tuple[int, int, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        if self._crl_path is not None:
            self._crl_key = self._stat_key(self._crl_path)
            self._revoked = load_revoked_serials(self._crl_path, self._ca_path)

    @staticmethod
    def _stat_key(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def revoked_serials(self) -> frozenset[int]:
        """The serials currently refused; re-reads the CRL if the file changed since last time."""
        if self._crl_path is None:
            return frozenset()
        key = self._stat_key(self._crl_path)
        if key != self._crl_key:
            with self._lock:
                if key != self._crl_key:
                    try:
                        self._revoked = load_revoked_serials(self._crl_path, self._ca_path)
                    except PkiError as exc:
                        self._logger.error(
                            "auth.crl_unreadable path=%s reason=%s; keeping the last good list",
                            self._crl_path,
                            exc.code,
                            extra={"event": "auth.crl_unreadable", "crl_path": str(self._crl_path)},
                        )
                    self._crl_key = key
        return self._revoked

    def check(self, method: str, context: grpc.ServicerContext) -> PeerIdentity:
        """Return the caller's identity or abort the call (logging the refusal)."""
        identity, refusal = self._decide(method, context)
        if refusal is None and identity is not None:
            return identity
        refusal = refusal or _Refusal(grpc.StatusCode.INTERNAL, "authorisation failed", "internal")
        self._log_refusal(method, identity, refusal.reason)
        context.abort(refusal.code, refusal.details)
        raise AssertionError("context.abort returned")  # abort always raises

    async def check_async(self, method: str, context: grpc.aio.ServicerContext) -> PeerIdentity:
        """``check`` for grpc's asyncio server (whose ``abort`` is a coroutine)."""
        identity, refusal = self._decide(method, context)  # type: ignore[arg-type]
        if refusal is None and identity is not None:
            return identity
        refusal = refusal or _Refusal(grpc.StatusCode.INTERNAL, "authorisation failed", "internal")
        self._log_refusal(method, identity, refusal.reason)
        await context.abort(refusal.code, refusal.details)
        raise AssertionError("context.abort returned")  # abort always raises

    def _decide(
        self, method: str, context: grpc.ServicerContext
    ) -> tuple[PeerIdentity | None, _Refusal | None]:
        values = context.auth_context().get("x509_pem_cert") or []
        if len(values) != 1:
            return None, _Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required", "no_cert"
            )
        try:
            identity = identity_from_pem(bytes(values[0]))
        except AuthError:
            return None, _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate does not name a Tessera identity",
                "unknown_identity",
            )
        return identity, self._refusal(method, identity)

    def _refusal(self, method: str, identity: PeerIdentity) -> _Refusal | None:
        denied = grpc.StatusCode.PERMISSION_DENIED
        if identity.serial in self.revoked_serials():
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, "certificate revoked", "revoked")
        rule = access_rule(method)
        if rule is None:
            return _Refusal(denied, "this method is not open to any certificate", "unknown_method")
        if rule.kind is not None and identity.kind != rule.kind:
            sentence = f"this method is for {rule.kind} certificates, not {identity.kind} certificates"
            return _Refusal(denied, sentence, "wrong_kind")
        if rule.kind == "analyst" and identity.role not in rule.roles:
            allowed = " or ".join(sorted(rule.roles))
            return _Refusal(
                denied, f"this method needs the role {allowed}, not {identity.role}", "wrong_role"
            )
        return None

    def _log_refusal(self, method: str, identity: PeerIdentity | None, reason: str) -> None:
        name = identity.name if identity else "-"
        kind = identity.kind if identity else "-"
        serial = f"{identity.serial:x}" if identity else "-"
        self._logger.warning(
            "auth.refused method=%s peer=%s kind=%s serial=%s reason=%s",
            method,
            name,
            kind,
            serial,
            reason,
            extra={
                "event": "auth.refused",
                "rpc_method": method,
                "peer_name": name,
                "peer_kind": kind,
                "peer_serial": serial,
                "reason": reason,
            },
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        return _wrap(handler, handler_call_details.method, self.check)


class AioAuthInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """The same checks as ``AuthInterceptor``, for grpc's asyncio server (the coordinator's)."""

    def __init__(self, ca_path: Path, crl_path: Path | None, logger: logging.Logger) -> None:
        self.gate = AuthInterceptor(ca_path, crl_path, logger)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: gRPC answers UNIMPLEMENTED
        method, gate = handler_call_details.method, self.gate

        @contextlib.asynccontextmanager
        async def around(context: grpc.aio.ServicerContext, _streaming: bool) -> AsyncIterator[None]:
            await gate.check_async(method, context)
            yield

        return wrap_handler(handler, around)


def _wrap(
    handler: grpc.RpcMethodHandler,
    method: str,
    check: Callable[[str, grpc.ServicerContext], PeerIdentity],
) -> grpc.RpcMethodHandler:
    """Return a handler of the same cardinality whose behaviour runs ``check`` first."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(method, context)
            return uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
    if handler.unary_stream is not None:
        us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            check(method, context)
            yield from us(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codecs)
    if handler.stream_unary is not None:
        su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            check(method, context)
            return su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codecs)
    ss = handler.stream_stream

    def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        check(method, context)
        yield from ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codecs)
