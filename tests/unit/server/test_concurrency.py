"""The coordinator's concurrency pieces alone: per-peer limits, asyncio waiters, per-job locks."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tessera.server.jobs import JobLocks
from tessera.server.limits import LimitExceeded, PeerLimitConfig, PeerLimits
from tessera.server.notifier import Notifier


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_token_bucket_refills_at_the_rate_per_peer() -> None:
    clock = _Clock()
    limits = PeerLimits(PeerLimitConfig(calls_per_second=2.0, burst=3), clock=clock)
    for _ in range(3):
        limits.take_call("node:a")
    with pytest.raises(LimitExceeded) as info:
        limits.take_call("node:a")
    assert info.value.reason == "call_rate"
    limits.take_call("node:b")  # another peer has its own bucket
    clock.now += 0.5  # one token back at 2 per second
    limits.take_call("node:a")
    with pytest.raises(LimitExceeded):
        limits.take_call("node:a")
    clock.now += 100  # never more than the burst
    for _ in range(3):
        limits.take_call("node:a")
    with pytest.raises(LimitExceeded):
        limits.take_call("node:a")


def test_streams_are_counted_per_peer_and_freed() -> None:
    limits = PeerLimits(PeerLimitConfig(streams_per_peer=2))
    limits.open_stream("analyst:x")
    limits.open_stream("analyst:x")
    with pytest.raises(LimitExceeded) as info:
        limits.open_stream("analyst:x")
    assert info.value.reason == "streams"
    limits.open_stream("analyst:y")
    limits.close_stream("analyst:x")
    limits.open_stream("analyst:x")
    assert (limits.open_streams("analyst:x"), limits.open_streams("analyst:y")) == (2, 1)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        PeerLimitConfig(streams_per_peer=0)


def test_a_node_waiter_wakes_for_its_own_tasks_only() -> None:
    notifier = Notifier()

    async def scenario() -> None:
        seen_a, seen_b = notifier.node_version("a"), notifier.node_version("b")
        waiter_a = asyncio.create_task(notifier.wait_node_async("a", seen_a, timeout=30))
        waiter_b = asyncio.create_task(notifier.wait_node_async("b", seen_b, timeout=30))
        while notifier.waiting() < 2:
            await asyncio.sleep(0)
        # From another thread, as the job service's workers do.
        thread = threading.Thread(target=notifier.notify, args=(["a"],))
        thread.start()
        assert await asyncio.wait_for(waiter_a, 5) != seen_a
        thread.join()
        assert not waiter_b.done()
        notifier.close()  # wakes everyone for good
        await asyncio.wait_for(waiter_b, 5)
        assert notifier.waiting() == 0

    asyncio.run(scenario())


def test_a_job_watcher_wakes_for_its_job_and_for_broadcasts() -> None:
    notifier = Notifier()

    async def scenario() -> None:
        seen = notifier.job_version("j1")
        waiter = asyncio.create_task(notifier.wait_job_async("j1", seen, timeout=30))
        while notifier.waiting() < 1:
            await asyncio.sleep(0)
        notifier.notify(job="j2")
        await asyncio.sleep(0.05)
        assert not waiter.done()
        notifier.notify(job="j1")
        assert await asyncio.wait_for(waiter, 5) != seen
        seen = notifier.job_version("j1")
        waiter = asyncio.create_task(notifier.wait_job_async("j1", seen, timeout=30))
        while notifier.waiting() < 1:
            await asyncio.sleep(0)
        notifier.notify()  # no job named: every watcher
        assert await asyncio.wait_for(waiter, 5) != seen

    asyncio.run(scenario())


def test_a_waiter_returns_at_once_when_it_is_already_behind() -> None:
    notifier = Notifier()
    notifier.notify(["a"], job="j")

    async def scenario() -> tuple[int, int]:
        node = await asyncio.wait_for(notifier.wait_node_async("a", 0, timeout=30), 1)
        job = await asyncio.wait_for(notifier.wait_job_async("j", 0, timeout=30), 1)
        return node, job

    assert asyncio.run(scenario()) == (1, 1)
    assert notifier.waiting() == 0


def test_jobs_have_their_own_locks() -> None:
    locks = JobLocks()
    inside_b = threading.Event()

    def hold_b() -> None:
        with locks.hold("b"):
            inside_b.set()

    with locks.hold("a"):
        thread = threading.Thread(target=hold_b)
        thread.start()
        # With one lock for all jobs this would wait forever.
        assert inside_b.wait(5)
        thread.join(5)
        with locks.hold("a"):  # re-entrant for the same job
            pass
    assert len(locks) == 0  # dropped when nobody holds or waits


def test_per_job_versions_stay_bounded_and_never_repeat_a_version_a_watcher_saw() -> None:
    from tessera.server.notifier import MAX_JOB_VERSIONS

    notifier = Notifier()
    notifier.notify(job="old")
    notifier.notify(job="old")
    seen_old = notifier.job_version("old")  # a watcher between two looks at its job
    notifier.notify(job="busy")
    for i in range(3 * MAX_JOB_VERSIONS):
        notifier.notify(job=f"job-{i}")
    assert len(notifier._jobs) <= MAX_JOB_VERSIONS
    # "old" was forgotten: its version now reads differently or moves on its next change.
    before = notifier.job_version("old")
    notifier.notify(job="old")
    assert notifier.job_version("old") not in (seen_old, before)

    async def scenario() -> None:
        # A job somebody waits on is never forgotten: the waiter is woken by its next change.
        seen = notifier.job_version("watched")
        waiter = asyncio.create_task(notifier.wait_job_async("watched", seen, timeout=30))
        while notifier.waiting() < 1:
            await asyncio.sleep(0)
        for i in range(2 * MAX_JOB_VERSIONS):
            notifier.notify(job=f"more-{i}")
        assert not waiter.done()
        notifier.notify(job="watched")
        assert await asyncio.wait_for(waiter, 5) != seen

    asyncio.run(scenario())
