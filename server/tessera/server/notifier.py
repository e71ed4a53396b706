"""Wakes task streams and job watchers when the store changed, instead of tight polling.

Two kinds of waiter: job watchers follow the global version (every change); a node's task stream
follows its own version, which moves only when that node has new tasks (or on a broadcast such
as shutdown), so one node's answer no longer wakes every other node's stream to query the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Notifier:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0
        self._broadcasts = 0
        self._nodes: dict[str, int] = {}
        self._closed = False

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

    def notify(self, nodes: Iterable[str] = ()) -> None:
        """Something changed: wake every watcher, and the task streams of ``nodes``."""
        with self._cond:
            self._version += 1
            for node in nodes:
                self._nodes[node] = self._nodes.get(node, 0) + 1
            self._cond.notify_all()

    def broadcast(self) -> None:
        """Wake every watcher and every node's task stream (e.g. a node re-enrolled)."""
        with self._cond:
            self._version += 1
            self._broadcasts += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiter for good (server shutdown)."""
        with self._cond:
            self._closed = True
            self._version += 1
            self._broadcasts += 1
            self._cond.notify_all()

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
