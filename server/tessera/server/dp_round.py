"""One secure-aggregation key epoch of a DP job, as the coordinator runs it.

Holds the epoch's ``SecAggServer`` in memory: the coordinator routes messages it cannot read and,
at the end of each round, learns only the noisy sum over that round's survivors. The state is
deliberately never persisted (it holds routing of key material and partial sums): after a
restart the job goes on in a fresh epoch (``dp_job``).

Stages of an epoch's first round: advertise-keys, share-keys, masked-input, consistency-check,
unmask; of every later round: masked-input, consistency-check, unmask (the unmask answers carry
the next round's self-mask shares, which the next masked-input tasks forward).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.analyses.vector import decode
from tessera.core.errors import InvalidRequest
from tessera.core.rounds import RoundSetup
from tessera.core.secagg import SecAggServer, SecurityParams, codec
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    ShareKeys,
    UnmaskResponse,
)
from tessera.core.types import Stage


@dataclass(frozen=True, slots=True)
class NextStage:
    stage: Stage
    inputs: dict[str, bytes]  # node -> its stage input


@dataclass(frozen=True, slots=True, eq=False)
class RoundSum:
    """A round's decoded noisy sum, who was in it, and who goes on to the next round."""

    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    continuing: tuple[str, ...]  # nodes that handed over next-round shares (empty: no next round)
    next_inputs: dict[str, bytes]  # their MASKED_INPUT inputs for the next round


class DpRound:
    """The coordinator's side of one epoch (one or more rounds of one job)."""

    def __init__(self, setup: RoundSetup, security: SecurityParams, certificates: Mapping[str, str]) -> None:
        """``certificates``: each participant's certificate PEM (those the set-up fingerprints)."""
        self.setup = setup
        peer_keys = _public_keys(certificates)
        self.server = SecAggServer(setup.config(security), peer_keys=peer_keys)
        self.stage = Stage.ADVERTISE_KEYS

    def receive(self, node_id: str, stage: Stage, data: bytes) -> None:
        """Hand one node's stage message to the secure-aggregation server (``node_id`` = mTLS name)."""
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

    def close_stage(self, *, more_rounds: bool) -> NextStage | RoundSum:
        """End the open stage with whoever answered; raises ``RoundAborted`` below the quorum.

        ``more_rounds``: the job may run another round after this one, so survivors hand over
        their next self-mask shares with their unmask answers.
        """
        if self.stage is Stage.ADVERTISE_KEYS:
            roster = self.server.close_advertisements()
            encoded = codec.encode(roster)
            return self._next(Stage.SHARE_KEYS, {ad.node_id: encoded for ad in roster.advertisements})
        if self.stage is Stage.SHARE_KEYS:
            forwarded = self.server.close_shares()
            return self._next(Stage.MASKED_INPUT, {n: codec.encode(f) for n, f in forwarded.items()})
        if self.stage is Stage.MASKED_INPUT:
            request = self.server.close_masked_inputs()
            encoded = codec.encode(request)
            return self._next(Stage.CONSISTENCY_CHECK, {n: encoded for n in request.survivors})
        if self.stage is Stage.CONSISTENCY_CHECK:
            unmask = self.server.close_consistency(next_round=more_rounds)
            encoded = codec.encode(unmask)
            return self._next(Stage.UNMASK, {n: encoded for n in self.server.signers})
        outcome = self.server.finish()
        result = outcome.result
        self.stage = Stage.MASKED_INPUT  # the next round (if any) starts at its masked input
        return RoundSum(
            total=decode(result.total, bits=self.setup.bits),
            survivors=result.survivors,
            dropped=result.dropped,
            continuing=tuple(sorted(outcome.forward)),
            next_inputs={n: codec.encode(f) for n, f in outcome.forward.items()},
        )

    def _next(self, stage: Stage, inputs: dict[str, bytes]) -> NextStage:
        self.stage = stage
        return NextStage(stage=stage, inputs=inputs)


def _public_keys(certificates: Mapping[str, str]) -> dict[str, ec.EllipticCurvePublicKey]:
    """Certificate keys the coordinator checks consistency signatures with on arrival (nodes check
    them again themselves; this only stops one faulty signature from aborting a round)."""
    keys = {}
    for node, pem in certificates.items():
        try:
            key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        except ValueError:
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            keys[node] = key
    return keys
