"""One secure-aggregation round of a DP job, as the coordinator runs it.

Holds the round's ``SecAggServer`` and the analysis plan in memory: the coordinator routes
messages it cannot read and, at the end, learns only the noisy sum over the surviving nodes,
which the analysis turns into the released table. The state is deliberately never persisted
(it holds key material routing and partial sums), so a coordinator restart fails the job with a
reason instead of resuming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tessera.core.analyses.registry import VectorAnalysis
from tessera.core.analyses.vector import VectorPlan, decode
from tessera.core.errors import InvalidRequest
from tessera.core.rounds import RoundSetup
from tessera.core.secagg import SecAggServer, codec
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
)
from tessera.core.types import Stage

_NEXT = {
    Stage.ADVERTISE_KEYS: Stage.SHARE_KEYS,
    Stage.SHARE_KEYS: Stage.MASKED_INPUT,
    Stage.MASKED_INPUT: Stage.CONSISTENCY_CHECK,
    Stage.CONSISTENCY_CHECK: Stage.UNMASK,
}


@dataclass(frozen=True, slots=True)
class NextStage:
    stage: Stage
    inputs: dict[str, bytes]  # node -> its stage input


@dataclass(frozen=True, slots=True)
class Released:
    result: dict[str, Any]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


class DpRound:
    def __init__(
        self, setup: RoundSetup, plan: VectorPlan, analysis: VectorAnalysis, *, min_cohort_size: int
    ) -> None:
        self.setup = setup
        self.plan = plan
        self.analysis = analysis
        self.min_cohort_size = min_cohort_size
        self.server = SecAggServer(setup.config())
        self.stage = Stage.ADVERTISE_KEYS

    def receive(self, node_id: str, stage: Stage, data: bytes) -> None:
        """Hand one node's stage message to the secure-aggregation server (``peer`` = mTLS name)."""
        if stage is not self.stage:
            raise InvalidRequest(f"the round is in stage {self.stage.value}, not {stage.value}")
        message = codec.decode(data)
        if stage is Stage.ADVERTISE_KEYS and isinstance(message, AdvertiseKeys):
            self.server.receive_advertisement(message, peer=node_id)
        elif stage is Stage.SHARE_KEYS and isinstance(message, ShareKeys):
            self.server.receive_shares(message, peer=node_id)
        elif stage is Stage.MASKED_INPUT and isinstance(message, MaskedInput):
            self.server.receive_masked_input(message, peer=node_id)
        elif stage is Stage.CONSISTENCY_CHECK and isinstance(message, ConsistencySignature):
            self.server.receive_consistency(message, peer=node_id)
        elif stage is Stage.UNMASK and isinstance(message, UnmaskResponse):
            self.server.receive_unmask(message, peer=node_id)
        else:
            raise InvalidRequest(f"the message does not belong to stage {stage.value}")

    def close_stage(self) -> NextStage | Released:
        """End the current stage with whoever answered; raises ``RoundAborted`` below the quorum."""
        if self.stage is Stage.ADVERTISE_KEYS:
            roster = self.server.close_advertisements()
            encoded = codec.encode(roster)
            inputs = {ad.node_id: encoded for ad in roster.advertisements}
        elif self.stage is Stage.SHARE_KEYS:
            inputs = {node: codec.encode(fwd) for node, fwd in self.server.close_shares().items()}
        elif self.stage is Stage.MASKED_INPUT:
            check = self.server.close_masked_inputs()
            encoded = codec.encode(check)
            inputs = {node: encoded for node in check.survivors}
        elif self.stage is Stage.CONSISTENCY_CHECK:
            request = self.server.close_consistency(next_round=False)  # one-round jobs for now
            encoded = codec.encode(request)
            inputs = {node: encoded for node in self.server.signers}
        else:
            outcome = self.server.finish().result
            total = decode(outcome.total, bits=self.setup.bits)
            result = self.analysis.release(
                self.plan, total, summands=len(outcome.survivors), min_cohort_size=self.min_cohort_size
            )
            return Released(result=result, survivors=outcome.survivors, dropped=outcome.dropped)
        self.stage = _NEXT[self.stage]
        return NextStage(stage=self.stage, inputs=inputs)
