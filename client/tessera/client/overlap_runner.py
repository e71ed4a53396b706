"""The node's half of an ``overlap`` job: policy per pair, budget, blinded lists, reblinded lists.

Stage 1 (round 1): check the job against the policy (analysis, purpose, ε, δ), then each pair:
the partner must be allowed (``allowed_partners`` and the policy's ``overlap.partners``) on the
job's identifier; a refused pair is answered with a refusal frame (the pair shows as refused in
the result), the others go on. The per-period limit on overlap jobs and the budget are checked
by the reservation (``dataset`` ``overlap`` marks it), all before any identifier is read. Then
one blinded list per accepted pair (fresh scalar, its own dummies), sent in 4 MiB parts; the
first part is charged the job's whole ρ in the same transaction as its egress record.
Stage 2 (round 2): the coordinator relays the partners' lists a part per task; each part is
acknowledged; once every expected list is whole the node answers with its reblinded lists and
forgets the job's secrets. An end notice (ABORT) forgets them too and frees an unspent reservation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from tessera.client.budget import BudgetLedger, Reservation
from tessera.client.budget.records import ReservationState
from tessera.client.egress import EgressRecord
from tessera.client.outgoing import Outgoing
from tessera.client.overlap_source import IdentifierSource
from tessera.core.analyses import overlap
from tessera.core.dp import secure_generator
from tessera.core.errors import Conflict, InvalidRequest, PolicyViolation
from tessera.core.policy import Policy, check_job
from tessera.core.psi.noise import DummyPlan, job_rho, plan_dummies
from tessera.core.psi.parallel import Blinder
from tessera.core.psi.protocol import PairSide
from tessera.core.psi.wire import Assembler, Frame, FrameKind, refusal, split
from tessera.core.types import JobSpec, Stage
from tessera.v1 import node_pb2

log = logging.getLogger("tessera.node.overlap")
BUDGET_MARK = "overlap"  # the reservation's recorded dataset: how overlap jobs are counted per period
JOB_TTL_S = 3600.0


@dataclass
class _Job:
    spec: JobSpec
    sides: dict[int, PairSide]
    plan: DummyPlan
    expected: int | None = None  # pairs whose lists stage 2 relays (from the frames)
    inbox: Assembler = field(default_factory=Assembler)
    touched: float = field(default_factory=time.monotonic)


class OverlapRunner:
    def __init__(
        self,
        node_id: str,
        policy: Policy,
        identifiers: IdentifierSource | None,
        budget: BudgetLedger,
        *,
        workers: int | None = None,
    ) -> None:
        self.node_id = node_id
        self.policy = policy
        self.identifiers = identifiers
        self.budget = budget
        self.blinder = Blinder(workers)
        self._jobs: dict[str, _Job] = {}

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def handle(self, task: node_pb2.Task, spec: JobSpec, stage: Stage) -> Outgoing:
        if stage is Stage.ABORT:
            self.forget(task.job_id)
            for reservation in self.budget.history(job_id=task.job_id):
                with contextlib.suppress(Conflict, InvalidRequest):
                    self.budget.release(reservation)  # spent stays spent; only the unspent is freed
            return self._out(task, spec, "abort", b"", codec="abort/ack")
        if stage is not Stage.PSI:
            raise InvalidRequest(f"an overlap job has no stage {stage.value}")
        if task.round == 1:
            return self._blind(task, spec)
        if task.round == 2:
            return self._reblind(task, spec)
        raise InvalidRequest("an overlap job has two rounds")

    # -- stage 1 ----------------------------------------------------------------------------------

    def _blind(self, task: node_pb2.Task, spec: JobSpec) -> Outgoing:
        self._prune()
        if task.job_id in self._jobs:
            raise InvalidRequest("this node already sent its blinded lists for this job")
        params = overlap.parse(spec)
        pairs = overlap.read_blind_input(task.stage_input)
        check_job(
            self.policy,
            _checked_spec(spec),
            node_name=self.node_id,
            participants=(self.node_id,),  # pairwise by design: partners are checked per pair below
        )
        refused = {i: self._refusal(partner, params.identifier) for i, partner in pairs.items()}
        accepted = sorted(i for i, why in refused.items() if not why)
        frames = [refusal(i, why) for i, why in sorted(refused.items()) if why]
        if not accepted:
            return self._frames(task, spec, frames, reservation=None)
        label = params.label_for(self.node_id)
        if self.identifiers is None:
            raise PolicyViolation("this node serves no identifiers to match on", code="overlap.no_identifier")
        reservation = self._reserve(task.job_id, spec, analyst=task.submitter)
        try:
            values = self.identifiers.identifiers(params.identifier, label=label)
            plan = plan_dummies(rho=reservation.rho, pairs=len(accepted), delta=spec.delta)
            rng = secure_generator()
            # Hashed once, blinded once per pair; with one pair hashing and blinding go together.
            hashed = self.blinder.hash(params.identifier, values) if len(accepted) > 1 else None
            sides: dict[int, PairSide] = {}
            lists: list[Frame] = []
            for i in accepted:
                side, extra = PairSide.new(plan, rng=rng)
                sides[i] = side
                blinded = side.blinded(
                    params.identifier, values, extra=extra, blinder=self.blinder, hashed=hashed
                )
                lists.extend(split(FrameKind.BLINDED, i, blinded, public=side.public))
        except Exception:
            with contextlib.suppress(Conflict):
                self.budget.release(reservation)
            raise
        self._jobs[task.job_id] = _Job(spec=spec, sides=sides, plan=plan)
        log.info("overlap blinded job=%s pairs=%d refused=%d", task.job_id, len(accepted), len(frames))
        return self._frames(task, spec, lists + frames, reservation=reservation, plan=plan)

    def _refusal(self, partner: str, identifier: str) -> str:
        policy = self.policy
        if not policy.any_partner and partner not in policy.allowed_partners:
            return f"node {self.node_id} may not compute with partner {partner}"
        rules = policy.overlap
        if rules is None:
            return f"node {self.node_id} has no overlap rules in its policy"
        kinds = rules.identifiers_for(partner)
        if not kinds:
            return f"node {self.node_id} does not match customers with partner {partner}"
        if identifier not in kinds:
            return f"node {self.node_id} matches with partner {partner} only on {', '.join(kinds)}"
        return ""

    def _reserve(self, job_id: str, spec: JobSpec, *, analyst: str) -> Reservation:
        rules = self.policy.overlap
        assert rules is not None
        since = datetime.now(UTC) - timedelta(days=self.policy.privacy.period_days)
        # A job counts once it has spent anything or still holds a reservation.
        recent = [
            r
            for r in self.budget.history()
            if r.dataset == BUDGET_MARK
            and r.job_id != job_id
            and _utc(r.created_at) >= since
            and (r.rho_spent > 0 or r.state is ReservationState.RESERVED)
        ]
        if len(recent) >= rules.max_jobs_per_period:
            raise PolicyViolation(
                f"node {self.node_id} allows {rules.max_jobs_per_period} overlap job(s) per "
                f"{self.policy.privacy.period_days} days and that many have run",
                code="policy.overlap_period_limit",
            )
        return self.budget.reserve(
            job_id=job_id,
            epsilon=spec.epsilon,
            delta=spec.delta,
            rho=job_rho(epsilon=spec.epsilon, delta=spec.delta),
            rounds=1,
            dataset=BUDGET_MARK,
            analyst=analyst,
        )

    # -- stage 2 ----------------------------------------------------------------------------------

    def _reblind(self, task: node_pb2.Task, spec: JobSpec) -> Outgoing:
        job = self._jobs.get(task.job_id)
        if job is None:
            raise InvalidRequest("this node holds no blinded lists of this job")
        job.touched = time.monotonic()
        frame = Frame.decode(task.stage_input)
        if frame.kind is not FrameKind.BLINDED or frame.pair not in job.sides:
            raise InvalidRequest("the relayed list is not a partner's list of one of this node's pairs")
        job.inbox.add(frame)
        job.expected = frame.expect
        pairs = job.inbox.pairs()
        if len(pairs) < job.expected or not all(job.inbox.whole(p) for p in pairs):
            return self._out(task, spec, "psi.ack", b"", codec="psi/v1/ack")
        frames: list[Frame] = []
        for i in sorted(pairs):
            side = job.sides[i]
            raised = side.reblinded(job.inbox.public[i], job.inbox.elements(i), blinder=self.blinder)
            job.inbox.drop(i)
            frames.extend(split(FrameKind.REBLINDED, i, raised, public=side.public))
        self.forget(task.job_id)  # the scalars are gone: nothing more can be computed from them
        return self._frames(task, spec, frames, reservation=None)

    # -- messages ---------------------------------------------------------------------------------

    def _frames(
        self,
        task: node_pb2.Task,
        spec: JobSpec,
        frames: list[Frame],
        *,
        reservation: Reservation | None,
        plan: DummyPlan | None = None,
    ) -> Outgoing:
        stage = "psi.blind" if task.round == 1 else "psi.reblind"
        outs = []
        for n, frame in enumerate(frames):
            charged = reservation is not None and n == 0
            outs.append(
                self._out(
                    task,
                    spec,
                    stage,
                    frame.encode(),
                    codec=f"psi/v1/{frame.kind.name.lower()}",
                    reservation=reservation if charged else None,
                    plan=plan if charged else None,
                    elements=frame.count,
                )
            )
        return Outgoing(
            record=outs[0].record,
            message=outs[0].message,
            reservation=outs[0].reservation,
            more=tuple(outs[1:]),
        )

    def _out(
        self,
        task: node_pb2.Task,
        spec: JobSpec,
        stage: str,
        data: bytes,
        *,
        codec: str,
        reservation: Reservation | None = None,
        plan: DummyPlan | None = None,
        elements: int = 0,
    ) -> Outgoing:
        noise: dict[str, float | int | str] = {}
        if plan is not None:
            noise = {
                "mechanism": "dummy_elements_truncated_discrete_gaussian",
                "sigma": plan.sigma,
                "cap": plan.cap,
                "pairs": plan.pairs,
                "truncation_delta": plan.tail_delta,
            }
        record = EgressRecord(
            job_id=task.job_id,
            round=task.round,
            stage=stage,
            purpose=spec.purpose or "unspecified",
            analysis=spec.analysis,
            fields=(str(spec.params.get("identifier", "email")),) if elements else (),
            shape=(elements,) if elements else (),
            noise=noise,
            rho=reservation.rho if reservation is not None else 0.0,
            epsilon=spec.epsilon if reservation is not None else 0.0,
            delta=spec.delta if reservation is not None else 0.0,
            policy_hash=self.policy.policy_hash,
        )
        message = node_pb2.RoundMessage(
            task_id=task.task_id,
            job_id=task.job_id,
            round=task.round,
            stage=task.stage,
            psi=node_pb2.OpaqueStage(data=data, codec=codec),
        )
        return Outgoing(record=record, message=message, reservation=reservation)

    def _prune(self) -> None:
        now = time.monotonic()
        for job_id in [j for j, s in self._jobs.items() if now - s.touched > JOB_TTL_S]:
            self.forget(job_id)


def _checked_spec(spec: JobSpec) -> JobSpec:
    """What ``check_job`` sees: overlap reads the customers (its identifiers and labels)."""
    return replace(spec, dataset=spec.dataset or overlap.DATASET)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
