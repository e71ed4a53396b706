"""Wrap any asyncio gRPC method handler in an async context manager, keeping its cardinality.

The coordinator's interceptors (auth, per-peer limits, error boundary) each need to run code
around every call with the call's context; ``wrap_handler`` does it once for all four
cardinalities and both styles of streaming handler (async generator, or coroutine that writes
with ``context.write`` as grpc's asyncio health servicer does).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

# around(context, streaming) -> an async context manager entered for the call's whole life.
Around = Callable[[grpc.aio.ServicerContext, bool], AbstractAsyncContextManager[Any]]


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None or handler.stream_unary is not None:
        streaming_in = handler.unary_unary is None
        inner = handler.stream_unary if streaming_in else handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(context, False):
                return await maybe_await(inner(request, context))

        make = grpc.stream_unary_rpc_method_handler if streaming_in else grpc.unary_unary_rpc_method_handler
        return make(unary, **codecs)

    streaming_in = handler.unary_stream is None
    inner_s = handler.stream_stream if streaming_in else handler.unary_stream
    make_s = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler
    if inspect.isasyncgenfunction(inner_s):

        async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(context, True):
                async for item in inner_s(request, context):
                    yield item

        return make_s(stream_gen, **codecs)

    async def stream_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
        async with around(context, True):
            await maybe_await(inner_s(request, context))

    return make_s(stream_writer, **codecs)
