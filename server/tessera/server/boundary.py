"""The last line of defence: an unexpected exception inside a call becomes INTERNAL with a fixed
sentence. Without it gRPC sends ``str(exception)`` to the caller, which may carry SQL, paths or
values; here only the exception's type reaches the log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from grpc import aio

from tessera.core.errors import TesseraError
from tessera.core.grpc_status import CODE_KEY, status_for
from tessera.server.aio_wrap import wrap_handler

_SENTENCE = "internal error in the coordinator; the operator can find it in the coordinator's log"


def _contain(method: str, context: grpc.ServicerContext, exc: Exception, log: logging.Logger) -> None:
    if context.code() is not None:
        raise exc  # context.abort() already chose the status: let gRPC send it
    log.error("call failed method=%s error=%s", method, type(exc).__name__)
    context.abort(grpc.StatusCode.INTERNAL, _SENTENCE)


class ErrorBoundary(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler
        method, log = details.method, self._log
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner_uu(request, context)
                except Exception as exc:
                    _contain(method, context, exc, log)
                    raise

            return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from inner_us(request, context)
            except Exception as exc:
                _contain(method, context, exc, log)
                raise

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codecs)


class AioErrorBoundary(aio.ServerInterceptor):  # type: ignore[misc]
    """The asyncio server's boundary, and the one place its servicers' errors become a status.

    Servicers raise ``TesseraError``; here it becomes its gRPC status, its plain sentence and its
    stable code in the trailing metadata (``tessera.core.grpc_status``). Anything else becomes
    INTERNAL with a fixed sentence, only the exception's type going to the log.
    """

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method, log = details.method, self._log

        @contextlib.asynccontextmanager
        async def around(context: grpc.aio.ServicerContext, _streaming: bool) -> AsyncIterator[None]:
            try:
                yield
            except aio.AbortError:
                raise  # context.abort() already chose the status
            except TesseraError as exc:
                context.set_trailing_metadata(((CODE_KEY, exc.code),))
                await context.abort(status_for(exc), exc.message)
            except Exception as exc:
                log.error("call failed method=%s error=%s", method, type(exc).__name__)
                await context.abort(grpc.StatusCode.INTERNAL, _SENTENCE)

        return wrap_handler(handler, around)
