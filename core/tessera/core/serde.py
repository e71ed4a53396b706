"""The only place that converts protobuf messages to Tessera's dataclasses and back."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from tessera.core.analyses.inventory import InventoryReport
from tessera.core.errors import InvalidRequest
from tessera.core.types import (
    DatasetSchema,
    FieldSchema,
    JobSpec,
    JobState,
    ParamValue,
    PolicySummary,
    Stage,
    Tier,
    Veto,
)
from tessera.v1 import common_pb2 as pb
from tessera.v1 import node_pb2 as node_pb

_STATE_TO_PB = {
    JobState.PENDING: pb.JOB_STATE_PENDING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}

_STAGE_TO_PB = {
    Stage.LOCAL_REPORT: pb.STAGE_LOCAL_REPORT,
    Stage.ADVERTISE_KEYS: pb.STAGE_ADVERTISE_KEYS,
    Stage.SHARE_KEYS: pb.STAGE_SHARE_KEYS,
    Stage.MASKED_INPUT: pb.STAGE_MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: pb.STAGE_CONSISTENCY_CHECK,
    Stage.UNMASK: pb.STAGE_UNMASK,
    Stage.PSI: pb.STAGE_PSI,
    Stage.ABORT: pb.STAGE_ABORT,
}
_STAGE_FROM_PB = {v: k for k, v in _STAGE_TO_PB.items()}

_TIER_TO_PB = {
    Tier.CORE_SENSITIVE: pb.TIER_CORE_SENSITIVE,
    Tier.GENERAL_SENSITIVE: pb.TIER_GENERAL_SENSITIVE,
    Tier.NON_SENSITIVE: pb.TIER_NON_SENSITIVE,
}
_TIER_FROM_PB = {v: k for k, v in _TIER_TO_PB.items()}


def state_to_pb(state: JobState) -> pb.JobState.ValueType:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> JobState:
    try:
        return _STATE_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidRequest("unknown job state on the wire") from None


def stage_to_pb(stage: Stage) -> pb.Stage.ValueType:
    return _STAGE_TO_PB[stage]


def stage_from_pb(value: int) -> Stage:
    try:
        return _STAGE_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidRequest("unknown or missing round stage") from None


def time_to_pb(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def time_from_pb(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def param_to_pb(value: ParamValue) -> pb.ParamValue:
    # bool before int: bool is a subclass of int in Python.
    if isinstance(value, bool):
        return pb.ParamValue(bool_value=value)
    if isinstance(value, int):
        return pb.ParamValue(int_value=value)
    if isinstance(value, float):
        return pb.ParamValue(double_value=value)
    if isinstance(value, str):
        return pb.ParamValue(string_value=value)
    if all(isinstance(v, str) for v in value):
        return pb.ParamValue(string_list=pb.StringList(values=[str(v) for v in value]))
    return pb.ParamValue(double_list=pb.DoubleList(values=[float(v) for v in value]))


def param_from_pb(value: pb.ParamValue) -> ParamValue:
    kind = value.WhichOneof("kind")
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "string_list":
        return tuple(value.string_list.values)
    if kind == "double_list":
        return tuple(value.double_list.values)
    raise InvalidRequest("a job parameter has no value")


def job_spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    msg = pb.JobSpec(
        analysis=spec.analysis,
        dataset=spec.dataset,
        purpose=spec.purpose,
        epsilon=spec.epsilon,
        delta=spec.delta,
        participants=list(spec.participants),
        min_participants=spec.min_participants,
    )
    for name, value in spec.params.items():
        msg.params[name].CopyFrom(param_to_pb(value))
    if spec.deadline is not None:
        msg.deadline.FromDatetime(spec.deadline.astimezone(UTC))
    return msg


def job_spec_from_pb(msg: pb.JobSpec) -> JobSpec:
    return JobSpec(
        analysis=msg.analysis,
        dataset=msg.dataset,
        purpose=msg.purpose,
        params={name: param_from_pb(value) for name, value in msg.params.items()},
        epsilon=msg.epsilon,
        delta=msg.delta,
        participants=tuple(msg.participants),
        deadline=time_from_pb(msg.deadline) if msg.HasField("deadline") else None,
        min_participants=msg.min_participants,
    )


def policy_summary_to_pb(summary: PolicySummary) -> pb.PolicySummary:
    return pb.PolicySummary(
        policy_id=summary.policy_id,
        policy_hash=summary.policy_hash,
        allowed_analyses=list(summary.allowed_analyses),
        allowed_purposes=list(summary.allowed_purposes),
        epsilon_per_job=summary.epsilon_per_job,
        epsilon_per_period=summary.epsilon_per_period,
        period=summary.period,
        delta=summary.delta,
        min_cohort_size=summary.min_cohort_size,
        min_participants=summary.min_participants,
        allowed_partners=list(summary.allowed_partners),
        retention_days=summary.retention_days,
        collusion_tolerance=summary.collusion_tolerance,
    )


def policy_summary_from_pb(msg: pb.PolicySummary) -> PolicySummary:
    return PolicySummary(
        policy_id=msg.policy_id,
        policy_hash=msg.policy_hash,
        allowed_analyses=tuple(msg.allowed_analyses),
        allowed_purposes=tuple(msg.allowed_purposes),
        epsilon_per_job=msg.epsilon_per_job,
        epsilon_per_period=msg.epsilon_per_period,
        period=msg.period,
        delta=msg.delta,
        min_cohort_size=msg.min_cohort_size,
        min_participants=msg.min_participants,
        allowed_partners=tuple(msg.allowed_partners),
        retention_days=msg.retention_days,
        collusion_tolerance=msg.collusion_tolerance,
    )


def dataset_to_pb(schema: DatasetSchema) -> pb.DatasetSchema:
    return pb.DatasetSchema(
        name=schema.name,
        fields=[pb.FieldSchema(name=f.name, type=f.type, tier=_TIER_TO_PB[f.tier]) for f in schema.fields],
    )


def dataset_from_pb(msg: pb.DatasetSchema) -> DatasetSchema:
    fields = []
    for f in msg.fields:
        if f.tier not in _TIER_FROM_PB:
            raise InvalidRequest(f"field {f.name!r} of dataset {msg.name!r} has no tier")
        fields.append(FieldSchema(name=f.name, type=f.type, tier=_TIER_FROM_PB[f.tier]))
    return DatasetSchema(name=msg.name, fields=tuple(fields))


def veto_to_pb(veto: Veto) -> pb.Veto:
    return pb.Veto(node_id=veto.node_id, code=veto.code, reason=veto.reason, policy_hash=veto.policy_hash)


def veto_from_pb(msg: pb.Veto) -> Veto:
    return Veto(node_id=msg.node_id, code=msg.code, reason=msg.reason, policy_hash=msg.policy_hash)


def inventory_to_pb(report: InventoryReport) -> node_pb.InventoryReport:
    return node_pb.InventoryReport(
        policy=policy_summary_to_pb(report.policy),
        datasets=[dataset_to_pb(d) for d in report.datasets],
        node_version=report.node_version,
    )


def inventory_from_pb(msg: node_pb.InventoryReport) -> InventoryReport:
    return InventoryReport(
        policy=policy_summary_from_pb(msg.policy),
        datasets=tuple(dataset_from_pb(d) for d in msg.datasets),
        node_version=msg.node_version,
    )
