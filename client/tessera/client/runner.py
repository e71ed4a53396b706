"""Task -> policy -> compute: what a node does with one task. Protobuf stays at this edge."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tessera.client.datasource import DataSource
from tessera.core import __version__, serde
from tessera.core.analyses import inventory
from tessera.core.errors import InvalidRequest, PolicyViolation, TesseraError
from tessera.core.policy import Policy, check_job
from tessera.core.types import Stage, Veto
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.node.runner")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the node sends back for one task: a round message or a veto (exactly one is set)."""

    message: node_pb2.RoundMessage | None = None
    veto: node_pb2.VetoReport | None = None


class TaskRunner:
    def __init__(self, node_id: str, policy: Policy, data: DataSource) -> None:
        self.node_id = node_id
        self.policy = policy
        self.data = data

    def handle(self, task: node_pb2.Task) -> Outcome:
        try:
            stage = serde.stage_from_pb(task.stage)
            spec = serde.job_spec_from_pb(task.spec)
            # The node is the enforcer: every task is checked against the local policy, fail closed.
            check_job(self.policy, spec, node_name=self.node_id, participants=tuple(task.participants))
            if spec.analysis == inventory.INFO.name and stage is Stage.LOCAL_REPORT:
                if spec.dataset:
                    self.policy.dataset(spec.dataset)  # vetoes a dataset the policy does not classify
                report = inventory.local_report(
                    policy=self.policy.summary(),
                    datasets=self.data.schemas(),
                    node_version=__version__,
                    dataset=spec.dataset,
                )
                body = serde.inventory_to_pb(report)
                return Outcome(
                    message=node_pb2.RoundMessage(
                        task_id=task.task_id,
                        job_id=task.job_id,
                        round=task.round,
                        stage=task.stage,
                        inventory=body,
                    )
                )
            raise PolicyViolation(
                f"this node does not run analysis {spec.analysis!r} at stage {stage.value}",
                code="analysis.unsupported",
            )
        except (PolicyViolation, InvalidRequest) as exc:
            return self._veto(task, exc)
        except TesseraError as exc:
            log.warning("task failed job=%s code=%s", task.job_id, exc.code)
            return self._veto(task, exc)

    def _veto(self, task: node_pb2.Task, exc: TesseraError) -> Outcome:
        log.info("veto job=%s code=%s", task.job_id, exc.code)
        veto = Veto(
            node_id=self.node_id, code=exc.code, reason=exc.message, policy_hash=self.policy.policy_hash
        )
        return Outcome(
            veto=node_pb2.VetoReport(
                task_id=task.task_id,
                job_id=task.job_id,
                round=task.round,
                stage=task.stage,
                veto=serde.veto_to_pb(veto),
            )
        )
