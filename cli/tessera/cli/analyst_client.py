"""A small analyst-side client of the coordinator, turning gRPC errors into Tessera errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from tessera.core import serde
from tessera.core.errors import PkiError, TesseraError, Unavailable
from tessera.core.grpc_status import MAX_MESSAGE_BYTES, from_rpc_error
from tessera.core.pki import TlsFiles, channel_credentials, load_tls
from tessera.core.pki.server_check import check_coordinator
from tessera.core.types import JobSpec
from tessera.v1 import analyst_pb2, analyst_pb2_grpc


class AnalystClient:
    def __init__(self, target: str, tls: TlsFiles, *, timeout_s: float = 15.0) -> None:
        load_tls(tls)  # one plain sentence for a missing, foreign or expired certificate
        self.target = target
        self.tls = tls
        self.timeout_s = timeout_s
        self._channel = grpc.secure_channel(
            target,
            channel_credentials(tls),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = analyst_pb2_grpc.AnalystServiceStub(self._channel)

    @classmethod
    def from_pki(cls, target: str, pki_dir: Path, user: str, **kwargs: Any) -> AnalystClient:
        return cls(target, TlsFiles.for_identity(pki_dir, "analyst", user), **kwargs)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AnalystClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> TesseraError:
        error = from_rpc_error(exc, target=self.target)
        if isinstance(error, Unavailable):
            # gRPC says only "unavailable": our own handshake tells a coordinator certificate that
            # names another host, comes from another CA or is revoked from one that is not there.
            try:
                check_coordinator(self.target, self.tls)
            except PkiError as cause:
                return cause
        return error

    def submit(self, spec: JobSpec) -> str:
        response = self._call("SubmitJob", analyst_pb2.SubmitJobRequest(spec=serde.job_spec_to_pb(spec)))
        return str(response.job_id)

    def job(self, job_id: str) -> analyst_pb2.Job:
        job: analyst_pb2.Job = self._call("GetJob", analyst_pb2.GetJobRequest(job_id=job_id))
        return job

    def cancel(self, job_id: str) -> analyst_pb2.Job:
        job: analyst_pb2.Job = self._call("CancelJob", analyst_pb2.CancelJobRequest(job_id=job_id))
        return job

    def result(self, job_id: str) -> analyst_pb2.JobResult:
        res: analyst_pb2.JobResult = self._call("GetResult", analyst_pb2.GetResultRequest(job_id=job_id))
        return res

    def result_document(self, job_id: str) -> dict[str, Any]:
        """The result as a JSON-ready document: analysis, state, result, vetoes, error."""
        res = self.result(job_id)
        return {
            "job_id": res.job_id,
            "analysis": res.analysis,
            "status": serde.state_from_pb(res.state).value,
            "result": json.loads(res.result_json) if res.result_json else None,
            "vetoes": [
                {"node_id": v.node_id, "code": v.code, "reason": v.reason, "policy_hash": v.policy_hash}
                for v in res.vetoes
            ],
            "error": res.error,
        }

    def jobs(self, limit: int = 50) -> list[analyst_pb2.Job]:
        return list(self._call("ListJobs", analyst_pb2.ListJobsRequest(limit=limit)).jobs)

    def nodes(self) -> list[analyst_pb2.NodeInfo]:
        return list(self._call("ListNodes", analyst_pb2.ListNodesRequest()).nodes)

    def audit(self, limit: int = 100) -> list[analyst_pb2.AuditEntry]:
        return list(self._call("ListAudit", analyst_pb2.ListAuditRequest(limit=limit)).entries)

    def budgets(self) -> list[analyst_pb2.BudgetView]:
        return list(self._call("ListBudgets", analyst_pb2.ListBudgetsRequest()).budgets)

    def watch(self, job_id: str, *, timeout_s: float | None = None) -> Iterator[analyst_pb2.JobEvent]:
        """Progress events until the job ends (the stream closes after the final state)."""
        try:
            yield from self._stub.WatchJob(analyst_pb2.WatchJobRequest(job_id=job_id), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
