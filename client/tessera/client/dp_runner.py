"""The node's half of a DP job: policy and budget first, then one private sum per round.

A job is a program of rounds (``core.analyses.program``) run inside secure-aggregation key epochs.
ADVERTISE_KEYS opens an epoch: check the job against the policy, check the security parameters the
coordinator proposes against the node's own, plan the round, verify every participant's certificate
(each once per node process, ``peer_keys``), reserve the budget of the WHOLE job (all rounds;
idempotent, so a new epoch of a job it already joined reuses the reservation) — all before any data
is read — and advertise the epoch's signed keys. SHARE_KEYS shares the key secrets and the first
self-mask. Each round then runs MASKED_INPUT (read the data, compute the round's clipped vector
from the public input, add this node's noise share, mask it; the message is charged that round's ρ
in the same transaction as its egress record), CONSISTENCY_CHECK (sign the survivor set) and UNMASK
(reveal shares once at least the quorum signed the same set; hand over the next round's self-mask
shares). A job that ends frees what no round spent. A refusal at any stage is a veto.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.client.budget import BudgetLedger, Reservation
from tessera.client.datasource import DataSource, read_for_plan
from tessera.client.egress import EgressRecord
from tessera.client.outgoing import Outgoing
from tessera.client.peer_keys import FetchCertificates, PeerKeys
from tessera.core.analyses.contribution import customers_in
from tessera.core.analyses.customer_table import plan_fields, read_columns
from tessera.core.analyses.program import Program, check_public
from tessera.core.analyses.registry import get_program
from tessera.core.analyses.vector import VectorPlan, add_noise, bits_for, encode
from tessera.core.dp import secure_generator
from tessera.core.errors import Conflict, InvalidRequest, PkiError, PolicyViolation
from tessera.core.pki import TlsFiles
from tessera.core.policy import Policy, check_job
from tessera.core.rounds import RoundSetup, analysis_spec
from tessera.core.secagg import EpochSessions, SecAggClient, SecurityParams, codec
from tessera.core.secagg.messages import ConsistencyRequest, ForwardedShares, KeyRoster, UnmaskRequest
from tessera.core.types import JobSpec, Stage
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.node.dp")
JOB_TTL_S = 3600.0  # forget a job that has been idle this long (its reservation then expires)


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
class _Job:
    """What the node holds for one DP job: its reservation and the current key epoch."""

    spec: JobSpec
    program: Program
    reservation: Reservation
    setup: RoundSetup
    client: SecAggClient
    n_nodes: int
    plan: VectorPlan | None = None
    touched: float = field(default_factory=time.monotonic)
    # The job's data, read at its first masked input and reused by its later rounds: every round of
    # a job sees one snapshot (a model is fitted to one population), and is not re-read 30 times.
    columns: dict[str, np.ndarray] | None = None
    columns_key: tuple[str, tuple[str, ...]] | None = None


class DpRunner:
    def __init__(
        self,
        node_id: str,
        policy: Policy,
        data: DataSource,
        identity: NodeIdentity,
        budget: BudgetLedger,
        *,
        fetch_certificates: FetchCertificates | None = None,
    ) -> None:
        self.node_id = node_id
        self.policy = policy
        self.data = data
        self.identity = identity
        self.budget = budget
        self.security = SecurityParams.from_policy(policy)
        self.peers = PeerKeys(identity.ca_path, identity.crl_path, fetch_certificates)
        self._jobs: dict[str, _Job] = {}
        self._epochs = EpochSessions()  # destroys a job's older epoch before a newer one starts

    def forget(self, job_id: str) -> None:
        """Drop a job's keys and give back the budget no round spent (job ended, vetoed or failed)."""
        state = self._jobs.pop(job_id, None)
        self._epochs.end(job_id)
        if state is not None:
            # What a round spent stays spent: it was paid for when its masked input left.
            with contextlib.suppress(Conflict):
                self.budget.release(state.reservation)

    def handle(self, task: node_pb2.Task, spec: JobSpec, stage: Stage) -> Outgoing:
        if stage is Stage.ADVERTISE_KEYS:
            return self._advertise(task, spec)
        if stage is Stage.ABORT:
            self.forget(task.job_id)
            self._release_unknown(task.job_id)
            return Outgoing(
                record=self._record(task, spec, stage, plan=None, charged=False),
                message=node_pb2.RoundMessage(
                    task_id=task.task_id,
                    job_id=task.job_id,
                    round=task.round,
                    stage=task.stage,
                    secagg=node_pb2.OpaqueStage(data=b"", codec="abort/ack"),
                ),
            )
        state = self._jobs.get(task.job_id)
        if state is None:
            raise InvalidRequest(f"this node holds no open round for stage {stage.value} of this job")
        state.touched = time.monotonic()
        if stage is Stage.SHARE_KEYS:
            roster = codec.decode(task.stage_input)
            if not isinstance(roster, KeyRoster):
                raise InvalidRequest("the share-keys stage input is not a key roster")
            return self._send(task, state, stage, codec.encode(state.client.share_keys(roster)))
        if stage is Stage.MASKED_INPUT:
            return self._masked_input(task, state)
        if stage is Stage.CONSISTENCY_CHECK:
            request = codec.decode(task.stage_input)
            if not isinstance(request, ConsistencyRequest):
                raise InvalidRequest("the consistency-check stage input is not a survivor list")
            return self._send(task, state, stage, codec.encode(state.client.consistency(request)))
        if stage is Stage.UNMASK:
            request = codec.decode(task.stage_input)
            if not isinstance(request, UnmaskRequest):
                raise InvalidRequest("the unmask stage input is not an unmask request")
            out = self._send(task, state, stage, codec.encode(state.client.unmask(request)))
            if not request.next_round:
                self.forget(task.job_id)  # the last round of the job: nothing more to keep
            return out
        raise InvalidRequest(f"this node does not take part in stage {stage.value}")

    def _release_unknown(self, job_id: str) -> None:
        """A restarted node may hold a reservation of a job it no longer has keys for: free it."""
        for reservation in self.budget.history(job_id=job_id):
            with contextlib.suppress(Conflict, InvalidRequest):
                self.budget.release(reservation)

    def _advertise(self, task: node_pb2.Task, spec: JobSpec) -> Outgoing:
        self._prune()
        setup = RoundSetup.from_bytes(task.stage_input)
        if (setup.job_id, setup.round_no) != (
            task.job_id,
            task.round,
        ) or self.node_id not in setup.participants:
            raise InvalidRequest("the round set-up does not match this node's task")
        if setup.max_customers < 1:
            raise InvalidRequest("the round set-up declares no per-node population to size its sums for")
        job_nodes = tuple(task.participants) or setup.participants
        check_job(self.policy, spec, node_name=self.node_id, participants=job_nodes)
        program = get_program(spec.analysis)
        # The node's own security parameters decide; the coordinator only proposes (fail closed).
        config = setup.config(self.security)
        plan = self._plan(program, spec, setup, task.round, task.round_input, n_nodes=len(job_nodes))
        peer_keys = self.peers.for_setup(setup)
        previous = self._jobs.get(task.job_id)
        # Budget last among the checks: a reservation is the only one that changes state. It is
        # the whole job's, idempotent per job, so a new epoch reuses what the job reserved.
        reservation = (
            previous.reservation
            if previous is not None
            else self.budget.reserve(
                job_id=task.job_id,
                dataset=spec.dataset,
                epsilon=spec.epsilon,
                delta=spec.delta,
                rounds=program.max_rounds(analysis_spec(spec)),
                analyst=task.submitter,
            )
        )
        try:
            client = SecAggClient(
                config,
                node_id=self.node_id,
                signing_key=self.identity.signing_key,
                peer_keys=peer_keys,
                security=self.security,
            )
            # Any older epoch of this job is destroyed before the new one exists (and an epoch
            # number not newer than one joined is refused): nothing of it can be unmasked
            # afterwards, which is why a re-run round is charged only once.
            self._epochs.start(client)
            state = _Job(spec, program, reservation, setup, client, n_nodes=len(job_nodes), plan=plan)
            if previous is not None:  # a new key epoch of the same job: same data snapshot
                state.columns, state.columns_key = previous.columns, previous.columns_key
            self._jobs[task.job_id] = state
            return self._send(task, state, Stage.ADVERTISE_KEYS, codec.encode(client.advertise()))
        except Exception:
            self.forget(task.job_id)
            if previous is None:
                with contextlib.suppress(Conflict):
                    self.budget.release(reservation)
            raise

    def _plan(
        self,
        program: Program,
        spec: JobSpec,
        setup: RoundSetup,
        round_no: int,
        round_input: bytes,
        *,
        n_nodes: int,
    ) -> VectorPlan:
        """The round's plan from the spec and the public input only; checked against the set-up."""
        try:
            public = check_public(json.loads(round_input or b"{}"))
        except ValueError:
            raise InvalidRequest("the round's public input is not JSON") from None
        schema = next((d for d in self.data.schemas() if d.name == spec.dataset), None)
        if schema is None:
            self.policy.dataset(spec.dataset)  # vetoes an unclassified dataset by name
            raise InvalidRequest(f"this node serves no dataset {spec.dataset!r}")
        if setup.collusion < self.policy.collusion_tolerance:
            raise PolicyViolation(
                f"the job sizes its noise for {setup.collusion} colluding node(s); this node's policy "
                f"requires a margin of {self.policy.collusion_tolerance}",
                code="policy.collusion_margin",
            )
        plan = program.plan(
            analysis_spec(spec),
            plan_fields(spec.dataset, self.data.schemas()),
            survivors_t=setup.threshold - setup.collusion,
            n_nodes=n_nodes,
            round_no=round_no,
            public=public,
        )
        if plan.length != setup.length:
            raise InvalidRequest("the coordinator's vector length differs from this node's plan")
        if setup.bits < bits_for(plan, max_customers=setup.max_customers):
            raise InvalidRequest("the coordinator's modulus is too narrow for the job's declared population")
        return plan

    def _masked_input(self, task: node_pb2.Task, state: _Job) -> Outgoing:
        forwarded = codec.decode(task.stage_input)
        if not isinstance(forwarded, ForwardedShares):
            raise InvalidRequest("the masked-input stage input is not a set of forwarded shares")
        plan = self._plan(
            state.program, state.spec, state.setup, task.round, task.round_input, n_nodes=state.n_nodes
        )
        state.plan = plan
        config = state.client.config
        key = (state.spec.dataset, tuple(plan.fields))
        if state.columns is None or state.columns_key != key:
            if any("." in name for name in plan.fields):  # customers.<field> joined in
                state.columns = read_columns(self.data.read, *key)
            else:
                state.columns = read_for_plan(self.data, *key)
            state.columns_key = key
        columns = state.columns
        population = customers_in(plan, columns)
        if population > state.setup.max_customers:
            # The modulus was sized for the declared population: more customers could wrap the sum.
            raise PolicyViolation(
                f"this node holds more customers than the job declares (max_customers "
                f"{state.setup.max_customers}); the sum could wrap, so nothing was sent",
                code="node.population_too_large",
            )
        rng = secure_generator()
        noisy = add_noise(plan, state.program.local_vector(plan, columns, rng=rng), rng=rng)
        vector = encode(noisy, bits=config.bits).astype(config.dtype)
        masked = state.client.masked_input(forwarded, vector, round_no=task.round)
        return self._send(task, state, Stage.MASKED_INPUT, codec.encode(masked), charged=True)

    def _record(
        self, task: node_pb2.Task, spec: JobSpec, stage: Stage, *, plan: VectorPlan | None, charged: bool
    ) -> EgressRecord:
        noise: dict[str, float | int | str] = {}
        if charged and plan is not None:
            noise = {f"sigma_{p.name}": float(p.sigma) for p in plan.parts}
            noise["mechanism"] = "distributed_discrete_gaussian"
            noise["survivors_t"] = plan.survivors_t
        return EgressRecord(
            job_id=task.job_id,
            round=task.round,
            stage=stage.value,
            purpose=spec.purpose or "unspecified",
            analysis=spec.analysis,
            fields=plan.fields if charged and plan is not None else (),
            shape=(plan.length,) if charged and plan is not None else (),
            noise=noise,
            rho=plan.rho if charged and plan is not None else 0.0,
            epsilon=spec.epsilon if charged else 0.0,
            delta=spec.delta if charged else 0.0,
            policy_hash=self.policy.policy_hash,
        )

    def _send(
        self, task: node_pb2.Task, state: _Job, stage: Stage, data: bytes, *, charged: bool = False
    ) -> Outgoing:
        record = self._record(task, state.spec, stage, plan=state.plan, charged=charged)
        message = node_pb2.RoundMessage(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=task.stage,
            secagg=node_pb2.OpaqueStage(data=data, codec=f"secagg/v2/{stage.value}"),
        )
        return Outgoing(record=record, message=message, reservation=state.reservation if charged else None)

    def _prune(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, r in self._jobs.items() if now - r.touched > JOB_TTL_S]:
            self.forget(job_id)
