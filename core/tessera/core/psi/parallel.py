"""Scalar multiplications of large lists spread over the machine's cores.

A million elements cost a million libsodium scalar multiplications (~0.1 ms each): one core is
not enough, and the GIL is held between ctypes calls, so threads would not help. Work is cut into
contiguous slices and sent to a process pool (``forkserver``: a node process runs gRPC threads,
and forking such a process is unsafe); results come back in order. Small lists stay in process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import TypeVar

from tessera.core.psi import group

PARALLEL_FROM = 20_000  # below this a pool's start and pickling cost more than they save
T = TypeVar("T")


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class Blinder:
    """Hashes and blinds lists, in a pool of ``workers`` processes when they are large."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else max(1, workers)
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Blinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hash_and_blind(self, scalar: bytes, kind: str, values: Sequence[str]) -> bytes:
        items = list(values)
        if self.workers == 1 or len(items) < PARALLEL_FROM:
            return group.hash_and_blind(scalar, kind, items)
        parts = _slices(len(items), self.workers * 4)
        return self._map(group.hash_and_blind, [(scalar, kind, items[a:b]) for a, b in parts])

    def hash(self, kind: str, values: Sequence[str]) -> bytes:
        items = list(values)
        if self.workers == 1 or len(items) < PARALLEL_FROM:
            return group.hash_many(kind, items)
        parts = _slices(len(items), self.workers * 4)
        return self._map(group.hash_many, [(kind, items[a:b]) for a, b in parts])

    def blind(self, scalar: bytes, elements: bytes) -> bytes:
        n = len(elements) // group.ELEMENT_BYTES
        if self.workers == 1 or n < PARALLEL_FROM:
            return group.blind(scalar, elements)
        size = group.ELEMENT_BYTES
        parts = _slices(n, self.workers * 4)
        return self._map(group.blind, [(scalar, elements[a * size : b * size]) for a, b in parts])

    def _map(self, fn: Callable[..., bytes], calls: list[tuple[object, ...]]) -> bytes:
        pool = self._executor()
        futures = [pool.submit(fn, *args) for args in calls]
        return b"".join(f.result() for f in futures)


def _slices(n: int, pieces: int) -> list[tuple[int, int]]:
    step = max(1, -(-n // pieces))
    return [(a, min(n, a + step)) for a in range(0, n, step)]
