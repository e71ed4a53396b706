"""The open stage of a DP job: its tasks held in memory while it runs, written to the store once.

A secure-aggregation stage's tasks live only as long as the coordinator process: after a restart
the job re-keys in a fresh epoch and never re-sends them. So while a stage is open its tasks, their
inputs and who answered stay here (one node's answer costs no database transaction), and the stage
is written to the store in one batch when it closes (``closed_records``). What must outlive a
crash is written at once by the job service: a masked input (its node was charged) and a veto.

Stage inputs are never written: a share-keys roster or an advertise-keys set-up names every
participant, and at a thousand nodes one per task would be hundreds of megabytes per epoch. Every node of a
stage with a common input shares the one ``bytes`` object held here.

Reads come from the event loop (delivery, task look-up) and writes from the job service's worker
threads under the job's lock; each read or write is a single dict operation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from tessera.core.types import Stage
from tessera.server.store.records import TaskRecord, TaskState, task_id_of


@dataclass(eq=False)
class OpenStage:
    job_id: str
    round: int
    epoch: int
    stage: Stage
    deadline: datetime | None
    created_at: datetime
    inputs: Mapping[str, bytes]  # node -> its stage input
    round_input: bytes
    states: dict[str, TaskState] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)  # nodes whose task row is in the store already
    ids: dict[str, str] = field(default_factory=dict)  # task id -> node
    still_open: int = 0  # kept as tasks close: counted on every answer, so never recounted

    def __post_init__(self) -> None:
        for node in self.inputs:
            self.states[node] = TaskState.PENDING
            self.ids[task_id_of(self.job_id, self.epoch, self.round, self.stage, node)] = node
        self.still_open = len(self.states)

    def node_of(self, task_id: str) -> str | None:
        return self.ids.get(task_id)

    def is_open(self, node: str) -> bool:
        state = self.states.get(node)
        return state is not None and state.open

    @property
    def waiting(self) -> set[str]:
        return {n for n, s in list(self.states.items()) if s.open}

    def counts(self) -> tuple[int, int]:
        """(closed, total) tasks of the stage."""
        total = len(self.states)
        return total - self.still_open, total

    def close_task(self, node: str, state: TaskState) -> bool:
        """Answer, veto or expire one node's task; False if it was already closed."""
        if not self.is_open(node) or state.open:
            return False
        self.states[node] = state
        self.still_open -= 1
        return True

    def expire(self, nodes: Iterable[str]) -> None:
        for node in nodes:
            self.close_task(node, TaskState.EXPIRED)

    def record(self, node: str, *, payload: bool = False) -> TaskRecord:
        return TaskRecord(
            task_id=task_id_of(self.job_id, self.epoch, self.round, self.stage, node),
            job_id=self.job_id,
            node_id=node,
            round=self.round,
            epoch=self.epoch,
            stage=self.stage,
            state=self.states[node],
            stage_input=self.inputs[node] if payload else b"",
            round_input=self.round_input if payload else b"",
            deadline=self.deadline,
        )

    def records(self) -> list[TaskRecord]:
        return [self.record(n) for n in sorted(self.states)]

    def closed_records(self) -> list[TaskRecord]:
        """Every task not yet in the store, those still open as expired (the stage is closing)."""
        self.expire(self.waiting)
        unwritten = [n for n in sorted(self.states) if n not in self.written]
        self.written.update(unwritten)
        return [self.record(n) for n in unwritten]
