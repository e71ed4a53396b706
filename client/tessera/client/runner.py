"""Task -> policy -> compute: what a node does with one task. Protobuf stays at this edge."""

from __future__ import annotations

import logging

from tessera.client.budget import BudgetLedger
from tessera.client.datasource import CsvDataSource, DataSource
from tessera.client.dp_runner import DpRunner, NodeIdentity
from tessera.client.egress import EgressRecord
from tessera.client.outgoing import Outgoing
from tessera.client.overlap_runner import OverlapRunner
from tessera.client.overlap_source import CsvIdentifiers, IdentifierSource
from tessera.client.peer_keys import FetchCertificates
from tessera.core import __version__, serde
from tessera.core.analyses import inventory, overlap
from tessera.core.errors import TesseraError
from tessera.core.policy import Policy, check_job
from tessera.core.types import JobSpec, Stage, Veto
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.node.runner")


class TaskRunner:
    def __init__(
        self,
        node_id: str,
        policy: Policy,
        data: DataSource,
        identity: NodeIdentity,
        budget: BudgetLedger,
        *,
        identifiers: IdentifierSource | None = None,
        fetch_certificates: FetchCertificates | None = None,
    ) -> None:
        self.node_id = node_id
        self.policy = policy
        self.data = data
        self.dp = DpRunner(node_id, policy, data, identity, budget, fetch_certificates=fetch_certificates)
        if identifiers is None and isinstance(data, CsvDataSource):
            identifiers = CsvIdentifiers(data.files, policy)
        self.overlap = OverlapRunner(node_id, policy, identifiers, budget)

    def handle(self, task: node_pb2.Task) -> Outgoing:
        """Never raises for a task's content: every refusal becomes a veto with a reason."""
        spec: JobSpec | None = None
        try:
            stage = serde.stage_from_pb(task.stage)
            spec = serde.job_spec_from_pb(task.spec)
            if stage is Stage.LOCAL_REPORT:
                return self._report(task, spec)
            if spec.analysis == overlap.INFO.name:
                return self.overlap.handle(task, spec, stage)
            return self.dp.handle(task, spec, stage)
        except TesseraError as exc:
            self.dp.forget(task.job_id)
            self.overlap.forget(task.job_id)
            return self._veto(task, spec, exc)
        except Exception as exc:  # a bug must cost one task, not the node; its text may hold data
            log.error("task failed job=%s error=%s", task.job_id, type(exc).__name__)
            self.dp.forget(task.job_id)
            self.overlap.forget(task.job_id)
            failure = TesseraError(
                "the node could not process this task; its operator can see why in its log",
                code="node.internal",
            )
            return self._veto(task, spec, failure)

    def veto(self, task: node_pb2.Task, exc: TesseraError) -> Outgoing:
        """A veto for ``task`` with the reason ``exc`` gives (no data in it)."""
        try:
            spec: JobSpec | None = serde.job_spec_from_pb(task.spec)
        except TesseraError:
            spec = None
        return self._veto(task, spec, exc)

    def _report(self, task: node_pb2.Task, spec: JobSpec) -> Outgoing:
        # The node is the enforcer: every task is checked against the local policy, fail closed.
        check_job(self.policy, spec, node_name=self.node_id, participants=tuple(task.participants))
        if spec.analysis != inventory.INFO.name:
            raise TesseraError(
                f"analysis {spec.analysis!r} has no local-report stage", code="analysis.unsupported"
            )
        if spec.dataset:
            self.policy.dataset(spec.dataset)  # vetoes a dataset the policy does not classify
        report = inventory.local_report(
            policy=self.policy.summary(),
            datasets=self.data.schemas(),
            node_version=__version__,
            dataset=spec.dataset,
        )
        message = node_pb2.RoundMessage(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=task.stage,
            inventory=serde.inventory_to_pb(report),
        )
        return Outgoing(record=self._record(task, spec, "local_report", fields=()), message=message)

    def _veto(self, task: node_pb2.Task, spec: JobSpec | None, exc: TesseraError) -> Outgoing:
        log.info("veto job=%s code=%s", task.job_id, exc.code)
        veto = Veto(
            node_id=self.node_id, code=exc.code, reason=exc.message, policy_hash=self.policy.policy_hash
        )
        report = node_pb2.VetoReport(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=task.stage,
            veto=serde.veto_to_pb(veto),
        )
        return Outgoing(record=self._record(task, spec, "veto", fields=()), veto=report)

    def _record(
        self, task: node_pb2.Task, spec: JobSpec | None, stage: str, *, fields: tuple[str, ...]
    ) -> EgressRecord:
        return EgressRecord(
            job_id=task.job_id or "unknown",
            round=task.round,
            stage=stage,
            purpose=(spec.purpose if spec else "") or "unspecified",
            analysis=(spec.analysis if spec else "") or "unknown",
            fields=fields,
            shape=(),
            noise={},
            rho=0.0,
            epsilon=0.0,
            delta=0.0,
            policy_hash=self.policy.policy_hash,
        )
