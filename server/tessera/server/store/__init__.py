"""The coordinator's store: nodes, jobs, tasks, round messages, events and the audit log."""

from tessera.server.store.records import (
    ROUND_CHARGED,
    EventRecord,
    JobRecord,
    NodeRecord,
    TaskRecord,
    TaskState,
)
from tessera.server.store.sql import SqlStore, open_store

__all__ = [
    "ROUND_CHARGED",
    "EventRecord",
    "JobRecord",
    "NodeRecord",
    "SqlStore",
    "TaskRecord",
    "TaskState",
    "open_store",
]
