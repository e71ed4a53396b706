"""The job service: plans jobs, hands tasks to nodes, collects answers, ends jobs.

Every state change is persisted before it is announced, so a coordinator that dies at any point
restarts into a consistent store: ``recover`` resumes what can resume and fails the rest with a
reason — a job is never silently lost.

Two kinds of job: a *report* job (``inventory``) asks every node for one local report; a *DP*
job runs its analysis' program of rounds (``dp_job.DpJob``), each round one secure-aggregation
sum in which the coordinator learns only the noisy total of the nodes' vectors. A DP job is
validated whole (participants, quorum, the first round's plan) before it is created, so a job
the coordinator refuses never exists.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from tessera.core import serde
from tessera.core.analyses import inventory, overlap
from tessera.core.analyses.program import rho_total
from tessera.core.analyses.registry import get_analysis, get_program
from tessera.core.dp import rho_to_epsilon
from tessera.core.errors import AuthError, Conflict, InvalidRequest, NotFound, TesseraError
from tessera.core.rounds import analysis_spec
from tessera.core.types import JobSpec, JobState, PeerIdentity, Stage, Veto
from tessera.server.clock import Clock
from tessera.server.dp_job import DpJob, DriverState, RoundDone, Tasks
from tessera.server.job_planning import drops_text, initial_state, plan_participants
from tessera.server.notifier import Notifier
from tessera.server.open_stage import OpenStage
from tessera.server.overlap_job import OverlapRelay
from tessera.server.store import ROUND_CHARGED, JobRecord, NodeRecord, SqlStore, TaskRecord, TaskState
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.coordinator.jobs")

END_CODEC = "job/end"
PROGRESS_EVERY_S = 0.5  # at most one "k of n answered" event per job this often
# The ticker runs every 0.1 s; the store's list of running jobs is read at most this often. DP and
# overlap jobs, whose stages wait on live nodes, are in memory and looked at on every tick.
LIST_RUNNING_EVERY = timedelta(seconds=1)


class JobService:
    def __init__(
        self,
        store: SqlStore,
        *,
        clock: Clock,
        notifier: Notifier,
        stage_timeout: timedelta = timedelta(minutes=2),
        job_timeout: timedelta = timedelta(minutes=30),
        node_silence: timedelta = timedelta(seconds=10),
        connected: Callable[[str], bool] = lambda node_id: True,
        left: Callable[[str], bool] = lambda node_id: False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.notifier = notifier
        self.stage_timeout = stage_timeout
        self.job_timeout = job_timeout
        # A node silent (no heartbeat, no stream) this long while a stage waits for it has dropped:
        # the stage closes without it instead of waiting out its whole deadline.
        self.node_silence = node_silence
        # Whether a node has a task stream open now (the server's presence); a node that dropped
        # rejoins a job only once it is connected again.
        self.connected = connected
        # Whether a node's task stream closed and it has not come back (it is offline now, even
        # while its last heartbeat is recent): such a node is not chosen for a new job.
        self.left = left
        # One coordinator process owns job transitions; a lock per job keeps concurrent answers
        # from racing to finish the same stage, while answers of different jobs go side by side.
        self._locks = JobLocks()
        self._dp: dict[str, DpJob] = {}
        self._progress: dict[str, float] = {}  # job -> when its last progress event was written
        self._progress_owed: set[str] = set()  # jobs whose latest progress is not written yet
        self._up_since = clock()  # when this process started (``recover`` moves it)
        self._running: tuple[str, ...] = ()  # running jobs as last listed from the store
        self._listed_at: datetime | None = None  # None: list them again at the next tick
        self._store_versions: dict[str, int] = {}  # node -> moves when store tasks are added
        self._versions_lock = threading.Lock()
        self.overlap = OverlapRelay(self)  # overlap jobs relay PSI lists (overlap_job)

    # -- analyst side ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, actor: PeerIdentity) -> JobRecord:
        """Validate the whole job first (a refused job is never created), then create and start it."""
        if spec.analysis == overlap.INFO.name:
            return self.overlap.submit(spec, actor=actor)
        info = get_analysis(spec.analysis)
        now = self.clock()
        if spec.deadline is not None and spec.deadline <= now:
            raise InvalidRequest("the job's deadline is already in the past")
        nodes = plan_participants(self.store, spec, info, now=now, online=self._online)
        state = initial_state(spec, nodes) if info.differentially_private else None
        job = self.store.create_job(spec, submitted_by=actor.name, now=now)
        with self._locks.hold(job.job_id):
            plan_text = f"{spec.analysis} on {len(nodes)} node(s)"
            if state is not None:
                tolerated = len(nodes) - state.threshold
                plan_text += f", quorum {state.threshold} ({drops_text(tolerated)})"
            self.store.audit(
                actor=actor.name,
                role=actor.role or "",
                action="job.submit",
                now=now,
                job_id=job.job_id,
                outcome=f"accepted: {plan_text}",
            )
            if state is not None:
                job = self._start_dp_job(job, nodes, state, now=now)
            else:
                job = self._start_report_round(job, [n.node_id for n in nodes], now=now)
        self._listed_at = None  # the next tick sees the new job
        log.info("job submitted job=%s analysis=%s nodes=%d", job.job_id, spec.analysis, len(nodes))
        return job

    def cancel(self, job_id: str, *, actor: PeerIdentity) -> JobRecord:
        with self._locks.hold(job_id):
            job = self.store.get_job(job_id)
            if actor.role != "admin" and actor.name != job.submitted_by:
                # Refused attempts are audited too: someone tried to stop another analyst's work.
                self.store.audit(
                    actor=actor.name,
                    role=actor.role or "",
                    action="job.cancel",
                    now=self.clock(),
                    job_id=job_id,
                    outcome="refused: not the submitter",
                )
                raise AuthError(f"only the analyst who submitted job {job_id} or an admin may cancel it")
            if job.state.terminal:
                raise Conflict(f"job {job_id} has already ended ({job.state.value})")
            reason = f"cancelled by {actor.name}; {self._charged_text(job_id)}"
            job = self.store.update_job(
                job_id,
                now=self.clock(),
                state=JobState.CANCELLED,
                status_detail=reason,
                event=reason,
            )
            dp_job = self._drop_dp(job_id)
            if dp_job is not None:
                self._send_end(job, dp_job.state.live, self.clock())
            elif self.overlap.forget(job_id):
                self._send_end(job, job.participants, self.clock())
            self.store.audit(
                actor=actor.name, role=actor.role or "", action="job.cancel", now=self.clock(), job_id=job_id
            )
        self.notifier.notify(job=job_id)
        return job

    def _online(self, node: NodeRecord, now: datetime) -> bool:
        # A task stream open now, or (between enrolling and opening its stream) a recent heartbeat.
        if self.connected(node.node_id):
            return True
        return not self.left(node.node_id) and node.last_seen >= now - self.node_silence

    # -- rounds ---------------------------------------------------------------------------------

    def _deadline(self, job: JobRecord, now: datetime) -> datetime:
        return min(now + self.stage_timeout, job.spec.deadline or now + self.job_timeout)

    def _start_report_round(self, job: JobRecord, participants: Sequence[str], *, now: datetime) -> JobRecord:
        stage = Stage.LOCAL_REPORT
        self.add_store_tasks(
            job.job_id,
            round=1,
            stage=stage,
            node_ids=participants,
            now=now,
            deadline=self._deadline(job, now),
        )
        job = self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.RUNNING,
            round=1,
            participants=participants,
            status_detail=f"waiting for {len(participants)} of {len(participants)} node(s)",
            event=f"round 1: asked {len(participants)} node(s)",
            stage=stage,
            expected=len(participants),
        )
        self.notifier.notify(participants, job=job.job_id)
        return job

    def _start_dp_job(
        self, job: JobRecord, nodes: Sequence[NodeRecord], state: DriverState, *, now: datetime
    ) -> JobRecord:
        dp_job = DpJob(job.job_id, job.spec, get_program(job.spec.analysis), nodes, state)
        self._dp[job.job_id] = dp_job
        participants = [n.node_id for n in nodes]
        job = self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.RUNNING,
            round=1,
            participants=participants,
            status_detail="starting",
            event=(
                f"secure aggregation over {len(nodes)} node(s), quorum {state.threshold} "
                f"({drops_text(len(nodes) - state.threshold)}), up to {dp_job.max_rounds} round(s)"
                + (f", noise sized for {state.collusion} colluding node(s)" if state.collusion else "")
            ),
        )
        return self._hand_out(job, dp_job, dp_job.begin_epoch(), now)

    def _hand_out(self, job: JobRecord, dp_job: DpJob, tasks: Tasks, now: datetime) -> JobRecord:
        if tasks.stage is Stage.ADVERTISE_KEYS:  # a new key epoch: its number must survive a restart
            self.store.save_driver_state(job.job_id, dp_job.state.to_json())
        if tasks.stage is Stage.ADVERTISE_KEYS or tasks.round != job.round:  # idempotent per round
            self.store.start_round(job.job_id, round=tasks.round, rho=dp_job.plan_rho, now=now)
        nodes = sorted(tasks.inputs)
        # The stage's tasks stay in memory until it closes (``OpenStage``): nodes are handed them
        # from there, and the store gets them in one write when the stage closes.
        dp_job.open = OpenStage(
            job_id=job.job_id,
            round=tasks.round,
            epoch=tasks.epoch,
            stage=tasks.stage,
            deadline=self._deadline(job, now),
            created_at=now,
            inputs=tasks.inputs,
            round_input=tasks.round_input,
        )
        status = (
            f"round {tasks.round} of {dp_job.max_rounds}: waiting for {len(nodes)} of "
            f"{len(nodes)} node(s) ({tasks.stage.value})"
        )
        self.store.note_progress(
            job.job_id,
            now=now,
            round=tasks.round,
            status_detail=status,
            event=f"round {tasks.round} of {dp_job.max_rounds}, {tasks.stage.value}: "
            f"asked {len(nodes)} node(s)",
            stage=tasks.stage,
            expected=len(nodes),
        )
        self.notifier.notify(nodes, job=job.job_id)
        return replace(job, round=tasks.round, status_detail=status, updated_at=now)

    # -- node side ------------------------------------------------------------------------------

    def open_task(
        self, node_id: str, *, task_id: str, job_id: str, round_no: int, stage: Stage
    ) -> TaskRecord | None:
        """The task a node's message answers if it is of a DP stage open now (from memory, no
        store); None if it is not. Refuses messages bound to anything else."""
        dp_job = self._dp.get(job_id)
        open_stage = dp_job.open if dp_job is not None else None
        node = open_stage.node_of(task_id) if open_stage is not None else None
        if open_stage is None or node is None:
            return None
        return _checked(open_stage.record(node), node_id, job_id, round_no, stage)

    def open_dp_tasks(self, node_id: str) -> list[TaskRecord]:
        """The node's open tasks of running DP stages, inputs included (from memory)."""
        found = []
        for dp_job in list(self._dp.values()):
            open_stage = dp_job.open
            if open_stage is not None and open_stage.is_open(node_id):
                found.append((open_stage.created_at, open_stage.record(node_id, payload=True)))
        return [task for _, task in sorted(found, key=lambda pair: (pair[0], pair[1].task_id))]

    def peer_certificates(self, node_id: str, job_id: str, wanted: Sequence[str]) -> dict[str, str]:
        """Certificates of a running DP job's participants, for one of them (from memory). Whom a
        job runs with is the node's own business; anyone else's certificates are not."""
        dp_job = self._dp.get(job_id)
        if dp_job is None or node_id not in dp_job.nodes:
            raise NotFound("this node takes part in no running secure-aggregation job of that id")
        return {n: dp_job.nodes[n].cert_pem for n in dict.fromkeys(wanted) if n in dp_job.nodes}

    def store_version(self, node_id: str) -> int:
        """Moves whenever tasks that live in the store (reports, end notices) are added for the
        node: a task stream reads the store only when this moved since it last looked."""
        return self._store_versions.get(node_id, 0)

    def add_store_tasks(self, job_id: str, *, node_ids: Sequence[str], **task: Any) -> None:
        """Add tasks that live in the store (reports, end notices, overlap's relay) and move each
        node's store version, so its task stream reads them (``SqlStore.add_tasks``'s arguments)."""
        self.store.add_tasks(job_id, node_ids=node_ids, **task)
        with self._versions_lock:
            for node in node_ids:
                self._store_versions[node] = self._store_versions.get(node, 0) + 1

    def task_for(self, node_id: str, *, task_id: str, job_id: str, round_no: int, stage: Stage) -> TaskRecord:
        """The task a node's message answers; refuses messages bound to anything else."""
        task = self.open_task(node_id, task_id=task_id, job_id=job_id, round_no=round_no, stage=stage)
        if task is not None:
            return task
        try:
            task = self.store.get_task(task_id, payload=False)
        except NotFound:
            raise InvalidRequest("the message names no task this coordinator issued") from None
        return _checked(task, node_id, job_id, round_no, stage)

    def on_message(self, node_id: str, task: TaskRecord, message: node_pb2.RoundMessage) -> bool:
        """A node's answer to one task; False when the task was already closed (a replay)."""
        body = message.WhichOneof("body")
        with self._locks.hold(task.job_id):
            if not task.state.open:
                return False
            if task.stage is Stage.PSI:
                return self.overlap.on_message(node_id, task, message)
            if task.stage is Stage.ABORT:
                return self.store.answer_task(task.task_id, answer=b"")  # an acknowledgement only
            if task.stage is Stage.LOCAL_REPORT:
                if body != "inventory":
                    raise InvalidRequest("this stage expects a local report")
                serde.inventory_from_pb(message.inventory)  # validate before storing
                answer = message.inventory.SerializeToString()
            else:
                dp_job = self._dp.get(task.job_id)
                if body != "secagg" or dp_job is None or dp_job.round is None:
                    raise InvalidRequest("this task expects a secure-aggregation message of a running round")
                open_stage = dp_job.open
                if open_stage is None or open_stage.node_of(task.task_id) != node_id:
                    raise InvalidRequest("this task belongs to an earlier stage or key epoch of the job")
                if not open_stage.is_open(node_id):
                    return False
                # The round keeps what it needs in memory, and so does the open stage.
                dp_job.receive(node_id, task.stage, message.secagg.data)
                open_stage.close_task(node_id, TaskState.ANSWERED)
                if task.stage is Stage.MASKED_INPUT:
                    # The node was charged when its masked input left it: recorded at once, so the
                    # coordinator's account of who was charged survives a crash mid-stage.
                    self._write_now(open_stage, node_id)
                self._advance(task.job_id)
                return True
            fresh = self.store.answer_task(task.task_id, answer=answer)
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
        with self._locks.hold(task.job_id):
            dp_job = self._dp.get(task.job_id)
            open_stage = dp_job.open if dp_job is not None else None
            if open_stage is not None and open_stage.node_of(task.task_id) == node_id:
                fresh = open_stage.close_task(node_id, TaskState.VETOED)
                if fresh:
                    self._write_now(open_stage, node_id, veto=veto)
            else:
                fresh = self.store.answer_task(task.task_id, answer=None, veto=veto)
            if fresh:
                log.info("veto job=%s node=%s code=%s", task.job_id, node_id, veto.code)
                # Vetoes that leave fewer possible answers than the quorum end the stage now: the
                # job fails with its reason instead of waiting out the deadline for nodes that
                # can no longer save it.
                self._advance(task.job_id, force=_quorum_lost(dp_job, open_stage))
        return fresh

    def _write_now(self, open_stage: OpenStage, node_id: str, *, veto: Veto | None = None) -> None:
        """Write one task of an open stage to the store ahead of the stage (a charge, a veto)."""
        self.store.record_tasks([open_stage.record(node_id)], created_at=open_stage.created_at, veto=veto)
        open_stage.written.add(node_id)

    def _write_stage(self, dp_job: DpJob) -> None:
        """Close the open stage (unanswered tasks expire) and write its tasks in one statement."""
        open_stage, dp_job.open = dp_job.open, None
        if open_stage is not None:
            self.store.record_tasks(open_stage.closed_records(), created_at=open_stage.created_at)

    def _current_tasks(self, job: JobRecord, *, payload: bool = False) -> list[TaskRecord]:
        dp_job = self._dp.get(job.job_id)
        if dp_job is not None:
            return dp_job.open.records() if dp_job.open is not None else []
        return self.store.tasks_for(job.job_id, round=job.round, payload=payload)

    def _advance(self, job_id: str, *, force: bool = False) -> None:
        """Record progress; close the stage once every task is closed (or ``force``: deadline).

        Runs once per answer, so it stays cheap: a running DP job's open stage is counted in
        memory (``OpenStage``), a report job's tasks in the database (not loaded); the job record
        is read only to close the stage, and a progress event is written at most every
        ``PROGRESS_EVERY_S`` per job (the ticker writes one that is owed).
        """
        if job_id in self.overlap:
            self.overlap.advance(job_id, force=force)
            return
        dp_job = self._dp.get(job_id)
        job: JobRecord | None = None
        if dp_job is not None:
            if dp_job.stage is None or dp_job.open is None:
                return
            round_no, stage = dp_job.open.round, dp_job.open.stage
            closed, total = dp_job.open.counts()
        else:
            job = self.store.get_job(job_id)
            if job.state.terminal:
                return
            round_no, stage = job.round, Stage.LOCAL_REPORT
            closed, total = self.store.stage_counts(job_id, round=round_no)
        now = self.clock()
        if closed < total and not force:
            if time.monotonic() - self._progress.get(job_id, 0.0) < PROGRESS_EVERY_S:
                self._progress_owed.add(job_id)
                return
            self._progress[job_id] = time.monotonic()
            self._progress_owed.discard(job_id)
            self.store.note_progress(
                job_id,
                now=now,
                round=round_no,
                status_detail=f"waiting for {total - closed} of {total} node(s) ({stage.value}"
                + (f", round {round_no})" if dp_job is not None else ")"),
                event=f"{stage.value}: {closed} of {total} node(s) answered",
                stage=stage,
                done=closed,
                expected=total,
            )
            self.notifier.notify(job=job_id)
            return
        self._progress.pop(job_id, None)  # the next stage's first answer is shown at once
        self._progress_owed.discard(job_id)
        job = job or self.store.get_job(job_id)
        if job.state.terminal:
            return
        if dp_job is not None:
            self._close_dp_stage(job, now)
        else:
            self._finish_report(job, self._current_tasks(job, payload=True), now)
            self.notifier.notify(job=job_id)

    def _close_dp_stage(self, job: JobRecord, now: datetime) -> None:
        dp_job = self._dp[job.job_id]
        self._write_stage(dp_job)
        try:
            outcome = dp_job.close_stage()
        except TesseraError as exc:
            vetoes = self.store.vetoes_for(job.job_id)
            reasons = "".join(f"; veto from {v.node_id}: {v.reason}" for v in vetoes)
            self._fail(job.job_id, f"{exc.message}{reasons}", now)
            return
        except Exception as exc:  # a bug in a driver must end the job, never leave it running
            log.error("round driver failed job=%s error=%s", job.job_id, type(exc).__name__)
            self._fail(job.job_id, f"the coordinator could not process the round ({type(exc).__name__})", now)
            return
        if isinstance(outcome, Tasks):
            self._hand_out(job, dp_job, outcome, now)
            return
        self._released(job, dp_job, outcome, now)

    def _released(self, job: JobRecord, dp_job: DpJob, done: RoundDone, now: datetime) -> None:
        metric = {k: float(v) for k, v in done.step.metric.items()}
        self.store.release_round(
            job.job_id,
            round=done.round,
            now=now,
            survivors=done.survivors,
            dropped=done.dropped,
            metric_json=json.dumps(metric, sort_keys=True),
            result_json=json.dumps(done.released, sort_keys=True) if dp_job.max_rounds > 1 else "",
            driver_state=done.state.to_json(),
        )
        shown = ", ".join(f"{k} {v:.6g}" for k, v in metric.items())
        self.store.note_progress(
            job.job_id,
            now=now,
            round=done.round,
            event=f"round {done.round} of {dp_job.max_rounds} released: noisy sum of "
            f"{len(done.survivors)} node(s)"
            + (f", {len(done.dropped)} dropped" if done.dropped else "")
            + (f"; {shown}" if shown else ""),
            stage=Stage.UNMASK,
        )
        if done.next is not None:
            nxt = done.next
            back = self._rejoinable(job, dp_job, now)
            if back:
                # A node that dropped (e.g. was restarted) and is heartbeating again rejoins at the
                # next round: everyone re-keys, so nothing it revealed in an old epoch matters.
                dp_job.rejoin(back)
                nxt = dp_job.begin_epoch()
                self.store.update_job(
                    job.job_id,
                    now=now,
                    event=f"round {nxt.round}: {', '.join(back)} rejoin(s); fresh keys for everyone",
                )
            self._hand_out(job, dp_job, nxt, now)
            return
        self._drop_dp(job.job_id)
        assert done.step.result is not None
        result = dict(done.step.result)
        result |= self._job_trailer(job, dp_job, done)
        self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.SUCCEEDED,
            result_json=json.dumps(result, sort_keys=True),
            charged_nodes=done.survivors,
            status_detail=f"done: {done.round} round(s), last over {len(done.survivors)} node(s)",
            event=f"succeeded after {done.round} round(s)"
            + (" (stopped early; unspent budget freed)" if done.ended_early else ""),
        )
        # A node that dropped at any stage of the last round (before its masked input, so it is
        # not even listed as dropped from the sum, or after it, so it never saw the last unmask)
        # still holds the job's budget reserved: only an end notice frees it.
        finished = {
            t.node_id
            for t in self.store.tasks_for(job.job_id, round=done.round, stage=Stage.UNMASK, payload=False)
            if t.state.value == "answered"
        }
        if done.ended_early or done.state.out or set(job.participants) - finished:
            self._send_end(job, done.state.live, now)
        self.notifier.notify(job=job.job_id)
        log.info("job succeeded job=%s rounds=%d", job.job_id, done.round)

    def _rejoinable(self, job: JobRecord, dp_job: DpJob, now: datetime) -> list[str]:
        """Nodes out of the job that did not veto it and are connected and heartbeating again."""
        if not dp_job.state.out:
            return []
        vetoed = {v.node_id for v in self.store.vetoes_for(job.job_id)}
        recent = now - self.node_silence / 2
        seen = {n.node_id: n.last_seen for n in self.store.list_nodes()}
        return sorted(
            n
            for n in dp_job.state.out
            if n not in vetoed and n in dp_job.nodes and seen.get(n, now) >= recent and self.connected(n)
        )

    def _job_trailer(self, job: JobRecord, dp_job: DpJob, done: RoundDone) -> dict[str, Any]:
        """What every DP result states beside its numbers: trace, budget used, guarantees."""
        rounds = self.store.rounds_for(job.job_id)
        released = [r for r in rounds if r.state == "released"]
        rho_used = sum(r.rho for r in released)
        delta = job.spec.delta
        trailer: dict[str, Any] = {
            "survivors": list(done.survivors),
            "dropped": list(done.dropped),
            "out_of_job": list(done.state.out),
            "rounds": [
                {
                    "round": r.round,
                    "rho": r.rho,
                    "survivors": list(r.survivors),
                    "dropped": list(r.dropped),
                    "metric": json.loads(r.metric_json or "{}"),
                }
                for r in released
            ],
            "budget": {
                "rho_reserved": rho_total(analysis_spec(job.spec)),
                "rho_used": rho_used,
                "epsilon_used": rho_to_epsilon(rho_used, delta=delta) if rho_used > 0 else 0.0,
                "delta": delta,
            },
            "quorum": dp_job.state.threshold,
            "collusion_tolerance": dp_job.state.collusion,
            "vetoes": [
                {"node_id": v.node_id, "code": v.code, "reason": v.reason}
                for v in self.store.vetoes_for(job.job_id)
            ],
        }
        if dp_job.max_rounds == 1:
            # One-round results keep their established top-level fields.
            round_setup = dp_job.round
            trailer["modulus_bits"] = round_setup.setup.bits if round_setup is not None else None
        else:
            trailer["round_results"] = [json.loads(r.result_json) for r in released if r.result_json]
        # Sums are taken modulo 2^bits, sized so any coordinate wraps with probability <= 2^-40
        # for up to max_customers customers per node (bits_for); stated so a reader can check it.
        trailer["wrap_probability_at_most"] = 2.0**-40
        return trailer

    def _finish_report(self, job: JobRecord, tasks: Sequence[TaskRecord], now: datetime) -> None:
        vetoes = self.store.vetoes_for(job.job_id)
        reports = {
            t.node_id: serde.inventory_from_pb(node_pb2.InventoryReport.FromString(t.answer))
            for t in tasks
            if t.answer is not None
        }
        info = get_analysis(job.spec.analysis)
        if len(reports) < info.min_nodes:
            reasons = "; ".join(f"{v.node_id}: {v.reason}" for v in vetoes) or "no node answered"
            self._fail(job.job_id, f"every node refused or was silent: {reasons}", now)
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

    def _drop_dp(self, job_id: str) -> DpJob | None:
        self._progress.pop(job_id, None)
        self._progress_owed.discard(job_id)
        dp_job = self._dp.pop(job_id, None)
        if dp_job is not None:
            self._write_stage(dp_job)  # the store keeps every task handed out
        return dp_job

    def _charged_text(self, job_id: str) -> str:
        """A true sentence about what the job's nodes were charged (from the answered inputs)."""
        charged: dict[int, set[str]] = {}
        for task in self.store.tasks_for(job_id):
            if task.stage is Stage.MASKED_INPUT and task.state.value == "answered":
                charged.setdefault(task.round, set()).add(task.node_id)
        rounds = self.store.rounds_for(job_id)
        for r in rounds:
            if r.state == ROUND_CHARGED:
                charged.setdefault(r.round, set()).update(r.survivors)
        if overlap_charged := self.overlap.charged(job_id):  # before its stage 1 is recorded
            charged.setdefault(1, set()).update(overlap_charged)
        released = {r.round for r in rounds if r.state == "released"}
        unreleased = {r: n for r, n in charged.items() if r not in released}
        if not charged:
            return "no node was charged"
        parts = [f"round {r} released" for r in sorted(released)]
        parts += [
            f"round {r} charged to {', '.join(sorted(n))} without a release"
            for r, n in sorted(unreleased.items())
        ]
        return "; ".join(parts)

    def _fail(self, job_id: str, reason: str, now: datetime) -> None:
        dp_job = self._drop_dp(job_id)
        spec = self.store.get_job(job_id).spec
        if get_analysis(spec.analysis).differentially_private or job_id in self.overlap:
            # Whether or not this process still holds the job (a restart may have lost it).
            reason = f"{reason} ({self._charged_text(job_id)})"
        job = self.store.update_job(
            job_id,
            now=now,
            state=JobState.FAILED,
            error=reason,
            status_detail=f"failed: {reason}",
            event=f"failed: {reason}",
        )
        if dp_job is not None:
            self._send_end(job, dp_job.state.live, now)
        elif self.overlap.forget(job_id):
            self._send_end(job, job.participants, now)
        self.notifier.notify(job=job_id)
        log.warning("job failed job=%s", job_id)

    def _send_end(self, job: JobRecord, nodes: Sequence[str], now: datetime) -> None:
        """Tell the job's nodes it ended: drop its keys, free the budget no round spent.

        Without this a node would hold the reserved budget until the reservation expires.
        """
        # Every node asked to advertise keys is told, vetoes included: a node may have reserved
        # the job's budget and then vetoed or been cut off (e.g. it restarted between reserving
        # and answering, and its new process refused a task it holds no keys for). Its ledger
        # knows whether it holds anything; the notice frees it or is acknowledged and ignored.
        joined = {
            t.node_id
            for t in self.store.tasks_for(job.job_id, payload=False)
            if t.stage is Stage.ADVERTISE_KEYS
        }
        targets = sorted(joined | set(nodes))
        if targets:
            self.add_store_tasks(
                job.job_id,
                round=job.round,
                epoch=-1,
                stage=Stage.ABORT,
                node_ids=targets,
                now=now,
                deadline=now + self.stage_timeout,
                stage_input=END_CODEC.encode(),
            )
            self.notifier.notify(targets, job=job.job_id)

    # -- time and recovery ----------------------------------------------------------------------

    def tick(self, *, gone: Collection[str] = ()) -> None:
        """Act on passed deadlines and silent nodes; called periodically by the server.

        A report round fails naming the silent nodes. A secure-aggregation stage closes with the
        nodes that answered (the others dropped) as soon as every node it waits for is silent,
        ``gone`` (its connection closed and it did not come back) or late, and fails only if
        fewer than the quorum remain. An overlap stage drops such nodes at once: their pairs
        fail and the others go on (its deadline is the whole job's, far too long to wait).
        """
        now = self.clock()
        silent_before = now - self.node_silence
        if self._up_since > silent_before:
            # Heartbeats stopped while this process was not running, through no fault of the
            # nodes: each gets a whole silence window from the start to come back.
            silent_before = datetime.min.replace(tzinfo=UTC)
        seen: dict[str, datetime] | None = None  # read once, and only if a stage is waiting
        if self._listed_at is None or not timedelta(0) <= now - self._listed_at < LIST_RUNNING_EVERY:
            self._running = tuple(
                j.job_id for j in self.store.list_jobs(limit=1000, states=(JobState.RUNNING,))
            )
            self._listed_at = now
        for job_id in dict.fromkeys((*self._dp, *self.overlap.job_ids(), *self._running)):
            dp_job = self._dp.get(job_id)
            if dp_job is not None and job_id not in self._progress_owed:
                # The common case, without reading the store: nothing of this stage can be late.
                seen = self.store.last_seen() if seen is None else seen
                if not _may_be_late(dp_job, now=now, silent_before=silent_before, gone=gone, seen=seen):
                    continue
            with self._locks.hold(job_id):
                job = self.store.get_job(job_id)
                if job.state is not JobState.RUNNING:
                    continue  # not started, or ended while the tick waited for its lock
                if job.spec.deadline is not None and job.spec.deadline <= now:
                    self._fail(job.job_id, "the job's deadline passed before it finished", now)
                    continue
                if job.job_id in self._progress_owed:
                    self._progress.pop(job.job_id, None)
                    self._advance(job.job_id)
                    continue  # lateness is looked at by the next tick
                tasks = self._current_tasks(job)
                waiting = [t for t in tasks if t.state.open]
                late = [t for t in waiting if t.deadline is not None and t.deadline <= now]
                if (job.job_id in self._dp or job.job_id in self.overlap) and waiting:
                    seen = self.store.last_seen() if seen is None else seen
                    overdue = {t.task_id for t in late}
                    late += [
                        t
                        for t in waiting
                        if t.task_id not in overdue
                        and (t.node_id in gone or seen.get(t.node_id, now) < silent_before)
                    ]
                if not late:
                    continue
                names = ", ".join(sorted(t.node_id for t in late))
                dp_job = self._dp.get(job.job_id)
                if dp_job is not None and dp_job.open is not None:
                    dp_job.open.expire(t.node_id for t in late)  # written when the stage closes
                    self.store.update_job(
                        job.job_id, now=now, event=f"{late[0].stage.value}: {names} dropped"
                    )
                    self._advance(job.job_id, force=len(late) == len(waiting))
                elif job.job_id in self.overlap:
                    # The pairs of a node that is gone fail; the other pairs go on without it.
                    self.store.expire_tasks([t.task_id for t in late])
                    self.store.update_job(job.job_id, now=now, event=f"overlap: {names} dropped")
                    self.overlap.advance(job.job_id)
                else:
                    self._fail(
                        job.job_id,
                        f"node(s) {names} did not answer round {job.round} before its deadline",
                        now,
                    )

    def recover(self) -> None:
        """After a (re)start: resume what can resume, fail the rest with a reason.

        A DP job resumes at its first unreleased round with a fresh key epoch over the nodes still
        in it; a round that was in flight is run again and nodes charge it once (their ledgers
        charge per job and round), since its first attempt can never be unmasked: every node
        destroys an epoch's secrets when the next epoch of the job begins.
        """
        now = self.clock()
        self._up_since = now
        self._listed_at = None
        for job in self.store.list_jobs(limit=10000, states=(JobState.PENDING, JobState.RUNNING)):
            with self._locks.hold(job.job_id):
                info = get_analysis(job.spec.analysis)
                try:
                    if job.spec.analysis == overlap.INFO.name:
                        raise Conflict("an overlap job keeps its lists in the coordinator's memory only")
                    if info.differentially_private:
                        self._resume_dp(job, now)
                    elif job.state is JobState.PENDING:
                        participants = job.participants or [
                            n.node_id
                            for n in plan_participants(
                                self.store, job.spec, info, now=now, online=self._online
                            )
                        ]
                        self._start_report_round(job, participants, now=now)
                    else:
                        # Open tasks stay in the store and are re-sent when each node reconnects;
                        # give them a fresh deadline since the outage was not the nodes' fault.
                        self.store.extend_open_tasks(job.job_id, deadline=now + self.stage_timeout)
                        self.store.update_job(job.job_id, now=now, event="coordinator restarted; job resumes")
                        self._advance(job.job_id)
                except TesseraError as exc:
                    self._drop_dp(job.job_id)  # every participant is told below, not only the live
                    self._fail(
                        job.job_id, f"the coordinator restarted and the job cannot go on: {exc.message}", now
                    )
                    self._send_end(job, job.participants, now)
                    continue
                log.info("job resumed after restart job=%s", job.job_id)
        self.notifier.notify()

    def _resume_dp(self, job: JobRecord, now: datetime) -> None:
        if not job.driver_state:
            raise Conflict("it never started a round")
        state = DriverState.from_json(job.driver_state)
        enrolled = {n.node_id: n for n in self.store.list_nodes()}
        nodes = [enrolled[p] for p in job.participants if p in enrolled]
        self.store.expire_job_tasks(job.job_id)
        dp_job = DpJob(job.job_id, job.spec, get_program(job.spec.analysis), nodes, state)
        self._dp[job.job_id] = dp_job
        job = self.store.update_job(
            job.job_id,
            now=now,
            event=f"coordinator restarted; resuming at round {state.round} with fresh keys "
            f"over {len(state.live)} node(s)",
        )
        self._hand_out(job, dp_job, dp_job.begin_epoch(), now)

    # -- reads ----------------------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        return self.store.list_nodes()


