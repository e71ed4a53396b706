"""The node's half of a DP round: policy and budget first, then secure aggregation of its share.

ADVERTISE_KEYS: check the job against the policy, plan the vector, verify every participant's
certificate against the consortium CA, reserve the budget — all before any data is read — and
advertise this round's signed keys. SHARE_KEYS: share the mask secrets. MASKED_INPUT: read the
data, compute the clipped, quantised vector, add this node's noise share, mask it; the message is
charged to the budget in the same transaction as its egress record. CONSISTENCY_CHECK: sign the
survivor set. UNMASK: release the shares once enough survivors signed the same set.
A refusal at any stage is a veto; a reservation that will not be spent is released.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.client.budget import BudgetLedger, Reservation
from tessera.client.datasource import DataSource, read_for_plan
from tessera.client.egress import EgressRecord
from tessera.client.outgoing import Outgoing
from tessera.core.analyses.registry import VectorAnalysis, get_vector_analysis
from tessera.core.analyses.vector import VectorPlan, add_noise, encode
from tessera.core.dp import secure_generator
from tessera.core.errors import Conflict, CryptoError, InvalidRequest, PkiError
from tessera.core.pki import TlsFiles, load_revoked_serials
from tessera.core.pki.verify import verify_certificate
from tessera.core.policy import Policy, check_job
from tessera.core.rounds import RoundSetup, analysis_spec
from tessera.core.secagg import SecAggClient, SecurityParams, codec
from tessera.core.secagg.messages import ConsistencyRequest, ForwardedShares, KeyRoster, UnmaskRequest
from tessera.core.types import JobSpec, Stage
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.node.dp")
ROUND_TTL_S = 3600.0  # forget a round that never finished after this long


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """The node's certificate key (signs its round keys) and the CA it checks peers against."""

    signing_key: ec.EllipticCurvePrivateKey
    ca_path: Path
    crl_path: Path | None = None

    @classmethod
    def from_tls(cls, tls: TlsFiles) -> NodeIdentity:
        key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"the key {tls.key} is not an ECDSA key, so it cannot sign round keys")
        return cls(signing_key=key, ca_path=tls.ca, crl_path=tls.crl)


@dataclass
class _Round:
    setup: RoundSetup
    spec: JobSpec
    analysis: VectorAnalysis
    plan: VectorPlan
    client: SecAggClient
    reservation: Reservation
    started: float = field(default_factory=time.monotonic)


