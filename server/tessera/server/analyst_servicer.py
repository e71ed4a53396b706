"""AnalystService: thin — authenticate the analyst, decode, call the job service, encode.

Runs on the coordinator's asyncio loop: each unary call runs its body (store reads, the job
service) in the bounded pool (``Blocking``); a job watch is a parked coroutine woken only by
changes to its own job. Errors are raised as ``TesseraError`` and become a gRPC status in
``boundary.AioErrorBoundary``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc

from tessera.core import serde
from tessera.core.errors import AuthError, TesseraError, Unavailable
from tessera.core.types import JobSpec, PeerIdentity, Stage
from tessera.server.blocking import Blocking
from tessera.server.budget_mirror import NODE_BUDGET, BudgetView, node_budgets
from tessera.server.jobs import JobService
from tessera.server.node_servicer import Identify
from tessera.server.notifier import Notifier
from tessera.server.store import EventRecord, JobRecord, NodeRecord
from tessera.v1 import analyst_pb2, analyst_pb2_grpc

log = logging.getLogger("tessera.coordinator.analysts")
# A watch re-reads its job's events this often even without a wake-up (a safety net only).
WATCH_RECHECK_S = 60.0


class AnalystServicer(analyst_pb2_grpc.AnalystServiceServicer):
    def __init__(
        self,
        jobs: JobService,
        notifier: Notifier,
        identify: Identify,
        *,
        blocking: Blocking,
        online_after: timedelta,
    ) -> None:
        self.jobs = jobs
        self.notifier = notifier
        self.identify = identify
        self.run = blocking
        self.online_after = online_after

    def _analyst(self, context: grpc.aio.ServicerContext) -> PeerIdentity:
        peer = self.identify(context)  # type: ignore[arg-type]
        if peer.kind != "analyst":
            raise AuthError("only analyst certificates may call the analyst service")
        return peer

    async def SubmitJob(
        self, request: analyst_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.SubmitJobResponse:
        peer = self._analyst(context)
        spec = serde.job_spec_from_pb(request.spec)
        job = await self.run(self._submit, spec, peer)
        return analyst_pb2.SubmitJobResponse(job_id=job.job_id, state=serde.state_to_pb(job.state))

    def _submit(self, spec: JobSpec, peer: PeerIdentity) -> JobRecord:
        try:
            return self.jobs.submit(spec, actor=peer)
        except TesseraError as exc:
            self.jobs.store.audit(
                actor=peer.name,
                role=peer.role or "",
                action="job.submit",
                now=self.jobs.clock(),
                outcome=f"refused: {exc.code}",
            )
            raise

    async def GetJob(
        self, request: analyst_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.Job:
        self._analyst(context)
        return await self.run(lambda: self._job_pb(self.jobs.store.get_job(request.job_id)))

    async def CancelJob(
        self, request: analyst_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.Job:
        peer = self._analyst(context)
        return await self.run(lambda: self._job_pb(self.jobs.cancel(request.job_id, actor=peer)))

    async def WatchJob(
        self, request: analyst_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[analyst_pb2.JobEvent]:
        self._analyst(context)
        job_id = request.job_id
        await self.run(self.jobs.store.get_job, job_id)  # NotFound before the stream starts
        last = 0
        while True:
            seen = self.notifier.job_version(job_id)
            events = await self.run(self.jobs.store.events_after, job_id, last)
            for ev in events:
                last = ev.seq
                yield _event_pb(ev)
                if ev.state.terminal:
                    return
            if self.notifier.closed:
                raise Unavailable("the coordinator is shutting down")
            await self.notifier.wait_job_async(job_id, seen, timeout=WATCH_RECHECK_S)

    async def GetResult(
        self, request: analyst_pb2.GetResultRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.JobResult:
        self._analyst(context)
        return await self.run(self._result, request.job_id)

    def _result(self, job_id: str) -> analyst_pb2.JobResult:
        job = self.jobs.store.get_job(job_id)
        vetoes = self.jobs.store.vetoes_for(job.job_id)
        return analyst_pb2.JobResult(
            job_id=job.job_id,
            state=serde.state_to_pb(job.state),
            analysis=job.spec.analysis,
            result_json=job.result_json,
            vetoes=[serde.veto_to_pb(v) for v in vetoes],
            error=job.error,
        )

    async def ListJobs(
        self, request: analyst_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.ListJobsResponse:
        self._analyst(context)
        limit = min(request.limit or 50, 1000)

        def body() -> analyst_pb2.ListJobsResponse:
            jobs = self.jobs.store.list_jobs(limit=limit)
            return analyst_pb2.ListJobsResponse(jobs=[self._job_pb(j, with_vetoes=False) for j in jobs])

        return await self.run(body)

    async def ListNodes(
        self, request: analyst_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.ListNodesResponse:
        self._analyst(context)
        return await self.run(
            lambda: analyst_pb2.ListNodesResponse(nodes=[self._node_pb(n) for n in self.jobs.nodes()])
        )

    async def ListAudit(
        self, request: analyst_pb2.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.ListAuditResponse:
        peer = self._analyst(context)
        if peer.role not in ("admin", "auditor"):
            raise AuthError("reading the audit log needs the admin or auditor role")
        entries = await self.run(self.jobs.store.list_audit, limit=min(request.limit or 100, 10000))
        out = []
        for a in entries:
            entry = analyst_pb2.AuditEntry(
                actor=a.actor, role=a.role, action=a.action, job_id=a.job_id, outcome=a.outcome
            )
            entry.at.FromDatetime(a.at)
            out.append(entry)
        return analyst_pb2.ListAuditResponse(entries=out)

    async def ListBudgets(
        self, request: analyst_pb2.ListBudgetsRequest, context: grpc.aio.ServicerContext
    ) -> analyst_pb2.ListBudgetsResponse:
        self._analyst(context)
        views = await self.run(
            lambda: node_budgets(self.jobs.store, self.jobs.nodes(), now=self.jobs.clock())
        )
        return analyst_pb2.ListBudgetsResponse(budgets=[_budget_pb(v) for v in views])

    def _job_pb(self, job: JobRecord, *, with_vetoes: bool = True) -> analyst_pb2.Job:
        msg = analyst_pb2.Job(
            job_id=job.job_id,
            spec=serde.job_spec_to_pb(job.spec),
            state=serde.state_to_pb(job.state),
            submitted_by=job.submitted_by,
            status_detail=job.status_detail,
            round=job.round,
            participants=list(job.participants),
        )
        msg.created_at.FromDatetime(job.created_at)
        msg.updated_at.FromDatetime(job.updated_at)
        if with_vetoes:
            msg.vetoes.extend(serde.veto_to_pb(v) for v in self.jobs.store.vetoes_for(job.job_id))
        return msg

    def _node_pb(self, node: NodeRecord) -> analyst_pb2.NodeInfo:
        msg = analyst_pb2.NodeInfo(
            node_id=node.node_id,
            node_version=node.node_version,
            policy=serde.policy_summary_to_pb(node.policy),
            online=self.jobs.clock() - node.last_seen <= self.online_after,
            datasets=[serde.dataset_to_pb(d) for d in node.datasets],
        )
        msg.last_seen.FromDatetime(node.last_seen)
        msg.enrolled_at.FromDatetime(node.enrolled_at)
        return msg


def _event_pb(ev: EventRecord) -> analyst_pb2.JobEvent:
    msg = analyst_pb2.JobEvent(
        job_id=ev.job_id,
        state=serde.state_to_pb(ev.state),
        message=ev.message,
        round=ev.round,
        done=ev.done,
        expected=ev.expected,
    )
    msg.at.FromDatetime(ev.at)
    if ev.stage:
        msg.stage = serde.stage_to_pb(Stage(ev.stage))
    return msg


def _budget_pb(v: BudgetView) -> analyst_pb2.BudgetView:
    msg = analyst_pb2.BudgetView(
        node_id=v.node_id,
        dataset=NODE_BUDGET,  # one budget per node: its customers, all datasets
        period=f"{v.period_days}d",
        epsilon_limit=v.epsilon_limit,
        epsilon_spent=v.epsilon_spent,
        epsilon_left=v.epsilon_left,
        rho_spent=v.rho_spent,
        releases=v.releases,
        delta=v.delta,
        epsilon_per_job=v.epsilon_per_job,
        rho_limit=v.rho_limit,
        next_renewal_rho=v.oldest_rho,
    )
    renewal = v.next_renewal
    if renewal is not None:
        msg.next_renewal.FromDatetime(renewal)
    return msg
