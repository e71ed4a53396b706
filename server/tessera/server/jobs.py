"""The job service: plans rounds, hands tasks to nodes, collects answers, ends jobs.

Every state change is persisted before it is announced, so a coordinator that dies at any point
restarts into a consistent store: ``recover`` resumes jobs whose analysis can resume and fails the
others with a reason — a job is never silently lost.

Two kinds of job: a *report* job (``inventory``) asks every node for one local report; a *DP*
job runs one secure-aggregation round (advertise keys, share keys, masked input, unmask) in which
the coordinator learns only the noisy sum of the nodes' vectors.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from tessera.core import serde
from tessera.core.analyses import inventory
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.registry import get_analysis, get_vector_analysis
from tessera.core.analyses.vector import bits_for
from tessera.core.errors import AuthError, Conflict, InvalidRequest, NotFound, TesseraError
from tessera.core.rounds import SPARSE_FROM, RoundSetup, analysis_spec, round_param
from tessera.core.types import FieldSchema, JobSpec, JobState, PeerIdentity, Stage, Veto
from tessera.server.budget_mirror import budget_views
from tessera.server.clock import Clock
from tessera.server.dp_round import DpRound, NextStage
from tessera.server.notifier import Notifier
from tessera.server.store import JobRecord, NodeRecord, SqlStore, TaskRecord
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.coordinator.jobs")

HARD_MIN_PARTICIPANTS = 3  # with two nodes an aggregate reveals the other node's vector
DEFAULT_MAX_CUSTOMERS = 10_000_000  # per node, sizes the modular bit width of DP rounds


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
        # racing to finish the same stage.
        self._lock = threading.RLock()
        self._rounds: dict[str, DpRound] = {}

    # -- analyst side ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, actor: PeerIdentity) -> JobRecord:
        info = get_analysis(spec.analysis)
        now = self.clock()
        if spec.deadline is not None and spec.deadline <= now:
            raise InvalidRequest("the job's deadline is already in the past")
        nodes = self._plan_participants(spec, info)
        with self._lock:
            job = self.store.create_job(spec, submitted_by=actor.name, now=now)
            self.store.audit(
                actor=actor.name,
                role=actor.role or "",
                action="job.submit",
                now=now,
                job_id=job.job_id,
                outcome=f"accepted: {spec.analysis} on {len(nodes)} node(s)",
            )
            if info.differentially_private:
                job = self._start_dp_round(job, nodes, now=now)
            else:
                job = self._start_report_round(job, [n.node_id for n in nodes], now=now)
        log.info("job submitted job=%s analysis=%s nodes=%d", job.job_id, spec.analysis, len(nodes))
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
            if self._rounds.pop(job_id, None) is not None:
                self._send_aborts(job, self.clock())
            self.store.audit(
                actor=actor.name, role=actor.role or "", action="job.cancel", now=self.clock(), job_id=job_id
            )
        self.notifier.notify()
        return job

    def _plan_participants(self, spec: JobSpec, info: AnalysisInfo) -> list[NodeRecord]:
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
        needed = max(info.min_nodes, spec.min_participants)
        if info.differentially_private:
            needed = max(needed, HARD_MIN_PARTICIPANTS, *(n.policy.min_participants for n in chosen))
        # Refuse hopeless jobs early, from the policy summaries the nodes published; each node
        # still checks the job against its own policy and may veto.
        willing = [n for n in chosen if _summary_allows(n, spec, info)]
        if info.differentially_private:
            views = {(v.node_id, v.dataset): v for v in budget_views(self.store, willing, now=self.clock())}
            willing = [
                n
                for n in willing
                if (n.node_id, spec.dataset) not in views
                or views[(n.node_id, spec.dataset)].admits(epsilon=spec.epsilon, delta=spec.delta)
            ]
        if len(willing) < needed:
            raise Conflict(
                f"only {len(willing)} of {len(chosen)} node(s) allow analysis {spec.analysis!r} for purpose "
                f"{spec.purpose!r} at epsilon {spec.epsilon:g} with the budget they have left, and at least "
                f"{needed} are needed"
            )
        return sorted(chosen, key=lambda n: n.node_id)

    # -- rounds ---------------------------------------------------------------------------------

    def _deadline(self, job: JobRecord, now: datetime) -> datetime:
        return min(now + self.stage_timeout, job.spec.deadline or now + self.job_timeout)

    def _start_report_round(self, job: JobRecord, participants: Sequence[str], *, now: datetime) -> JobRecord:
        stage = Stage.LOCAL_REPORT
        self.store.add_tasks(
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
        self.notifier.notify()
        return job

    def _start_dp_round(self, job: JobRecord, nodes: Sequence[NodeRecord], *, now: datetime) -> JobRecord:
        spec = job.spec
        analysis = get_vector_analysis(spec.analysis)
        n = len(nodes)
        threshold = survivors_threshold(spec, nodes)
        plan = analysis.plan(
            analysis_spec(spec), _shared_fields(spec.dataset, nodes), survivors_t=threshold, n_nodes=n
        )
        max_customers = round_param(spec, "max_customers", DEFAULT_MAX_CUSTOMERS)
        setup = RoundSetup(
            job_id=job.job_id,
            round_no=1,
            participants=tuple(node.node_id for node in nodes),
            threshold=threshold,
            bits=bits_for(plan, max_customers=max_customers),
            length=plan.length,
            certificates=tuple((node.node_id, node.cert_pem) for node in nodes),
            graph_seed=os.urandom(32).hex() if n >= SPARSE_FROM else "",
        )
        min_cohort = max(node.policy.min_cohort_size for node in nodes)
        self._rounds[job.job_id] = DpRound(setup, plan, analysis, min_cohort_size=min_cohort)
        participants = [node.node_id for node in nodes]
        stage = Stage.ADVERTISE_KEYS
        self.store.add_tasks(
            job.job_id,
            round=1,
            stage=stage,
            node_ids=participants,
            now=now,
            deadline=self._deadline(job, now),
            stage_input=setup.to_bytes(),
        )
        job = self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.RUNNING,
            round=1,
            participants=participants,
            status_detail=f"waiting for {n} of {n} node(s) ({stage.value})",
            event=f"round 1: secure aggregation over {n} node(s), quorum {threshold}, {setup.bits}-bit sums",
            stage=stage,
            expected=n,
        )
        self.notifier.notify()
        return job

    # -- node side ------------------------------------------------------------------------------

    def task_for(self, node_id: str, *, task_id: str, job_id: str, round_no: int, stage: Stage) -> TaskRecord:
        """The task a node's message answers; refuses messages bound to anything else."""
        try:
            task = self.store.get_task(task_id)
        except NotFound:
            raise InvalidRequest("the message names no task this coordinator issued") from None
        if task.node_id != node_id:
            raise AuthError("this task belongs to another node")
        if (task.job_id, task.round, task.stage) != (job_id, round_no, stage):
            raise InvalidRequest("the message is bound to a different job, round or stage than its task")
        return task

    def on_message(self, node_id: str, task: TaskRecord, message: node_pb2.RoundMessage) -> bool:
        """A node's answer to one task; False when the task was already closed (a replay)."""
        body = message.WhichOneof("body")
        with self._lock:
            if not task.state.open:
                return False
            if task.stage is Stage.ABORT:
                return self.store.answer_task(task.task_id, answer=b"")  # an acknowledgement only
            if task.stage is Stage.LOCAL_REPORT:
                if body != "inventory":
                    raise InvalidRequest("this stage expects a local report")
                serde.inventory_from_pb(message.inventory)  # validate before storing
                answer = message.inventory.SerializeToString()
            else:
                dp_round = self._rounds.get(task.job_id)
                if body != "secagg" or dp_round is None:
                    raise InvalidRequest("this task expects a secure-aggregation message of a running round")
                # The round keeps what it needs in memory; the store only records that it came.
                dp_round.receive(node_id, task.stage, message.secagg.data)
                answer = b""
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
        with self._lock:
            fresh = self.store.answer_task(task.task_id, answer=None, veto=veto)
            if fresh:
                log.info("veto job=%s node=%s code=%s", task.job_id, node_id, veto.code)
                self._advance(task.job_id)
        return fresh

    def _current_tasks(self, job: JobRecord) -> list[TaskRecord]:
        tasks = self.store.tasks_for(job.job_id, round=job.round)
        dp_round = self._rounds.get(job.job_id)
        if dp_round is not None:
            tasks = [t for t in tasks if t.stage is dp_round.stage]
        return tasks

    def _advance(self, job_id: str, *, force: bool = False) -> None:
        """Record progress; close the stage once every task is closed (or ``force``: deadline)."""
        job = self.store.get_job(job_id)
        if job.state.terminal:
            return
        tasks = self._current_tasks(job)
        closed = [t for t in tasks if not t.state.open]
        now = self.clock()
        stage = tasks[0].stage if tasks else Stage.LOCAL_REPORT
        if len(closed) < len(tasks) and not force:
            waiting = len(tasks) - len(closed)
            self.store.update_job(
                job_id,
                now=now,
                status_detail=f"waiting for {waiting} of {len(tasks)} node(s) ({stage.value})",
                event=f"{stage.value}: {len(closed)} of {len(tasks)} node(s) answered",
                stage=stage,
                done=len(closed),
                expected=len(tasks),
            )
        elif job.job_id in self._rounds:
            self._close_dp_stage(job, now)
        else:
            self._finish_report(job, tasks, now)
        self.notifier.notify()

    def _close_dp_stage(self, job: JobRecord, now: datetime) -> None:
        dp_round = self._rounds[job.job_id]
        try:
            outcome = dp_round.close_stage()
        except TesseraError as exc:
            vetoes = self.store.vetoes_for(job.job_id)
            reasons = "".join(f"; veto from {v.node_id}: {v.reason}" for v in vetoes)
            self._fail(job.job_id, f"{exc.message}{reasons}", now)
            return
        if isinstance(outcome, NextStage):
            nodes = sorted(outcome.inputs)
            self.store.add_tasks(
                job.job_id,
                round=job.round,
                stage=outcome.stage,
                node_ids=nodes,
                now=now,
                deadline=self._deadline(job, now),
                stage_inputs=outcome.inputs,
            )
            self.store.update_job(
                job.job_id,
                now=now,
                status_detail=f"waiting for {len(nodes)} of {len(nodes)} node(s) ({outcome.stage.value})",
                event=f"{outcome.stage.value}: asked {len(nodes)} node(s)",
                stage=outcome.stage,
                expected=len(nodes),
            )
            return
        del self._rounds[job.job_id]
        outcome.result["survivors"] = list(outcome.survivors)
        outcome.result["dropped"] = list(outcome.dropped)
        # Sums are taken modulo 2^bits, sized so any coordinate wraps with probability <= 2^-40
        # for up to max_customers customers per node (bits_for); stated so a reader can check it.
        outcome.result["modulus_bits"] = dp_round.setup.bits
        outcome.result["wrap_probability_at_most"] = 2.0**-40
        outcome.result["vetoes"] = [
            {"node_id": v.node_id, "code": v.code, "reason": v.reason}
            for v in self.store.vetoes_for(job.job_id)
        ]
        self.store.update_job(
            job.job_id,
            now=now,
            state=JobState.SUCCEEDED,
            result_json=json.dumps(outcome.result, sort_keys=True),
            released_rho=dp_round.plan.rho,
            charged_nodes=outcome.survivors,
            status_detail=f"done: noisy sum of {len(outcome.survivors)} node(s)",
            event=f"succeeded: released the noisy sum of {len(outcome.survivors)} node(s)"
            + (f", {len(outcome.dropped)} dropped" if outcome.dropped else ""),
        )
        log.info(
            "job succeeded job=%s survivors=%d dropped=%d",
            job.job_id,
            len(outcome.survivors),
            len(outcome.dropped),
        )

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

    def _fail(self, job_id: str, reason: str, now: datetime) -> None:
        ended_round = self._rounds.pop(job_id, None) is not None
        job = self.store.update_job(
            job_id,
            now=now,
            state=JobState.FAILED,
            error=reason,
            status_detail=f"failed: {reason}",
            event=f"failed: {reason}",
        )
        if ended_round:
            self._send_aborts(job, now)
        log.warning("job failed job=%s", job_id)

    def _send_aborts(self, job: JobRecord, now: datetime) -> None:
        """Tell every node that joined the ended round to drop it and give back its reservation.

        Without this a node would hold the reserved budget until the reservation expires.
        """
        advertised = {
            t.node_id
            for t in self.store.tasks_for(job.job_id, round=job.round)
            if t.stage is Stage.ADVERTISE_KEYS
        }
        joined = sorted(advertised - {v.node_id for v in self.store.vetoes_for(job.job_id)})
        if joined:
            self.store.add_tasks(
                job.job_id,
                round=job.round,
                stage=Stage.ABORT,
                node_ids=joined,
                now=now,
                deadline=now + self.stage_timeout,
            )

    # -- time and recovery ----------------------------------------------------------------------

    def tick(self) -> None:
        """Act on passed deadlines; called periodically by the server.

        A report round fails naming the silent nodes. A secure-aggregation stage closes with the
        nodes that answered (the others dropped) and fails only if fewer than the quorum remain.
        """
        now = self.clock()
        with self._lock:
            for job in self.store.list_jobs(limit=1000, states=(JobState.RUNNING,)):
                if job.spec.deadline is not None and job.spec.deadline <= now:
                    self._fail(job.job_id, "the job's deadline passed before it finished", now)
                    self.notifier.notify()
                    continue
                tasks = self._current_tasks(job)
                late = [t for t in tasks if t.state.open and t.deadline is not None and t.deadline <= now]
                if not late:
                    continue
                names = ", ".join(t.node_id for t in late)
                if job.job_id in self._rounds:
                    self.store.expire_open_tasks(job.job_id, round=job.round, stage=late[0].stage)
                    self.store.update_job(
                        job.job_id, now=now, event=f"{late[0].stage.value}: {names} dropped"
                    )
                    self._advance(job.job_id, force=True)
                else:
                    self._fail(
                        job.job_id,
                        f"node(s) {names} did not answer round {job.round} before its deadline",
                        now,
                    )
                    self.notifier.notify()

    def recover(self) -> None:
        """After a (re)start: resume what can resume, fail the rest with a reason."""
        now = self.clock()
        with self._lock:
            for job in self.store.list_jobs(limit=10000, states=(JobState.PENDING, JobState.RUNNING)):
                info = get_analysis(job.spec.analysis)
                if not info.resumable:
                    self._fail(
                        job.job_id,
                        f"the coordinator restarted during round {job.round}; a secure-aggregation round "
                        "cannot resume safely, so submit the job again (no node was charged for a "
                        "release that did not happen)",
                        now,
                    )
                    continue
                if job.state is JobState.PENDING:
                    participants = job.participants or [
                        n.node_id for n in self._plan_participants(job.spec, info)
                    ]
                    self._start_report_round(job, participants, now=now)
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


