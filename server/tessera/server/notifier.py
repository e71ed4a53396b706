"""Wakes task streams and job watchers when the store changed, instead of tight polling.

Two kinds of waiter: job watchers follow the global version (every change); a node's task stream
follows its own version, which moves only when that node has new tasks (or on a broadcast such
as shutdown), so one node's answer no longer wakes every other node's stream to query the store.

Waiters are either threads (``wait``/``wait_node``, a ``threading.Condition``) or coroutines on an
asyncio loop (``wait_async``/``wait_node_async``): a coroutine parks an ``asyncio.Event`` here and
``notify`` — called from the job service's worker threads — sets it with
``loop.call_soon_threadsafe``, so an idle stream costs no thread, only a registered event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Event]

# Per-job versions kept; older ones (of jobs nobody waits on) are forgotten, or a coordinator
# that runs for months would keep one entry per job it ever ran.
MAX_JOB_VERSIONS = 4096


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0
        self._broadcasts = 0
        self._nodes: dict[str, int] = {}
        self._jobs: dict[str, int] = {}
        # The largest version forgotten: a job without an entry reads this, and a job's entry
        # restarts above it, so a version a watcher saw is never handed out again.
        self._forgotten = 0
        self._job_broadcasts = 0
        self._closed = False
        self._watchers: set[_Waiter] = set()  # coroutines following the global version
        self._job_waiters: dict[str, set[_Waiter]] = {}  # coroutines following one job
        self._node_waiters: dict[str, set[_Waiter]] = {}  # coroutines following one node

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def node_version(self, node_id: str) -> int:
        with self._cond:
            return self._node_version(node_id)

    def _node_version(self, node_id: str) -> int:
        return self._nodes.get(node_id, 0) + self._broadcasts

    def job_version(self, job_id: str) -> int:
        with self._cond:
            return self._job_version(job_id)

    def _job_version(self, job_id: str) -> int:
        return self._jobs.get(job_id, self._forgotten) + self._job_broadcasts

    def notify(self, nodes: Iterable[str] = (), *, job: str | None = None) -> None:
        """Something changed: wake the task streams of ``nodes`` and the watchers of ``job``
        (every watcher when ``job`` is None)."""
        with self._cond:
            self._version += 1
            wake = list(self._watchers)
            if job is None:
                self._job_broadcasts += 1
                for waiters in self._job_waiters.values():
                    wake.extend(waiters)
            else:
                self._jobs[job] = self._jobs.get(job, self._forgotten) + 1
                wake.extend(self._job_waiters.get(job, ()))
                if len(self._jobs) > MAX_JOB_VERSIONS:
                    self._forget_jobs()
            for node in nodes:
                self._nodes[node] = self._nodes.get(node, 0) + 1
                wake.extend(self._node_waiters.get(node, ()))
            self._cond.notify_all()
        _wake(wake)

    def _forget_jobs(self) -> None:
        """Drop the older half of the per-job versions, except jobs someone waits on now."""
        for job in list(self._jobs)[: MAX_JOB_VERSIONS // 2]:
            if job not in self._job_waiters:
                self._forgotten = max(self._forgotten, self._jobs.pop(job))

    def broadcast(self) -> None:
        """Wake every watcher and every node's task stream (e.g. a node re-enrolled)."""
        with self._cond:
            self._version += 1
            self._broadcasts += 1
            self._job_broadcasts += 1
            wake = self._all_waiters()
            self._cond.notify_all()
        _wake(wake)

    def close(self) -> None:
        """Wake every waiter for good (server shutdown)."""
        with self._cond:
            self._closed = True
            self._version += 1
            self._broadcasts += 1
            self._job_broadcasts += 1
            wake = self._all_waiters()
            self._cond.notify_all()
        _wake(wake)

    def _all_waiters(self) -> list[_Waiter]:
        out = list(self._watchers)
        for waiters in (*self._node_waiters.values(), *self._job_waiters.values()):
            out.extend(waiters)
        return out

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the global version moves past ``seen`` or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != seen or self._closed, timeout=timeout)
            return self._version

    def wait_node(self, node_id: str, seen: int, timeout: float) -> int:
        """Block until ``node_id``'s version moves past ``seen`` or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait_for(lambda: self._node_version(node_id) != seen or self._closed, timeout=timeout)
            return self._node_version(node_id)

    async def wait_async(self, seen: int, timeout: float) -> int:
        """``wait`` for a coroutine: parks an event, holds no thread."""
        await self._park(self._watchers_of, None, seen, timeout)
        return self.version

    async def wait_job_async(self, job_id: str, seen: int, timeout: float) -> int:
        """Until ``job_id``'s watchers are notified (or a broadcast) past ``seen``, or ``timeout``."""
        await self._park(self._job_waiters_of, job_id, seen, timeout)
        return self.job_version(job_id)

    async def wait_node_async(self, node_id: str, seen: int, timeout: float) -> int:
        """``wait_node`` for a coroutine: parks an event, holds no thread."""
        await self._park(self._node_waiters_of, node_id, seen, timeout)
        return self.node_version(node_id)

    def _watchers_of(self, _key: str | None) -> tuple[set[_Waiter], int]:
        return self._watchers, self._version

    def _job_waiters_of(self, key: str | None) -> tuple[set[_Waiter], int]:
        assert key is not None
        return self._job_waiters.setdefault(key, set()), self._job_version(key)

    def _node_waiters_of(self, key: str | None) -> tuple[set[_Waiter], int]:
        assert key is not None
        return self._node_waiters.setdefault(key, set()), self._node_version(key)

    async def _park(
        self,
        slot: Callable[[str | None], tuple[set[_Waiter], int]],
        key: str | None,
        seen: int,
        timeout: float,
    ) -> None:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            waiters, version = slot(key)
            if version != seen or self._closed:
                self._drop_empty(key)
                return
            waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            with self._cond:
                waiters.discard(waiter)
                self._drop_empty(key)

    def _drop_empty(self, key: str | None) -> None:
        if key is None:
            return
        for table in (self._node_waiters, self._job_waiters):
            if key in table and not table[key]:
                del table[key]

    def waiting(self) -> int:
        """Coroutines parked right now (watchers and task streams); for tests and metrics."""
        with self._cond:
            return len(self._all_waiters())


def _wake(waiters: Iterable[_Waiter]) -> None:
    for loop, event in waiters:
        # The loop may already be closed at shutdown: nobody is left to wake then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)
