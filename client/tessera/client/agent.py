"""The node process: dial out to the coordinator, enrol, heartbeat, take tasks, answer, reconnect.

Partners open no inbound port: the node keeps one server stream of tasks open and reconnects with
exponential backoff (with jitter) whenever it breaks — coordinator restarts included. Tasks are
re-sent by the coordinator after a reconnect until answered; the node drops ones it already
answered, so a task is never computed twice in one node lifetime. An answer whose sending failed
(a timeout under load, a broken connection) is kept, and the exact same bytes go again when the
task comes back: computing it again would find the round's keys already past that stage.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from tessera.client.datasource import DataSource
from tessera.client.dp_runner import NodeIdentity
from tessera.client.outgoing import NodeLedgers, Outgoing
from tessera.client.overlap_source import IdentifierSource
from tessera.client.runner import TaskRunner
from tessera.core import __version__, serde
from tessera.core.errors import ConfigError, PkiError, TesseraError, Unavailable
from tessera.core.grpc_status import KEEPALIVE_MS, MAX_MESSAGE_BYTES, status_name
from tessera.core.pki import TlsFiles, channel_credentials
from tessera.core.pki.server_check import check_coordinator
from tessera.core.policy import Policy
from tessera.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.node")

RPC_TIMEOUT_S = 30.0
REMEMBERED_TASKS = 10_000
SEND_ATTEMPTS = 3  # calls of one answer on one connection before the stream is rebuilt
# Answers kept for their task's return: a node has a few tasks in flight, and a masked input can
# be megabytes, so only the latest few are kept (an older one's job has long moved on).
UNSENT_KEPT = 32
# Calls worth repeating on the same connection: the coordinator was slow, or asked the node to
# slow down. A broken connection (UNAVAILABLE) is not one: the stream is rebuilt at once instead.
_RETRIED = frozenset({"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    coordinator: str
    tls: TlsFiles
    # The first retry after a broken connection comes within 0.2 s: the coordinator counts a node
    # whose stream stays closed for half a second as dropped from the stage it waits on.
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0


class NodeAgent:
    def __init__(
        self,
        config: NodeConfig,
        policy: Policy,
        data: DataSource,
        ledgers: NodeLedgers,
        *,
        identifiers: IdentifierSource | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.data = data
        self.ledgers = ledgers
        self.runner = TaskRunner(
            config.node_id,
            policy,
            data,
            NodeIdentity.from_tls(config.tls),
            ledgers.budget,
            identifiers=identifiers,
            fetch_certificates=self._peer_certificates,
        )
        self._stub: node_pb2_grpc.NodeServiceStub | None = None  # while connected
        self._answered: OrderedDict[str, None] = OrderedDict()
        # Answers computed whose sending did not complete: the rest of their parts, by task id.
        self._unsent: OrderedDict[str, tuple[Outgoing, ...]] = OrderedDict()
        self._call: grpc.Future | None = None
        self._stop = threading.Event()
        self._jitter = random.SystemRandom()
        # Tells the coordinator this process from a second one started under the same name (which
        # it refuses) and from this process reconnecting (which it lets in).
        self._metadata = (("tessera-instance", secrets.token_hex(8)),)
        self.enrolled = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        """Serve until ``stop``; survives coordinator restarts and network breaks."""
        creds = channel_credentials(self.config.tls)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        backoff = self.config.backoff_initial_s
        while not self._stop.is_set():
            try:
                # Our own handshake first: the CRL and the real cause of a failure (see server_check).
                check_coordinator(self.config.coordinator, self.config.tls)
                with grpc.secure_channel(self.config.coordinator, creds, options=options) as channel:
                    stub = self._stub = node_pb2_grpc.NodeServiceStub(channel)
                    interval = self._enrol(stub)
                    backoff = self.config.backoff_initial_s
                    beat_stop = threading.Event()
                    beat = threading.Thread(
                        target=self._heartbeat,
                        args=(stub, interval, beat_stop),
                        name="heartbeat",
                        daemon=True,
                    )
                    beat.start()
                    try:
                        self._serve_tasks(stub)
                    finally:
                        beat_stop.set()
                        beat.join(timeout=2)
            except PkiError as exc:
                log.error("not connecting to %s: %s", self.config.coordinator, exc.message)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                self._log_rpc_error(exc)
            except Exception as exc:  # e.g. the node's database was briefly unavailable
                # Keep serving: reconnect after the backoff; the unanswered task comes back.
                log.error("task loop failed error=%s; reconnecting", type(exc).__name__)
            self._stub = None
            self.enrolled.clear()
            if self._stop.is_set():
                break
            delay = backoff * self._jitter.uniform(0.5, 1.0)
            log.info("reconnecting in %.1fs", delay)
            self._stop.wait(delay)
            backoff = min(backoff * 2, self.config.backoff_max_s)
        log.info("node stopped node=%s", self.config.node_id)

    def _enrol(self, stub: node_pb2_grpc.NodeServiceStub) -> float:
        request = node_pb2.EnrolRequest(
            node_version=__version__,
            policy=serde.policy_summary_to_pb(self.policy.summary()),
            datasets=[serde.dataset_to_pb(d) for d in self.data.schemas()],
        )
        response = stub.Enrol(request, timeout=RPC_TIMEOUT_S, metadata=self._metadata)
        if response.node_id != self.config.node_id:
            log.warning(
                "coordinator knows this node as %s, configured as %s", response.node_id, self.config.node_id
            )
        log.info("enrolled node=%s coordinator_version=%s", response.node_id, response.coordinator_version)
        self.enrolled.set()
        return max(int(response.heartbeat_interval_ms), 200) / 1000.0

    def _heartbeat(self, stub: node_pb2_grpc.NodeServiceStub, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval) and not self._stop.is_set():
            try:
                self.beat(stub, timeout=interval * 2)
            except grpc.RpcError:
                # The task stream notices a dead coordinator too and drives the reconnect.
                continue
            except TesseraError as exc:  # the node's database was briefly unavailable
                log.warning("heartbeat skipped code=%s", exc.code)

    def beat(self, stub: node_pb2_grpc.NodeServiceStub, *, timeout: float = RPC_TIMEOUT_S) -> None:
        """One heartbeat: carries the egress head (anchoring it at the coordinator) and stores the
        head the coordinator acknowledges, which ``egress verify`` checks the chain against."""
        seq, head = self.ledgers.egress.head()
        request = node_pb2.HeartbeatRequest(
            node_version=__version__,
            policy_hash=self.policy.policy_hash,
            egress_head=node_pb2.EgressHead(seq=seq, hash=head),
        )
        response = stub.Heartbeat(request, timeout=timeout)
        anchored = response.anchored_head
        if anchored.seq and self.ledgers.egress.acknowledge(anchored.seq, anchored.hash):
            log.debug("egress head anchored seq=%d", anchored.seq)
        if response.re_enrol:
            self._enrol(stub)

    def _peer_certificates(self, job_id: str, nodes: Sequence[str]) -> dict[str, str]:
        """Certificates of a job's participants from the coordinator (the runner verifies them)."""
        stub = self._stub
        if stub is None:
            raise Unavailable("not connected to the coordinator")
        request = node_pb2.PeerCertificatesRequest(job_id=job_id, node_ids=list(nodes))
        try:
            response = stub.PeerCertificates(request, timeout=RPC_TIMEOUT_S, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            raise Unavailable(f"the coordinator did not send the peers' certificates ({code})") from None
        return {c.node_id: c.cert_pem for c in response.certificates}

    def _serve_tasks(self, stub: node_pb2_grpc.NodeServiceStub) -> None:
        call = stub.ReceiveTasks(node_pb2.ReceiveTasksRequest(), metadata=self._metadata)
        self._call = call
        try:
            if self._stop.is_set():
                call.cancel()
            for task in call:
                if task.task_id in self._answered:
                    continue
                self._answer(stub, task)
        finally:
            self._call = None
        log.info("task stream ended by the coordinator")

    def _answer(self, stub: node_pb2_grpc.NodeServiceStub, task: node_pb2.Task) -> None:
        parts = self._unsent.pop(task.task_id, None)
        if parts is None:
            out = _with_analyst(self.runner.handle(task), task.submitter)
            try:
                self._send_parts(stub, task.task_id, _parts(out))
            except TesseraError as exc:
                # Recording or charging failed, so the message did not leave; say why instead.
                log.warning("not sent job=%s code=%s", task.job_id, exc.code)
                self.runner.dp.forget(task.job_id)
                out = _with_analyst(self.runner.veto(task, exc), task.submitter)
                self._send_parts(stub, task.task_id, (out,))
        else:
            # The coordinator sent the task again because our answer did not reach it (or its
            # acknowledgement did not reach us): the same bytes again, recorded again, charged
            # once (a charge is idempotent per round). A replay is acknowledged as one.
            out = parts[0]
            self._send_parts(stub, task.task_id, parts)
        # One line per job and stage for the operator: ids, stage, outcome — never data.
        outcome = f"veto code={out.veto.veto.code}" if out.veto is not None else "sent"
        log.info(
            "task job=%s round=%d stage=%s outcome=%s%s",
            task.job_id,
            task.round,
            serde.stage_from_pb(task.stage).value,
            outcome,
            "" if parts is None else " (again)",
        )
        self._answered[task.task_id] = None
        while len(self._answered) > REMEMBERED_TASKS:
            self._answered.popitem(last=False)

    def _send_parts(
        self, stub: node_pb2_grpc.NodeServiceStub, task_id: str, parts: tuple[Outgoing, ...]
    ) -> None:
        """Send ``parts`` in order. A part whose call times out goes again on the same connection
        (the coordinator acknowledges a replay as one): tearing the task stream down for a slow
        acknowledgement would cost the node its place in the stage it is waited on. If it still
        does not go, it and the rest are kept for the task's return, and the stream is rebuilt."""
        for i, part in enumerate(parts):
            for attempt in range(1, SEND_ATTEMPTS + 1):
                try:
                    self._deliver(stub, part)
                    break
                except TesseraError:
                    raise  # not recorded, so not sent: nothing to send again
                except Exception as exc:
                    code = status_name(exc)
                    if attempt < SEND_ATTEMPTS and code in _RETRIED and not self._stop.wait(0.2 * attempt):
                        log.warning(
                            "send failed code=%s attempt=%d; sending the same answer again", code, attempt
                        )
                        continue
                    self._unsent[task_id] = parts[i:]
                    while len(self._unsent) > UNSENT_KEPT:
                        self._unsent.popitem(last=False)
                    raise

    def _deliver(self, stub: node_pb2_grpc.NodeServiceStub, out: Outgoing) -> None:
        """One message or veto (one part of a list), out through the ledger, which records and
        charges it first: the only way out of the node."""
        if out.message is not None:
            message = out.message
            self.ledgers.deliver(out, lambda _: stub.SubmitRoundMessage(message, timeout=RPC_TIMEOUT_S))
        elif out.veto is not None:
            veto = out.veto
            self.ledgers.deliver(out, lambda _: stub.ReportVeto(veto, timeout=RPC_TIMEOUT_S))

    def _log_rpc_error(self, exc: grpc.RpcError) -> None:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.UNAVAILABLE:
            log.warning(
                "coordinator unreachable at %s (is it running and listening there?)", self.config.coordinator
            )
        elif code == grpc.StatusCode.CANCELLED:
            log.info("task stream cancelled")
        else:
            name = code.name if code is not None else "UNKNOWN"
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            log.warning("coordinator refused the node: %s %s", name, details)


def check_identity(policy: Policy, certificate_name: str) -> None:
    """Refuse to serve a policy written for another partner than the node certificate names:
    its rules (and the state beside it) would be enforced under the wrong partner's name."""
    if policy.partner != certificate_name:
        raise ConfigError(
            f"the policy {policy.source or 'file'} is for partner {policy.partner!r} but this node's "
            f"certificate names {certificate_name!r}: start each node with its own policy and state"
        )


def _parts(out: Outgoing) -> tuple[Outgoing, ...]:
    """An answer in the order its messages leave (a list in parts: each part on its own)."""
    return (dataclasses.replace(out, more=()), *out.more) if out.more else (out,)


def _with_analyst(out: Outgoing, analyst: str) -> Outgoing:
    """The ledger names who asked: the job's submitter as the coordinator relayed it."""
    if not analyst or out.record.analyst:
        return out
    more = tuple(_with_analyst(part, analyst) for part in out.more)
    return dataclasses.replace(out, record=dataclasses.replace(out.record, analyst=analyst[:128]), more=more)
