"""A DP job on the coordinator: its program of rounds, its key epochs and the driver's state.

A job runs its program (``core.analyses.program``) round by round. Each round is one private
vector sum inside a secure-aggregation *epoch* (``DpRound``): the first round of an epoch runs
advertise-keys, share-keys, masked-input, consistency-check and unmask; every later round of the
same epoch only masked-input, consistency-check and unmask (the keys are reused, the self masks
are fresh). A new epoch starts when the job starts, after a coordinator restart, and when a
round's vector changes length or width.

What is persisted (``DriverState``, JSON in the job row, written in the same transaction as each
released round): the next round, its public input, the nodes still in the job and those out of
it, the quorum. Nothing secret: key material lives only in the nodes' and this process's memory,
so a restarted coordinator resumes at the first unreleased round with a fresh epoch.

A node that drops in a round (or vetoes) is out for the rest of the job; the job goes on while at
least ``threshold`` nodes remain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tessera.core.analyses.customer_table import plan_fields
from tessera.core.analyses.program import Program, Public, Step, check_public
from tessera.core.analyses.vector import VectorPlan, bits_for
from tessera.core.errors import Conflict, InvalidRequest
from tessera.core.rounds import SPARSE_FROM, RoundSetup, analysis_spec, certificate_fingerprint
from tessera.core.secagg import SecurityParams
from tessera.core.types import FieldSchema, JobSpec, Stage
from tessera.server.dp_round import DpRound, RoundSum
from tessera.server.open_stage import OpenStage
from tessera.server.store import NodeRecord


@dataclass(frozen=True, slots=True)
class DriverState:
    """The persisted state of a DP job between rounds (public values only)."""

    round: int  # the round to run next (or running)
    public: dict[str, Any]
    live: tuple[str, ...]  # nodes still in the job
    out: tuple[str, ...] = ()  # nodes out for the rest of the job (dropped or vetoed)
    epoch: int = 0  # the last epoch started
    threshold: int = 0
    collusion: int = 0
    max_customers: int = 0
    min_cohort_size: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DriverState:
        try:
            doc = json.loads(text)
            return cls(
                round=int(doc["round"]),
                public=dict(doc["public"]),
                live=tuple(doc["live"]),
                out=tuple(doc["out"]),
                epoch=int(doc["epoch"]),
                threshold=int(doc["threshold"]),
                collusion=int(doc.get("collusion", 0)),
                max_customers=int(doc["max_customers"]),
                min_cohort_size=int(doc["min_cohort_size"]),
            )
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest("the stored driver state of this job is unreadable") from None


@dataclass(frozen=True, slots=True)
class Tasks:
    """Tasks to hand out: one stage of one round of one epoch, each node with its own input."""

    stage: Stage
    round: int
    epoch: int
    inputs: Mapping[str, bytes]
    round_input: bytes = b""


@dataclass(frozen=True, slots=True)
class RoundDone:
    """A released round: what the driver made of it, and what comes next (None: the job ended)."""

    round: int
    released: dict[str, Any]
    step: Step
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    state: DriverState
    next: Tasks | None = None
    ended_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class DpJob:
    """The coordinator's half of one DP job (in memory; ``state`` is what survives a restart)."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        program: Program,
        nodes: Sequence[NodeRecord],
        state: DriverState,
    ) -> None:
        self.job_id = job_id
        self.spec = spec
        self.program = program
        self.nodes = {n.node_id: n for n in nodes}
        self.fields = shared_fields(spec.dataset, nodes)
        self.state = state
        self.round: DpRound | None = None
        self.plan: VectorPlan | None = None
        # The open stage as the job service handed it out (its tasks live in memory, see
        # ``OpenStage``); None between stages.
        self.open: OpenStage | None = None
        self._public_bytes: tuple[int, bytes] | None = None  # (round, the round's public input)

    @property
    def max_rounds(self) -> int:
        return self.program.max_rounds(analysis_spec(self.spec))

    @property
    def plan_rho(self) -> float:
        """The ρ of the round being run (what each node charges when its masked input leaves)."""
        assert self.plan is not None
        return self.plan.rho

    @property
    def stage(self) -> Stage | None:
        return None if self.round is None else self.round.stage

    def plan_round(self, round_no: int, public: Public) -> VectorPlan:
        # Noise shares are sized for threshold - collusion honest shares (any of them carry the
        # full noise); the secure-aggregation quorum stays ``threshold``.
        return self.program.plan(
            analysis_spec(self.spec),
            self.fields,
            survivors_t=self.state.threshold - self.state.collusion,
            n_nodes=len(self.nodes),
            round_no=round_no,
            public=public,
        )

    def begin_epoch(self) -> Tasks:
        """A fresh secure-aggregation epoch over the live nodes, starting at ``state.round``."""
        live = tuple(sorted(self.state.live))
        if len(live) < self.state.threshold:
            raise Conflict(
                f"only {len(live)} node(s) remain in the job and its quorum is {self.state.threshold}"
            )
        plan = self.plan_round(self.state.round, self.state.public)
        epoch = self.state.epoch + 1
        # The coordinator proposes the strictest graph any participant requires (each node still
        # builds its own and refuses one below its minimum; a mismatch would stop the epoch).
        security = SecurityParams(
            min_participants=max(3, *(self.nodes[n].policy.min_participants for n in live)),
            collusion_tolerance=self.state.collusion,
        )
        sparse = len(live) >= SPARSE_FROM
        setup = RoundSetup(
            job_id=self.job_id,
            round_no=self.state.round,
            epoch=epoch,
            participants=live,
            threshold=self.state.threshold,
            bits=bits_for(plan, max_customers=self.state.max_customers),
            length=plan.length,
            fingerprints=tuple((n, certificate_fingerprint(self.nodes[n].cert_pem)) for n in live),
            graph_seed=os.urandom(32).hex() if sparse else "",
            degree=security.min_degree(len(live), self.state.threshold) if sparse else 0,
            collusion=self.state.collusion,
            max_customers=self.state.max_customers,
        )
        self.state = replace(self.state, epoch=epoch)
        self.plan = plan
        self.round = DpRound(setup, security, {n: self.nodes[n].cert_pem for n in live})
        encoded = setup.to_bytes()  # encoded once, shared by all tasks
        return Tasks(
            stage=Stage.ADVERTISE_KEYS,
            round=self.state.round,
            epoch=epoch,
            inputs=dict.fromkeys(live, encoded),
            round_input=self._round_input(),
        )

    def rejoin(self, nodes: Sequence[str]) -> None:
        """Take ``nodes`` back into the job from the next epoch on (``begin_epoch`` must follow)."""
        back = set(nodes) & set(self.state.out)
        self.state = replace(
            self.state,
            live=tuple(sorted(set(self.state.live) | back)),
            out=tuple(sorted(set(self.state.out) - back)),
        )

    def _round_input(self) -> bytes:
        # The same for every stage of a round: encoded once per round.
        if self._public_bytes is None or self._public_bytes[0] != self.state.round:
            self._public_bytes = (self.state.round, json.dumps(self.state.public, sort_keys=True).encode())
        return self._public_bytes[1]

    def receive(self, node_id: str, stage: Stage, data: bytes) -> None:
        if self.round is None:
            raise InvalidRequest("this job has no secure-aggregation round open")
        self.round.receive(node_id, stage, data)

    def close_stage(self) -> Tasks | RoundDone:
        """End the open stage with whoever answered; raises ``RoundAborted`` below the quorum."""
        assert self.round is not None and self.plan is not None
        more = self.state.round < self.max_rounds
        outcome = self.round.close_stage(more_rounds=more)
        if not isinstance(outcome, RoundSum):
            return Tasks(
                stage=outcome.stage,
                round=self.state.round,
                epoch=self.state.epoch,
                inputs=outcome.inputs,
                round_input=self._round_input(),
            )
        return self._release(outcome)

    def _release(self, outcome: RoundSum) -> RoundDone:
        assert self.round is not None and self.plan is not None
        plan, round_no = self.plan, self.state.round
        released = self.program.release(
            plan,
            outcome.total,
            summands=len(outcome.survivors),
            min_cohort_size=self.state.min_cohort_size,
        )
        step = self.program.step(
            analysis_spec(self.spec), round_no=round_no, public=self.state.public, released=released
        )
        # A survivor that did not hand over its next self-mask shares cannot mask the next round;
        # after the last planned round nobody hands any over: whoever was summed stays in.
        asked_next = round_no < self.max_rounds
        live = tuple(sorted(outcome.continuing if asked_next else outcome.survivors))
        out = tuple(sorted(set(self.state.out) | (set(self.state.live) - set(live))))
        if step.done:
            self.state = replace(self.state, live=live, out=out)
            self.round = None
            return RoundDone(
                round=round_no,
                released=released,
                step=step,
                survivors=outcome.survivors,
                dropped=outcome.dropped,
                state=self.state,
                ended_early=round_no < self.max_rounds,
            )
        assert step.next_public is not None
        public = check_public(step.next_public)
        next_plan = self.plan_round(round_no + 1, public)
        self.state = replace(self.state, round=round_no + 1, public=public, live=live, out=out)
        same_shape = next_plan.length == plan.length and bits_for(
            next_plan, max_customers=self.state.max_customers
        ) == bits_for(plan, max_customers=self.state.max_customers)
        if len(live) < self.state.threshold:
            raise Conflict(
                f"after round {round_no} only {len(live)} node(s) remain and the quorum is "
                f"{self.state.threshold}"
            )
        if same_shape and outcome.next_inputs:
            self.plan = next_plan
            nxt = Tasks(
                stage=Stage.MASKED_INPUT,
                round=round_no + 1,
                epoch=self.state.epoch,
                inputs=outcome.next_inputs,
                round_input=self._round_input(),
            )
        else:
            nxt = self.begin_epoch()
        return RoundDone(
            round=round_no,
            released=released,
            step=step,
            survivors=outcome.survivors,
            dropped=outcome.dropped,
            state=self.state,
            next=nxt,
        )


def shared_fields(dataset: str, nodes: Sequence[NodeRecord]) -> Mapping[str, FieldSchema]:
    """Fields of ``dataset`` (and ``customers.<field>`` joins) that every participant publishes
    with the same type and tier: what the coordinator plans from, as each node does."""
    if not dataset:
        raise InvalidRequest("a DP job must name the dataset it analyses")
    common: dict[str, FieldSchema] | None = None
    for node in nodes:
        if not any(d.name == dataset for d in node.datasets):
            raise Conflict(f"node {node.node_id} publishes no dataset {dataset!r}")
        fields = plan_fields(dataset, node.datasets)
        common = fields if common is None else {k: v for k, v in common.items() if fields.get(k) == v}
    return common or {}
