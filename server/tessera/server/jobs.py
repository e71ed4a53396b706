"""The job service: plans rounds, hands tasks to nodes, collects answers, ends jobs.

Every state change is persisted before it is announced, so a coordinator that dies at any point
restarts into a consistent store: ``recover`` resumes jobs whose analysis can resume and fails the
others with a reason — a job is never silently lost.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from tessera.core import serde
from tessera.core.analyses import inventory
from tessera.core.analyses.registry import get_analysis
from tessera.core.errors import AuthError, Conflict, InvalidRequest, NotFound
from tessera.core.types import JobSpec, JobState, PeerIdentity, Stage, Veto
from tessera.server.clock import Clock
from tessera.server.notifier import Notifier
from tessera.server.store import JobRecord, NodeRecord, SqlStore, TaskRecord
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.coordinator.jobs")

HARD_MIN_PARTICIPANTS = 3  # with two nodes an aggregate reveals the other node's vector


class JobService:
    def __init__(
        self,
        store: SqlStore,
        *,
        clock: Clock,
        notifier: Notifier,
        stage_timeout: timedelta = timedelta(minutes=2),
        job_timeout: timedelta = timedelta(minutes=30),
    ) -> None:
        self.store = store
        self.clock = clock
        self.notifier = notifier
        self.stage_timeout = stage_timeout
        self.job_timeout = job_timeout
        # One coordinator process owns job transitions; the lock keeps concurrent answers from
        # racing to finish the same round.
        self._lock = threading.RLock()

    # -- analyst side ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, actor: PeerIdentity) -> JobRecord:
        info = get_analysis(spec.analysis)
        now = self.clock()
        if spec.deadline is not None and spec.deadline <= now:
            raise InvalidRequest("the job's deadline is already in the past")
        participants = self._plan_participants(spec, info.differentially_private, info.min_nodes)
        with self._lock:
            job = self.store.create_job(spec, submitted_by=actor.name, now=now)
            self.store.audit(
                actor=actor.name,
                role=actor.role or "",
                action="job.submit",
                now=now,
                job_id=job.job_id,
                outcome=f"accepted: {spec.analysis} on {len(participants)} node(s)",
            )
            job = self._start_round(job, participants, round_no=1, now=now)
        log.info("job submitted job=%s analysis=%s nodes=%d", job.job_id, spec.analysis, len(participants))
        return job

    def cancel(self, job_id: str, *, actor: PeerIdentity) -> JobRecord:
        with self._lock:
            job = self.store.get_job(job_id)
            if job.state.terminal:
                raise Conflict(f"job {job_id} has already ended ({job.state.value})")
            job = self.store.update_job(
                job_id,
                now=self.clock(),
                state=JobState.CANCELLED,
                status_detail=f"cancelled by {actor.name}",
                event=f"cancelled by {actor.name}",
            )
            self.store.audit(
                actor=actor.name, role=actor.role or "", action="job.cancel", now=self.clock(), job_id=job_id
            )
        self.notifier.notify()
        return job

    def _plan_participants(self, spec: JobSpec, dp: bool, min_nodes: int) -> tuple[str, ...]:
        enrolled = {n.node_id: n for n in self.store.list_nodes()}
        if spec.participants:
            unknown = [p for p in spec.participants if p not in enrolled]
            if unknown:
                raise InvalidRequest(f"these nodes have never enrolled: {', '.join(sorted(unknown))}")
            chosen = [enrolled[p] for p in spec.participants]
        else:
            chosen = list(enrolled.values())
        if not chosen:
            raise InvalidRequest("no node has enrolled with this coordinator yet")
        needed = max(min_nodes, spec.min_participants)
        if dp:
            needed = max(needed, HARD_MIN_PARTICIPANTS, *(n.policy.min_participants for n in chosen))
        # Refuse hopeless jobs early, from the policy summaries the nodes published; each node
        # still checks the job against its own policy and may veto.
        willing = [n for n in chosen if _summary_allows(n, spec)]
        if len(willing) < needed:
            raise Conflict(
                f"only {len(willing)} of {len(chosen)} node(s) allow analysis {spec.analysis!r} for purpose "
                f"{spec.purpose!r}, and at least {needed} are needed"
            )
        return tuple(sorted(n.node_id for n in chosen))

    # -- rounds ---------------------------------------------------------------------------------

    def _start_round(
        self, job: JobRecord, participants: Sequence[str], *, round_no: int, now: datetime
    ) -> JobRecord:
        stage = Stage.LOCAL_REPORT
        deadline = min(now + self.stage_timeout, job.spec.deadline or now + self.job_timeout)
        self.store.add_tasks(
            job.job_id, round=round_no, stage=stage, node_ids=participants, now=now, deadline=deadline
        )
        job = self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.RUNNING,
            round=round_no,
            participants=participants,
            status_detail=f"waiting for 0 of {len(participants)} node(s)",
            event=f"round {round_no}: asked {len(participants)} node(s)",
            stage=stage,
            expected=len(participants),
        )
        self.notifier.notify()
        return job

    # -- node side ------------------------------------------------------------------------------

    def task_for(self, node_id: str, *, task_id: str, job_id: str, round_no: int, stage: Stage) -> TaskRecord:
        """The open task a node's message answers; refuses messages bound to anything else."""
        try:
            task = self.store.get_task(task_id)
        except NotFound:
            raise InvalidRequest("the message names no task this coordinator issued") from None
        if task.node_id != node_id:
            raise AuthError("this task belongs to another node")
        if (task.job_id, task.round, task.stage) != (job_id, round_no, stage):
            raise InvalidRequest("the message is bound to a different job, round or stage than its task")
        return task

    def on_report(self, node_id: str, task: TaskRecord, answer: node_pb2.RoundMessage) -> bool:
        if answer.WhichOneof("body") != "inventory" or task.stage is not Stage.LOCAL_REPORT:
            raise InvalidRequest("this stage expects a local report")
        serde.inventory_from_pb(answer.inventory)  # validate before storing
        with self._lock:
            fresh = self.store.answer_task(task.task_id, answer=answer.inventory.SerializeToString())
            if fresh:
                self._advance(task.job_id)
        return fresh

    def on_veto(self, node_id: str, task: TaskRecord, veto: Veto) -> bool:
        veto = Veto(
            node_id=node_id,
            code=veto.code or "policy.violation",
            reason=veto.reason,
            policy_hash=veto.policy_hash,
        )
        with self._lock:
            fresh = self.store.answer_task(task.task_id, answer=None, veto=veto)
            if fresh:
                log.info("veto job=%s node=%s code=%s", task.job_id, node_id, veto.code)
                self._advance(task.job_id)
        return fresh

    def _advance(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job.state.terminal:
            return
        tasks = self.store.tasks_for(job_id, round=job.round)
        closed = [t for t in tasks if not t.state.open]
        now = self.clock()
        if len(closed) < len(tasks):
            self.store.update_job(
                job_id,
                now=now,
                status_detail=f"waiting for {len(tasks) - len(closed)} of {len(tasks)} node(s)",
                event=f"{len(closed)} of {len(tasks)} node(s) answered",
                stage=tasks[0].stage,
                done=len(closed),
                expected=len(tasks),
            )
        else:
            self._finish(job, tasks, now)
        self.notifier.notify()

    def _finish(self, job: JobRecord, tasks: Sequence[TaskRecord], now: datetime) -> None:
        vetoes = self.store.vetoes_for(job.job_id)
        reports = {
            t.node_id: serde.inventory_from_pb(node_pb2.InventoryReport.FromString(t.answer))
            for t in tasks
            if t.answer is not None
        }
        info = get_analysis(job.spec.analysis)
        if len(reports) < info.min_nodes:
            reasons = "; ".join(f"{v.node_id}: {v.reason}" for v in vetoes)
            self.store.update_job(
                job.job_id,
                now=now,
                state=JobState.FAILED,
                error=f"every node refused: {reasons}",
                status_detail="failed: every node refused",
                event="failed: every node refused",
            )
            return
        result = inventory.combine(reports, vetoes)
        self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.SUCCEEDED,
            result_json=json.dumps(result, sort_keys=True),
            status_detail=f"done: {len(reports)} report(s), {len(vetoes)} veto(es)",
            event=f"succeeded with {len(reports)} report(s) and {len(vetoes)} veto(es)",
        )
        log.info("job succeeded job=%s reports=%d vetoes=%d", job.job_id, len(reports), len(vetoes))

    # -- time and recovery ----------------------------------------------------------------------

    def tick(self) -> None:
        """Fail rounds whose deadline passed; called periodically by the server."""
        now = self.clock()
        with self._lock:
            for job in self.store.list_jobs(limit=1000, states=(JobState.RUNNING,)):
                late = [
                    t.node_id
                    for t in self.store.tasks_for(job.job_id, round=job.round)
                    if t.state.open and t.deadline is not None and t.deadline <= now
                ]
                if late:
                    reason = f"node(s) {', '.join(late)} did not answer round {job.round} before its deadline"
                    self.store.update_job(
                        job.job_id,
                        now=now,
                        state=JobState.FAILED,
                        error=reason,
                        status_detail=f"failed: {reason}",
                        event=f"failed: {reason}",
                    )
                    log.warning("job failed job=%s reason=deadline late_nodes=%d", job.job_id, len(late))
                    self.notifier.notify()

    def recover(self) -> None:
        """After a (re)start: resume what can resume, fail the rest with a reason."""
        now = self.clock()
        with self._lock:
            for job in self.store.list_jobs(limit=10000, states=(JobState.PENDING, JobState.RUNNING)):
                info = get_analysis(job.spec.analysis)
                if not info.resumable:
                    reason = (
                        f"the coordinator restarted during round {job.round}; "
                        "this analysis cannot resume safely"
                    )
                    self.store.update_job(
                        job.job_id,
                        now=now,
                        state=JobState.FAILED,
                        error=reason,
                        status_detail=f"failed: {reason}",
                        event=f"failed: {reason}",
                    )
                    log.warning("job failed after restart job=%s", job.job_id)
                    continue
                if job.state is JobState.PENDING:
                    self._start_round(
                        job,
                        job.participants or self._plan_participants(job.spec, False, 1),
                        round_no=1,
                        now=now,
                    )
                else:
                    # Open tasks stay in the store and are re-sent when each node reconnects; give
                    # them a fresh stage deadline since the outage was not the nodes' fault.
                    self.store.extend_open_tasks(job.job_id, deadline=now + self.stage_timeout)
                    self.store.update_job(job.job_id, now=now, event="coordinator restarted; job resumes")
                    self._advance(job.job_id)
                log.info("job resumed after restart job=%s", job.job_id)
        self.notifier.notify()

    # -- reads ----------------------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        return self.store.list_nodes()


def _summary_allows(node: NodeRecord, spec: JobSpec) -> bool:
    policy = node.policy
    if spec.analysis not in policy.allowed_analyses:
        return False
    return not (spec.purpose and spec.purpose not in policy.allowed_purposes)
