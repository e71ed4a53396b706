"""NodeService: thin — identify the node by its certificate, decode, call the job service, encode."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from tessera.core import __version__, serde
from tessera.core.errors import AuthError, InvalidRequest, TesseraError
from tessera.core.grpc_status import abort
from tessera.core.types import PeerIdentity
from tessera.server.jobs import JobService
from tessera.server.notifier import Notifier
from tessera.server.store import TaskRecord
from tessera.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.coordinator.nodes")

Identify = Callable[[grpc.ServicerContext], PeerIdentity]
MAX_POLL_WAIT_S = 30.0


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self, jobs: JobService, notifier: Notifier, identify: Identify, *, heartbeat_interval_ms: int = 2000
    ) -> None:
        self.jobs = jobs
        self.notifier = notifier
        self.identify = identify
        self.heartbeat_interval_ms = heartbeat_interval_ms

    def _node(self, context: grpc.ServicerContext) -> str:
        peer = self.identify(context)
        if peer.kind != "node":
            raise AuthError("only node certificates may call the node service")
        return peer.name

    def Enrol(self, request: node_pb2.EnrolRequest, context: grpc.ServicerContext) -> node_pb2.EnrolResponse:
        try:
            node_id = self._node(context)
            if not request.policy.policy_hash:
                raise InvalidRequest("an enrolment must carry the node's policy summary")
            self.jobs.store.upsert_node(
                node_id,
                node_version=request.node_version[:64],
                policy=serde.policy_summary_from_pb(request.policy),
                datasets=[serde.dataset_from_pb(d) for d in request.datasets],
                now=self.jobs.clock(),
                cert_pem=_presented_certificate(context),
            )
        except TesseraError as exc:
            abort(context, exc)
        log.info(
            "node enrolled node=%s version=%s policy=%s",
            node_id,
            request.node_version[:64],
            request.policy.policy_hash[:12],
        )
        # A node that (re)enrols may have work waiting from before a restart.
        self.notifier.notify()
        return node_pb2.EnrolResponse(
            node_id=node_id, coordinator_version=__version__, heartbeat_interval_ms=self.heartbeat_interval_ms
        )

    def Heartbeat(
        self, request: node_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> node_pb2.HeartbeatResponse:
        try:
            node_id = self._node(context)
            now = self.jobs.clock()
            known = self.jobs.store.touch_node(node_id, now=now)
            if known and request.policy_hash:
                known = self.jobs.store.get_node(node_id).policy.policy_hash == request.policy_hash
            head = request.egress_head
            anchored = self.jobs.store.anchor_egress_head(node_id, head.seq, head.hash, now=now)
        except TesseraError as exc:
            abort(context, exc)
        response = node_pb2.HeartbeatResponse(
            re_enrol=not known, anchored_head=node_pb2.EgressHead(seq=anchored[0], hash=anchored[1])
        )
        response.server_time.FromDatetime(now)
        return response

    def ReceiveTasks(
        self, request: node_pb2.ReceiveTasksRequest, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.Task]:
        try:
            node_id = self._node(context)
        except TesseraError as exc:
            abort(context, exc)
        log.info("task stream opened node=%s", node_id)
        sent: set[str] = set()  # per stream: a reconnect re-sends everything still open
        seen = -1
        while context.is_active() and not self.notifier.closed:
            version = self.notifier.node_version(node_id)
            if version != seen:
                seen = version
                try:
                    tasks = [t for t in self.jobs.store.open_tasks(node_id) if t.task_id not in sent]
                    for task in tasks:
                        yield self._task_pb(task)
                        sent.add(task.task_id)
                    self.jobs.store.mark_delivered([t.task_id for t in tasks])
                except TesseraError as exc:
                    abort(context, exc)
            self.notifier.wait_node(node_id, seen, timeout=1.0)
        log.info("task stream closed node=%s", node_id)

    def PollTasks(
        self, request: node_pb2.PollTasksRequest, context: grpc.ServicerContext
    ) -> node_pb2.PollTasksResponse:
        try:
            node_id = self._node(context)
            wait_s = min(request.wait_ms / 1000.0, MAX_POLL_WAIT_S)
            deadline = self.jobs.clock().timestamp() + wait_s
            seen = self.notifier.node_version(node_id)
            while True:
                tasks = self.jobs.store.open_tasks(node_id)
                remaining = deadline - self.jobs.clock().timestamp()
                if tasks or remaining <= 0 or not context.is_active() or self.notifier.closed:
                    break
                seen = self.notifier.wait_node(node_id, seen, timeout=min(remaining, 1.0))
            self.jobs.store.mark_delivered([t.task_id for t in tasks])
            return node_pb2.PollTasksResponse(tasks=[self._task_pb(t) for t in tasks])
        except TesseraError as exc:
            abort(context, exc)

    def SubmitRoundMessage(
        self, request: node_pb2.RoundMessage, context: grpc.ServicerContext
    ) -> node_pb2.SubmitAck:
        try:
            node_id = self._node(context)
            task = self.jobs.task_for(
                node_id,
                task_id=request.task_id,
                job_id=request.job_id,
                round_no=request.round,
                stage=serde.stage_from_pb(request.stage),
            )
            fresh = self.jobs.on_message(node_id, task, request)
        except TesseraError as exc:
            abort(context, exc)
        return node_pb2.SubmitAck(accepted=fresh, detail="" if fresh else "already answered")

    def ReportVeto(self, request: node_pb2.VetoReport, context: grpc.ServicerContext) -> node_pb2.SubmitAck:
        try:
            node_id = self._node(context)
            task = self.jobs.task_for(
                node_id,
                task_id=request.task_id,
                job_id=request.job_id,
                round_no=request.round,
                stage=serde.stage_from_pb(request.stage),
            )
            fresh = self.jobs.on_veto(node_id, task, serde.veto_from_pb(request.veto))
        except TesseraError as exc:
            abort(context, exc)
        return node_pb2.SubmitAck(accepted=fresh, detail="" if fresh else "already answered")

    def _task_pb(self, task: TaskRecord) -> node_pb2.Task:
        job = self.jobs.store.get_job(task.job_id)
        msg = node_pb2.Task(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=serde.stage_to_pb(task.stage),
            spec=serde.job_spec_to_pb(job.spec),
            stage_input=task.stage_input,
            round_input=task.round_input,
            participants=list(job.participants),
            submitter=job.submitted_by,
        )
        if task.deadline is not None:
            msg.deadline.FromDatetime(task.deadline)
        return msg


def _presented_certificate(context: grpc.ServicerContext) -> str:
    values = context.auth_context().get("x509_pem_cert") or [b""]
    return bytes(values[0]).decode("ascii", errors="replace")