def survivors_threshold(spec: JobSpec, nodes: Sequence[NodeRecord]) -> int:
    """The quorum t: the fewest nodes whose noisy sum may be released.

    At least a strict majority (secure aggregation's bound against a coordinator that lies about
    who dropped), at least every participant's ``min_participants``, and no lower than the number
    of nodes minus ``max_dropouts`` (job parameter, default 1): noise shares are sized for t, so a
    smaller t costs accuracy when everyone stays.
    """
    n = len(nodes)
    max_dropouts = round_param(spec, "max_dropouts", 1)
    floor = max(
        n // 2 + 1, spec.min_participants, HARD_MIN_PARTICIPANTS, *(x.policy.min_participants for x in nodes)
    )
    if floor > n:
        raise Conflict(f"the round needs at least {floor} nodes and only {n} take part")
    return max(floor, n - max_dropouts)


def _shared_fields(dataset: str, nodes: Sequence[NodeRecord]) -> Mapping[str, FieldSchema]:
    """Fields of ``dataset`` that every participant publishes with the same type and tier."""
    if not dataset:
        raise InvalidRequest("a DP job must name the dataset it analyses")
    common: dict[str, FieldSchema] | None = None
    for node in nodes:
        schema = next((d for d in node.datasets if d.name == dataset), None)
        if schema is None:
            raise Conflict(f"node {node.node_id} publishes no dataset {dataset!r}")
        fields = {f.name: f for f in schema.fields}
        common = fields if common is None else {k: v for k, v in common.items() if fields.get(k) == v}
    return common or {}


def _summary_allows(node: NodeRecord, spec: JobSpec, info: AnalysisInfo) -> bool:
    policy = node.policy
    if spec.analysis not in policy.allowed_analyses:
        return False
    if spec.purpose and spec.purpose not in policy.allowed_purposes:
        return False
    return not (info.differentially_private and spec.epsilon > policy.epsilon_per_job)