class DpRunner:
    def __init__(
        self, node_id: str, policy: Policy, data: DataSource, identity: NodeIdentity, budget: BudgetLedger
    ) -> None:
        self.node_id = node_id
        self.policy = policy
        self.data = data
        self.identity = identity
        self.budget = budget
        self._rounds: dict[str, _Round] = {}

    def forget(self, job_id: str) -> None:
        """Drop a round's state and give back its unspent reservation (after a veto or failure)."""
        state = self._rounds.pop(job_id, None)
        if state is not None:
            state.client.destroy()
            # A reservation already spent (the masked input left) stays spent: it was paid for.
            with contextlib.suppress(Conflict):
                self.budget.release(state.reservation)

    def handle(self, task: node_pb2.Task, spec: JobSpec, stage: Stage) -> Outgoing:
        if stage is Stage.ADVERTISE_KEYS:
            return self._advertise(task, spec)
        if stage is Stage.ABORT:
            self.forget(task.job_id)
            return Outgoing(
                record=EgressRecord(
                    job_id=task.job_id,
                    round=task.round,
                    stage=stage.value,
                    purpose=spec.purpose or "unspecified",
                    analysis=spec.analysis,
                    fields=(),
                    shape=(),
                    noise={},
                    rho=0.0,
                    epsilon=0.0,
                    delta=0.0,
                    policy_hash=self.policy.policy_hash,
                ),
                message=node_pb2.RoundMessage(
                    task_id=task.task_id,
                    job_id=task.job_id,
                    round=task.round,
                    stage=task.stage,
                    secagg=node_pb2.OpaqueStage(data=b"", codec="abort/ack"),
                ),
            )
        state = self._rounds.get(task.job_id)
        if state is None or state.setup.round_no != task.round:
            raise InvalidRequest(f"this node holds no open round for stage {stage.value} of this job")
        if stage is Stage.SHARE_KEYS:
            roster = codec.decode(task.stage_input)
            if not isinstance(roster, KeyRoster):
                raise InvalidRequest("the share-keys stage input is not a key roster")
            return self._send(task, state, stage, codec.encode(state.client.share_keys(roster)))
        if stage is Stage.MASKED_INPUT:
            return self._masked_input(task, state)
        if stage is Stage.CONSISTENCY_CHECK:
            check = codec.decode(task.stage_input)
            if not isinstance(check, ConsistencyRequest):
                raise InvalidRequest("the consistency-check stage input is not a consistency request")
            return self._send(task, state, stage, codec.encode(state.client.consistency(check)))
        if stage is Stage.UNMASK:
            request = codec.decode(task.stage_input)
            if not isinstance(request, UnmaskRequest):
                raise InvalidRequest("the unmask stage input is not an unmask request")
            out = self._send(task, state, stage, codec.encode(state.client.unmask(request)))
            del self._rounds[task.job_id]
            return out
        raise InvalidRequest(f"this node does not take part in stage {stage.value}")

    def _advertise(self, task: node_pb2.Task, spec: JobSpec) -> Outgoing:
        self._prune()
        setup = RoundSetup.from_bytes(task.stage_input)
        if (setup.job_id, setup.round_no) != (
            task.job_id,
            task.round,
        ) or self.node_id not in setup.participants:
            raise InvalidRequest("the round set-up does not match this node's task")
        check_job(self.policy, spec, node_name=self.node_id, participants=setup.participants)
        analysis = get_vector_analysis(spec.analysis)
        schema = next((d for d in self.data.schemas() if d.name == spec.dataset), None)
        if schema is None:
            self.policy.dataset(spec.dataset)  # vetoes an unclassified dataset by name
            raise InvalidRequest(f"this node serves no dataset {spec.dataset!r}")
        plan = analysis.plan(
            analysis_spec(spec),
            {f.name: f for f in schema.fields},
            survivors_t=setup.threshold,
            n_nodes=len(setup.participants),
        )
        if plan.length != setup.length:
            raise InvalidRequest("the coordinator's vector length differs from this node's plan")
        peer_keys = self._verified_peer_keys(setup)
        self.forget(task.job_id)  # an older epoch of this job is destroyed before a new one starts
        # Budget last among the checks: a reservation is the only one that changes state.
        reservation = self.budget.reserve(
            job_id=task.job_id, dataset=spec.dataset, epsilon=spec.epsilon, delta=spec.delta
        )
        try:
            # The node's own security parameters: it builds the graph and checks the threshold itself.
            security = SecurityParams.from_policy(self.policy)
            client = SecAggClient(
                setup.config(security),
                node_id=self.node_id,
                signing_key=self.identity.signing_key,
                peer_keys=peer_keys,
                security=security,
            )
            state = _Round(setup, spec, analysis, plan, client, reservation)
            self._rounds[task.job_id] = state
            return self._send(task, state, Stage.ADVERTISE_KEYS, codec.encode(client.advertise()))
        except Exception:
            self._rounds.pop(task.job_id, None)
            self.budget.release(reservation)
            raise

    def _masked_input(self, task: node_pb2.Task, state: _Round) -> Outgoing:
        forwarded = codec.decode(task.stage_input)
        if not isinstance(forwarded, ForwardedShares):
            raise InvalidRequest("the masked-input stage input is not a set of forwarded shares")
        plan, config = state.plan, state.client.config
        columns = read_for_plan(self.data, state.spec.dataset, plan.fields)
        rng = secure_generator()
        noisy = add_noise(plan, state.analysis.local_vector(plan, columns, rng=rng), rng=rng)
        vector = encode(noisy, bits=config.bits).astype(config.dtype)
        masked = state.client.masked_input(forwarded, vector, task.round)
        noise: dict[str, float | int | str] = {f"sigma_{p.name}": float(p.sigma) for p in plan.parts}
        noise["mechanism"] = "distributed_discrete_gaussian"
        noise["survivors_t"] = config.threshold
        noise["bits"] = config.bits
        return self._send(
            task,
            state,
            Stage.MASKED_INPUT,
            codec.encode(masked),
            charged=True,
            shape=(plan.length,),
            noise=noise,
        )

    def _send(
        self,
        task: node_pb2.Task,
        state: _Round,
        stage: Stage,
        data: bytes,
        *,
        charged: bool = False,
        shape: tuple[int, ...] = (),
        noise: dict[str, float | int | str] | None = None,
    ) -> Outgoing:
        spec = state.spec
        record = EgressRecord(
            job_id=task.job_id,
            round=task.round,
            stage=stage.value,
            purpose=spec.purpose or "unspecified",
            analysis=spec.analysis,
            fields=state.plan.fields if charged else (),
            shape=shape,
            noise=noise or {},
            rho=state.plan.rho if charged else 0.0,
            epsilon=spec.epsilon if charged else 0.0,
            delta=spec.delta if charged else 0.0,
            policy_hash=self.policy.policy_hash,
        )
        message = node_pb2.RoundMessage(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=task.stage,
            secagg=node_pb2.OpaqueStage(data=data, codec=f"secagg/v1/{stage.value}"),
        )
        return Outgoing(record=record, message=message, reservation=state.reservation if charged else None)

    def _verified_peer_keys(self, setup: RoundSetup) -> dict[str, ec.EllipticCurvePublicKey]:
        """Each participant's certificate key, after checking the CA issued it to that node."""
        revoked = (
            load_revoked_serials(self.identity.crl_path, self.identity.ca_path)
            if self.identity.crl_path is not None
            else frozenset()
        )
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        certificates = dict(setup.certificates)
        for node in setup.participants:
            pem = certificates.get(node, "").encode()
            identity = verify_certificate(pem, self.identity.ca_path, kind="node", revoked=revoked)
            if identity.name != node:
                raise CryptoError("a relayed certificate names another node than the one it stands for")
            public = x509.load_pem_x509_certificate(pem).public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise CryptoError("a peer certificate does not hold an ECDSA key")
            keys[node] = public
        return keys

    def _prune(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, r in self._rounds.items() if now - r.started > ROUND_TTL_S]:
            self.forget(job_id)
