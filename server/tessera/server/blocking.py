"""Blocking work (the job service, the store) called from the event loop on a bounded pool.

The loop must never wait on the database or on the job service's locks; ``await run(fn, ...)``
hands the call to one of ``workers`` threads and parks the coroutine until it returns. The pool
is bounded, so a flood of calls queues instead of multiplying threads; the per-peer limits keep
any one caller from filling that queue.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Blocking:
    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("the blocking pool needs at least one worker")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="coord-work")

    async def __call__(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        call: Callable[[], R] = functools.partial(fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
