"""Tessera errors <-> gRPC status codes, in one place for both directions.

The server aborts with the error's plain sentence as details and its stable code in the
``tessera-error-code`` trailing metadata; the client turns an RpcError back into the same class.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from tessera.core import errors as e

_TO_STATUS: tuple[tuple[type[e.TesseraError], grpc.StatusCode], ...] = (
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (e.PolicyError, grpc.StatusCode.INVALID_ARGUMENT),
    (e.PolicyViolation, grpc.StatusCode.FAILED_PRECONDITION),
    (e.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (e.AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (e.PkiError, grpc.StatusCode.UNAUTHENTICATED),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.CryptoError, grpc.StatusCode.INVALID_ARGUMENT),
)
_FROM_STATUS: dict[grpc.StatusCode, type[e.TesseraError]] = {
    grpc.StatusCode.NOT_FOUND: e.NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: e.InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: e.Conflict,
    grpc.StatusCode.PERMISSION_DENIED: e.AuthError,
    grpc.StatusCode.UNAUTHENTICATED: e.AuthError,
    grpc.StatusCode.UNAVAILABLE: e.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: e.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: e.InvalidRequest,
}
CODE_KEY = "tessera-error-code"
# Every channel and server of Tessera: gRPC's default 4 MB cap is too small for a masked vector.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Nodes ping an idle connection this often (HTTP/2 keepalive) to notice a dead coordinator. The
# coordinator must accept pings at least this often: with grpc's default (one every 5 minutes
# while it sends nothing) it answers a node whose stream waited quietly for a minute with GOAWAY
# "too_many_pings", which closes its task stream and, after the stream grace, drops the node
# from the stage it waits on.
KEEPALIVE_MS = 20_000


def status_name(exc: BaseException) -> str | None:
    """The gRPC status name of a failed call (``DEADLINE_EXCEEDED``…), or None if it is not one."""
    code = getattr(exc, "code", None)
    status = code() if isinstance(exc, grpc.RpcError) and callable(code) else None
    return status.name if isinstance(status, grpc.StatusCode) else None


def status_for(error: e.TesseraError) -> grpc.StatusCode:
    for cls, status in _TO_STATUS:
        if isinstance(error, cls):
            return status
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: e.TesseraError) -> NoReturn:
    """End the call with the error's status and stable code; never returns."""
    context.set_trailing_metadata(((CODE_KEY, error.code),))
    context.abort(status_for(error), error.message)
    raise AssertionError("grpc's abort returned")  # grpc raises inside abort


def from_rpc_error(error: grpc.RpcError, *, target: str) -> e.TesseraError:
    """Turn a client-side RpcError into one Tessera error with a sentence a user can act on."""
    status = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (error.details() if isinstance(error, grpc.Call) else "") or ""
    code = None
    if isinstance(error, grpc.Call):
        for key, value in error.trailing_metadata() or ():
            if key == CODE_KEY:
                code = str(value)
    if status == grpc.StatusCode.UNAVAILABLE and not code:
        return e.Unavailable(
            f"cannot reach the coordinator at {target} (is it running, and do both sides trust the "
            "same consortium CA?)"
        )
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return e.Unavailable(f"the coordinator at {target} did not answer in time")
    cls = _FROM_STATUS.get(status, e.TesseraError)
    return cls(details or f"the coordinator refused the call ({status.name.lower()})", code=code)
