"""NodeService: thin — identify the node by its certificate, decode, call the job service, encode.

Runs on the coordinator's asyncio loop. Heartbeats are answered in memory (``Presence``); every
call into the job service or the store goes through ``Blocking`` (a bounded thread pool), so the
loop never waits on the database; an idle task stream is a parked coroutine, not a thread.
Answers of one job queue behind each other here, on the loop (an ``asyncio.Lock`` per job, no
thread held while waiting), and answers of different jobs run side by side in the pool.
Errors are raised as ``TesseraError`` and become a gRPC status in ``boundary.AioErrorBoundary``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from tessera.core import __version__, serde
from tessera.core.errors import AuthError, Conflict, InvalidRequest, Unavailable
from tessera.core.types import PeerIdentity, Stage
from tessera.server.blocking import Blocking
from tessera.server.jobs import JobService
from tessera.server.notifier import Notifier
from tessera.server.presence import Presence
from tessera.server.store import TaskRecord
from tessera.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.coordinator.nodes")

Identify = Callable[[grpc.ServicerContext], PeerIdentity]
MAX_POLL_WAIT_S = 30.0
# A task stream re-reads the store this often even without a wake-up (a safety net only).
STREAM_RECHECK_S = 60.0
# Certificates in one answer (about 650 bytes each: 6.5 MB, well under the message limit).
MAX_PEER_CERTIFICATES = 10_000


class KeyedGates:
    """One ``asyncio.Lock`` per key, made on first use and dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._gates: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._gates.get(key) or (asyncio.Lock(), 0)
        self._gates[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._gates[key]
            if users <= 1:
                del self._gates[key]
            else:
                self._gates[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._gates)


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        jobs: JobService,
        notifier: Notifier,
        identify: Identify,
        *,
        blocking: Blocking,
        presence: Presence,
        heartbeat_interval_ms: int = 2000,
    ) -> None:
        self.jobs = jobs
        self.notifier = notifier
        self.identify = identify
        self.run = blocking
        self.presence = presence
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.gates = KeyedGates()
        self._jobs: dict[str, node_pb2.Task] = {}  # job -> what each of its tasks carries
        self._anchored: dict[str, tuple[int, str]] = {}  # node -> the egress head last anchored

    def _node(self, context: grpc.aio.ServicerContext) -> str:
        peer = self.identify(context)  # type: ignore[arg-type]
        if peer.kind != "node":
            raise AuthError("only node certificates may call the node service")
        return peer.name

    def _refuse_second_process(self, node_id: str, context: grpc.aio.ServicerContext) -> None:
        if self.presence.taken(node_id, _instance(context)):
            log.warning("second process refused node=%s", node_id)
            raise Conflict(_SECOND_PROCESS.format(node=node_id))

    async def Enrol(
        self, request: node_pb2.EnrolRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.EnrolResponse:
        node_id = self._node(context)
        if not request.policy.policy_hash:
            raise InvalidRequest("an enrolment must carry the node's policy summary")
        self._refuse_second_process(node_id, context)
        policy = serde.policy_summary_from_pb(request.policy)
        await self.run(
            self.jobs.store.upsert_node,
            node_id,
            node_version=request.node_version[:64],
            policy=policy,
            datasets=[serde.dataset_from_pb(d) for d in request.datasets],
            now=self.jobs.clock(),
            cert_pem=_presented_certificate(context),
        )
        self.presence.enrolled(node_id, policy.policy_hash)
        log.info(
            "node enrolled node=%s version=%s policy=%s",
            node_id,
            request.node_version[:64],
            request.policy.policy_hash[:12],
        )
        # A node that (re)enrols may have work waiting from before a restart.
        self.notifier.notify([node_id])
        return node_pb2.EnrolResponse(
            node_id=node_id, coordinator_version=__version__, heartbeat_interval_ms=self.heartbeat_interval_ms
        )

    async def Heartbeat(
        self, request: node_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.HeartbeatResponse:
        node_id = self._node(context)
        now = self.jobs.clock()
        known = self.presence.beat(node_id, request.policy_hash, now)
        if known is None:  # first beat this process sees from the node: one look-up, then cached
            known = await self.run(self.presence.beat_from_store, node_id, request.policy_hash, now)
        head = request.egress_head
        anchored = self._anchored.get(node_id)
        if anchored is None or (head.seq, head.hash) != anchored:
            # The store is written only when the node's egress head moved (or once per process).
            anchored = await self.run(
                self.jobs.store.anchor_egress_head, node_id, head.seq, head.hash, now=now
            )
            self._anchored[node_id] = anchored
        response = node_pb2.HeartbeatResponse(
            re_enrol=not known, anchored_head=node_pb2.EgressHead(seq=anchored[0], hash=anchored[1])
        )
        response.server_time.FromDatetime(now)
        return response

    async def ReceiveTasks(
        self, request: node_pb2.ReceiveTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[node_pb2.Task]:
        node_id = self._node(context)
        if not self.presence.stream_opened(node_id, _instance(context)):
            log.warning("second process refused node=%s", node_id)
            raise Conflict(_SECOND_PROCESS.format(node=node_id))
        log.info("task stream opened node=%s", node_id)
        sent: set[str] = set()  # per stream: a reconnect re-sends everything still open
        seen = -1
        stored = -1  # the job service's store version for this node when the stream last looked
        try:
            while not self.notifier.closed:
                version = self.notifier.node_version(node_id)
                if version != seen:
                    seen = version
                    # Tasks of open DP stages come from memory, on the loop; the store is read
                    # (in the pool) only when tasks were stored for this node since it last looked.
                    latest = self.jobs.store_version(node_id)
                    memory = [t for t in self.jobs.open_dp_tasks(node_id) if t.task_id not in sent]
                    if latest != stored or any(t.job_id not in self._jobs for t in memory):
                        batch = await self.run(self._deliver, node_id, sent, memory, latest != stored)
                        stored = latest
                    else:
                        batch = [self._task_pb(t) for t in memory]
                    for task in batch:
                        yield task
                        sent.add(task.task_id)
                await self.notifier.wait_node_async(node_id, seen, timeout=STREAM_RECHECK_S)
        finally:
            self.presence.stream_closed(node_id, self.jobs.clock())
            log.info("task stream closed node=%s", node_id)

    async def PollTasks(
        self, request: node_pb2.PollTasksRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.PollTasksResponse:
        node_id = self._node(context)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(request.wait_ms / 1000.0, MAX_POLL_WAIT_S)
        while True:
            seen = self.notifier.node_version(node_id)
            tasks = await self.run(self._deliver, node_id, set(), self.jobs.open_dp_tasks(node_id), True)
            remaining = deadline - loop.time()
            if tasks or remaining <= 0 or self.notifier.closed:
                return node_pb2.PollTasksResponse(tasks=tasks)
            await self.notifier.wait_node_async(node_id, seen, timeout=remaining)

    async def SubmitRoundMessage(
        self, request: node_pb2.RoundMessage, context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitAck:
        node_id = self._node(context)
        stage = serde.stage_from_pb(request.stage)
        # A task of an open DP stage is found in memory, on the loop; any other in the store.
        task = self.jobs.open_task(
            node_id, task_id=request.task_id, job_id=request.job_id, round_no=request.round, stage=stage
        ) or await self._task(node_id, request.task_id, request.job_id, request.round, stage)
        async with self.gates.hold(task.job_id):
            fresh = await self.run(self.jobs.on_message, node_id, task, request)
        return node_pb2.SubmitAck(accepted=fresh, detail="" if fresh else "already answered")

    async def ReportVeto(
        self, request: node_pb2.VetoReport, context: grpc.aio.ServicerContext
    ) -> node_pb2.SubmitAck:
        node_id = self._node(context)
        stage = serde.stage_from_pb(request.stage)
        task = await self._task(node_id, request.task_id, request.job_id, request.round, stage)
        veto = serde.veto_from_pb(request.veto)
        async with self.gates.hold(task.job_id):
            fresh = await self.run(self.jobs.on_veto, node_id, task, veto)
        return node_pb2.SubmitAck(accepted=fresh, detail="" if fresh else "already answered")

    async def PeerCertificates(
        self, request: node_pb2.PeerCertificatesRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.PeerCertificatesResponse:
        node_id = self._node(context)
        if len(request.node_ids) > MAX_PEER_CERTIFICATES:
            raise InvalidRequest(f"ask for at most {MAX_PEER_CERTIFICATES} certificates at a time")
        # From the running job in memory, on the loop: no store read.
        found = self.jobs.peer_certificates(node_id, request.job_id, request.node_ids)
        return node_pb2.PeerCertificatesResponse(
            certificates=[node_pb2.PeerCertificate(node_id=n, cert_pem=pem) for n, pem in found.items()]
        )

    async def _task(self, node_id: str, task_id: str, job_id: str, round_no: int, stage: Stage) -> TaskRecord:
        return await self.run(
            self.jobs.task_for, node_id, task_id=task_id, job_id=job_id, round_no=round_no, stage=stage
        )

    # -- in the pool ------------------------------------------------------------------------------

    def _deliver(
        self, node_id: str, sent: set[str], memory: Sequence[TaskRecord], from_store: bool
    ) -> list[node_pb2.Task]:
        """The node's open stored tasks not yet sent on this stream (marked delivered) if
        ``from_store``, then ``memory`` (tasks of open DP stages): runs in the pool."""
        if self.notifier.closed:
            raise Unavailable("the coordinator is shutting down")
        stored = self.jobs.store.deliver_open_tasks(node_id, skip=sent) if from_store else []
        return [self._task_pb(t) for t in [*stored, *memory]]

    def _job(self, job_id: str) -> node_pb2.Task:
        """What every task of a job carries (spec, participants, submitter), as a message to copy.

        A job's spec never changes and its participants, once set, neither: built once, cached.
        """
        template = self._jobs.get(job_id)
        if template is None:
            job = self.jobs.store.get_job(job_id)
            template = node_pb2.Task(
                job_id=job.job_id,
                spec=serde.job_spec_to_pb(job.spec),
                participants=list(job.participants),
                submitter=job.submitted_by,
            )
            if job.participants:
                if len(self._jobs) >= 1024:
                    self._jobs.pop(next(iter(self._jobs)), None)
                self._jobs[job_id] = template
        return template

    def _task_pb(self, task: TaskRecord) -> node_pb2.Task:
        msg = node_pb2.Task()
        msg.CopyFrom(self._job(task.job_id))
        msg.task_id = task.task_id
        msg.round = task.round
        msg.stage = serde.stage_to_pb(task.stage)
        msg.stage_input = task.stage_input
        msg.round_input = task.round_input
        if task.deadline is not None:
            msg.deadline.FromDatetime(task.deadline)
        return msg


INSTANCE_KEY = "tessera-instance"  # metadata: a random id per node process (see Presence)
_SECOND_PROCESS = (
    "node {node} is already connected from another process; run one process per node certificate"
)


def _instance(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == INSTANCE_KEY:
            return str(value)[:64]
    return ""


def _presented_certificate(context: grpc.aio.ServicerContext) -> str:
    values = context.auth_context().get("x509_pem_cert") or [b""]
    return bytes(values[0]).decode("ascii", errors="replace")