def _may_be_late(
    dp_job: DpJob,
    *,
    now: datetime,
    silent_before: datetime,
    gone: Collection[str],
    seen: dict[str, datetime],
) -> bool:
    if dp_job.spec.deadline is not None and dp_job.spec.deadline <= now:
        return True
    open_stage = dp_job.open
    if open_stage is None:
        return False
    if open_stage.deadline is not None and open_stage.deadline <= now:
        return True
    return any(n in gone or seen.get(n, now) < silent_before for n in open_stage.waiting)


class JobLocks:
    """One re-entrant lock per job, made on first use and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.RLock, int]] = {}

    @contextmanager
    def hold(self, job_id: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(job_id) or (threading.RLock(), 0)
            self._locks[job_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[job_id]
                if users <= 1:
                    del self._locks[job_id]
                else:
                    self._locks[job_id] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


def _checked(task: TaskRecord, node_id: str, job_id: str, round_no: int, stage: Stage) -> TaskRecord:
    if task.node_id != node_id:
        raise AuthError("this task belongs to another node")
    if (task.job_id, task.round, task.stage) != (job_id, round_no, stage):
        raise InvalidRequest("the message is bound to a different job, round or stage than its task")
    return task


def _quorum_lost(dp_job: DpJob | None, open_stage: OpenStage | None) -> bool:
    if dp_job is None or open_stage is None:
        return False
    vetoed = sum(state is TaskState.VETOED for state in open_stage.states.values())
    return len(open_stage.states) - vetoed < dp_job.state.threshold
