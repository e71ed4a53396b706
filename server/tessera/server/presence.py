"""Heartbeats in memory: a node's last heartbeat and policy hash, written to the store in batches.

A thousand nodes beating every two seconds would be 500 database writes a second, one commit
each; here a heartbeat is a dict update on the event loop (no thread, no I/O) and ``flush``,
called by the coordinator's ticker before every tick, writes the last-seen times of the nodes
that beat since the previous flush in one transaction. The store therefore lags by at most one
tick, well under the node-silence window that decides a node has dropped.

Open task streams are counted per node too: a node whose last stream closed (its process died,
its connection broke) and that has not opened another within a short grace is gone, which the
ticker tells the job service, so a stage need not wait out the heartbeat silence for it.

One node name is one process: the node process sends a random instance id with its enrolment
and its task stream, and a second process under a name whose streams are open from another
instance is refused (both would otherwise receive every task of the node). A reconnect of the
same process is not a second process, even while its broken stream is not yet noticed.

The policy hash of each node is cached from its enrolment (or read once from the store after a
restart), so a heartbeat can tell a node whose policy changed to enrol again without a query.
"""

from __future__ import annotations

import threading
from datetime import datetime

from tessera.server.store import SqlStore


class Presence:
    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._policy: dict[str, str] = {}  # node -> policy hash it enrolled with
        self._dirty: dict[str, datetime] = {}  # node -> last heartbeat not yet in the store
        self._streams: dict[str, int] = {}  # node -> open task streams
        self._closed: dict[str, datetime] = {}  # node -> when its last open stream closed
        self._owner: dict[str, str] = {}  # node -> instance id of the process its streams serve

    def enrolled(self, node_id: str, policy_hash: str) -> None:
        with self._lock:
            self._policy[node_id] = policy_hash

    def beat(self, node_id: str, policy_hash: str, now: datetime) -> bool | None:
        """Record a heartbeat: True if the node is known with this policy (or sent none), False if
        its policy changed, None if this process has not seen it enrol (ask ``beat_from_store``)."""
        with self._lock:
            known = self._policy.get(node_id)
            if known is None:
                return None
            self._dirty[node_id] = now
            return not policy_hash or policy_hash == known

    def beat_from_store(self, node_id: str, policy_hash: str, now: datetime) -> bool:
        """The first heartbeat of a node this process has not seen enrol (e.g. after a restart)."""
        if not self.store.touch_node(node_id, now=now):
            return False
        known = self.store.get_node(node_id).policy.policy_hash
        self.enrolled(node_id, known)
        return not policy_hash or policy_hash == known

    def taken(self, node_id: str, instance: str) -> bool:
        """Whether another process (instance) of this node has a task stream open now."""
        with self._lock:
            return node_id in self._streams and self._owner.get(node_id) != instance

    def stream_opened(self, node_id: str, instance: str = "") -> bool:
        """Count an open task stream; False (nothing counted) if another instance holds the name."""
        with self._lock:
            if node_id in self._streams and self._owner.get(node_id) != instance:
                return False
            self._owner[node_id] = instance
            self._streams[node_id] = self._streams.get(node_id, 0) + 1
            self._closed.pop(node_id, None)
            return True

    def stream_closed(self, node_id: str, now: datetime) -> None:
        with self._lock:
            left = self._streams.get(node_id, 0) - 1
            if left > 0:
                self._streams[node_id] = left
            else:
                self._streams.pop(node_id, None)
                self._owner.pop(node_id, None)
                self._closed[node_id] = now

    def connected(self, node_id: str) -> bool:
        """Whether the node has a task stream open now."""
        with self._lock:
            return node_id in self._streams

    def left(self, node_id: str) -> bool:
        """Whether the node's last task stream closed and it has opened none since."""
        with self._lock:
            return node_id in self._closed

    def disconnected(self, before: datetime) -> frozenset[str]:
        """Nodes whose last task stream closed before ``before`` and that opened none since."""
        with self._lock:
            return frozenset(node for node, at in self._closed.items() if at < before)

    def flush(self) -> int:
        """Write the pending last-seen times in one transaction; returns how many."""
        with self._lock:
            pending, self._dirty = self._dirty, {}
        if pending:
            try:
                self.store.touch_nodes(pending)
            except Exception:
                with self._lock:  # keep them for the next flush (newer beats win)
                    for node, at in pending.items():
                        self._dirty.setdefault(node, at)
                raise
        return len(pending)
