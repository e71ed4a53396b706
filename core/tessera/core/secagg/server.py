"""The coordinator's half of secure aggregation: collect, route, sum and unmask, round by round.

One :class:`SecAggServer` per epoch. For each stage the transport calls ``receive_*`` once per
arriving message (with the node identity it authenticated, e.g. from mTLS) and ``close_*`` when
the stage's deadline passes; a node that missed the deadline has dropped.

What the coordinator routes (stage -> what it sends, to whom):

* ADVERTISE_KEYS: the epoch's set-up (out of band) to every participant; collects AdvertiseKeys.
* SHARE_KEYS: ``close_advertisements()`` -> one KeyRoster for every node in it; collects ShareKeys.
* MASKED_INPUT: ``close_shares()`` (first round) or ``finish().forward`` (later rounds) -> one
  ForwardedShares per active node; collects MaskedInput.
* CONSISTENCY_CHECK: ``close_masked_inputs()`` -> one ConsistencyRequest for every survivor;
  collects ConsistencySignature.
* UNMASK: ``close_consistency(next_round=...)`` -> one UnmaskRequest for every signer; collects
  UnmaskResponse; ``finish()`` -> the round's AggregateResult and, if a next round was announced,
  its ForwardedShares.

The server sees only public keys, ciphertexts it cannot open, masked vectors, signatures and the
shares that honest nodes release: enough to rebuild the self-mask seed of each survivor and the
mask key of each dropped node, never both for one node. A node that is not a survivor of round r,
or does not answer its unmask with next-round shares, is out for the rest of the epoch.

Cost of :meth:`finish`: one AES-CTR keystream per survivor, plus one per (dropped node, surviving
neighbour) pair, each over the vector; Shamir, HKDF and X25519 work is negligible beside them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg import consistency, shamir
from tessera.core.secagg.keys import SignedKeys, agree, hkdf_pair, public_bytes
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    BindingMismatch,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RoundOutcome,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tessera.core.secagg.prg import add_keystreams
from tessera.core.secagg.protocol import EpochConfig, RoundAborted, StageError, mask_sign
from tessera.core.types import Stage


class ServerState(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"  # the epoch is over (no next round, or too few nodes left for one)
    FAILED = "failed"


_FromNode = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskResponse
_STAGE_OF = {
    ServerState.ADVERTISE: Stage.ADVERTISE_KEYS,
    ServerState.SHARE: Stage.SHARE_KEYS,
    ServerState.MASKED: Stage.MASKED_INPUT,
    ServerState.CONSISTENCY: Stage.CONSISTENCY_CHECK,
    ServerState.UNMASK: Stage.UNMASK,
}


class SecAggServer:
    """The coordinator's state machine for one epoch (one or more rounds).

    ``peer_keys`` (optional): the participants' certificate keys; when given, consistency
    signatures are checked on arrival and a bad one is refused (so one faulty node cannot make
    every honest node abort). Nodes check them again in any case.
    """

    def __init__(
        self, config: EpochConfig, *, peer_keys: Mapping[str, ec.EllipticCurvePublicKey] | None = None
    ) -> None:
        self.config = config
        self._peer_keys = dict(peer_keys) if peer_keys is not None else None
        self._state = ServerState.ADVERTISE
        self._round = config.first_round
        self._ads: dict[str, SignedKeys] = {}
        self._u1: frozenset[str] = frozenset()
        self._outbox: dict[str, dict[str, bytes]] = {}  # sender -> receiver -> ciphertext
        self._active: frozenset[str] = frozenset()
        self._new_round()

    def _new_round(self) -> None:
        self._sum = np.zeros(self.config.length, dtype=self.config.dtype)
        self._u3: set[str] = set()
        self._signatures: dict[str, bytes] = {}
        self._payload = b""
        self._next_round = False
        self._responders: set[str] = set()
        self._seed_shares: dict[str, dict[int, bytes]] = {}
        self._key_shares: dict[str, dict[int, bytes]] = {}
        self._next_outbox: dict[str, dict[str, bytes]] = {}

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def round_no(self) -> int:
        return self._round

    @property
    def active(self) -> frozenset[str]:
        """The nodes still in the epoch for the current round (A_r)."""
        return self._active

    def _accept(self, state: ServerState, message: _FromNode, *, peer: str, allowed: set[str]) -> None:
        stage = _STAGE_OF[state]
        if self._state is not state:
            raise StageError(f"stage '{stage.value}' is not open")
        message.binding.expect(self.config.binding(stage, self._round))
        if message.node_id != peer:
            raise BindingMismatch("a message names a node other than its authenticated sender")
        if peer not in allowed:
            raise StageError(
                f"this node may not send in stage '{stage.value}' (unknown, dropped or repeated)"
            )

    def _abort(self, stage: Stage, reason: str) -> RoundAborted:
        self._state = ServerState.FAILED
        self._seed_shares.clear()
        self._key_shares.clear()
        return RoundAborted(stage, reason)

    def _prune(self, active: set[str]) -> set[str]:
        # A node with too few live holders could never be unmasked; it is dropped before anyone
        # masks with it (repeated, since dropping one node can starve another).
        while True:
            weak = {u for u in active if len(self.config.holders(u, active)) < self.config.share_threshold}
            if not weak:
                return active
            active -= weak

    # -- stage ADVERTISE_KEYS ------------------------------------------------------------------
    def receive_advertisement(self, message: AdvertiseKeys, *, peer: str) -> None:
        pending = set(self.config.participants) - set(self._ads)
        self._accept(ServerState.ADVERTISE, message, peer=peer, allowed=pending)
        self._ads[peer] = message.keys

    def close_advertisements(self) -> KeyRoster:
        """End ADVERTISE_KEYS: the roster of U1 for every node; aborts below the threshold."""
        if self._state is not ServerState.ADVERTISE:
            raise StageError("stage 'advertise_keys' is not open")
        u1 = self._prune(set(self._ads))
        if len(u1) < self.config.threshold:
            raise self._abort(
                Stage.ADVERTISE_KEYS,
                f"{len(self._ads)} nodes advertised keys ({len(u1)} with enough live neighbours), "
                f"the threshold is {self.config.threshold}",
            )
        self._u1 = frozenset(u1)
        self._state = ServerState.SHARE
        ads = tuple(self._ads[u] for u in sorted(u1))
        return KeyRoster(self.config.binding(Stage.SHARE_KEYS), ads)

    # -- stage SHARE_KEYS ----------------------------------------------------------------------
    def receive_shares(self, message: ShareKeys, *, peer: str) -> None:
        pending = set(self._u1) - set(self._outbox)
        self._accept(ServerState.SHARE, message, peer=peer, allowed=pending)
        receivers = [r for r, _ in message.ciphertexts]
        expected = self.config.holders(peer, self._u1) - {peer}
        if len(set(receivers)) != len(receivers) or set(receivers) != expected:
            raise InvalidRequest("the encrypted shares are not addressed to exactly the node's neighbours")
        self._outbox[peer] = dict(message.ciphertexts)

    def close_shares(self) -> dict[str, ForwardedShares]:
        """End SHARE_KEYS: per node of U2 (the first round's active set), the ciphertexts for it."""
        if self._state is not ServerState.SHARE:
            raise StageError("stage 'share_keys' is not open")
        u2 = self._prune(set(self._outbox))
        if len(u2) < self.config.threshold:
            raise self._abort(
                Stage.SHARE_KEYS,
                f"{len(self._outbox)} nodes shared keys ({len(u2)} with enough live neighbours), "
                f"the threshold is {self.config.threshold}",
            )
        forward = self._forward(frozenset(u2), self._outbox)
        self._outbox = {}
        return forward

    def _forward(
        self, active: frozenset[str], outbox: dict[str, dict[str, bytes]]
    ) -> dict[str, ForwardedShares]:
        self._active = active
        self._state = ServerState.MASKED
        binding, ordered = self.config.binding(Stage.MASKED_INPUT, self._round), tuple(sorted(active))
        return {
            v: ForwardedShares(
                binding,
                v,
                ordered,
                tuple((u, outbox[u][v]) for u in sorted(self.config.holders(v, active) - {v})),
            )
            for v in ordered
        }

    # -- stage MASKED_INPUT --------------------------------------------------------------------
    def receive_masked_input(self, message: MaskedInput, *, peer: str) -> None:
        pending = set(self._active) - self._u3
        self._accept(ServerState.MASKED, message, peer=peer, allowed=pending)
        vector = message.vector
        self.config.check_vector(vector, what="masked vector")
        if vector.dtype != self.config.dtype:
            raise InvalidRequest("the masked vector has the wrong word size")
        np.add(self._sum, vector, out=self._sum)
        self._u3.add(peer)

    def close_masked_inputs(self) -> ConsistencyRequest:
        """End MASKED_INPUT: ask the survivors U3 to sign it, if unmasking is possible."""
        if self._state is not ServerState.MASKED:
            raise StageError("stage 'masked_input' is not open")
        u3, t = frozenset(self._u3), self.config.threshold
        if len(u3) < t:
            raise self._abort(Stage.MASKED_INPUT, f"{len(u3)} masked inputs arrived, the threshold is {t}")
        if not self.config.mask_graph.is_connected(u3):
            raise self._abort(Stage.MASKED_INPUT, "the survivors are not connected in the masking graph")
        if any(
            len(self.config.holders(u, self._active) & u3) < self.config.share_threshold for u in self._active
        ):
            raise self._abort(Stage.MASKED_INPUT, "too few survivors hold the shares of some node")
        self._payload = consistency.payload(
            self.config, round_no=self._round, active=self._active, survivors=u3
        )
        self._state = ServerState.CONSISTENCY
        return ConsistencyRequest(
            self.config.binding(Stage.CONSISTENCY_CHECK, self._round), tuple(sorted(u3))
        )

    # -- stage CONSISTENCY_CHECK ---------------------------------------------------------------
    def receive_consistency(self, message: ConsistencySignature, *, peer: str) -> None:
        pending = self._u3 - set(self._signatures)
        self._accept(ServerState.CONSISTENCY, message, peer=peer, allowed=pending)
        if self._peer_keys is not None:
            consistency.verify_one(self._payload, message.signature, self._peer_keys.get(peer))
        self._signatures[peer] = message.signature

    def close_consistency(self, *, next_round: bool = False) -> UnmaskRequest:
        """End CONSISTENCY_CHECK: U3 and the signatures, for every signer; ``next_round`` asks the
        signers for next-round seed shares along with their unmask shares."""
        if self._state is not ServerState.CONSISTENCY:
            raise StageError("stage 'consistency_check' is not open")
        if len(self._signatures) < self.config.threshold:
            raise self._abort(
                Stage.CONSISTENCY_CHECK,
                f"{len(self._signatures)} survivors signed the survivor set, "
                f"the threshold is {self.config.threshold}",
            )
        self._next_round = next_round
        self._state = ServerState.UNMASK
        return UnmaskRequest(
            self.config.binding(Stage.UNMASK, self._round),
            tuple(sorted(self._u3)),
            tuple(sorted(self._signatures.items())),
            next_round,
        )

    @property
    def signers(self) -> tuple[str, ...]:
        """The nodes whose consistency signature arrived (the UnmaskRequest goes to them)."""
        return tuple(sorted(self._signatures))

    # -- stage UNMASK --------------------------------------------------------------------------
    def receive_unmask(self, message: UnmaskResponse, *, peer: str) -> None:
        pending = set(self._signatures) - self._responders
        self._accept(ServerState.UNMASK, message, peer=peer, allowed=pending)
        u3 = frozenset(self._u3)
        held = self.config.holders(peer, self._active)
        seed_owners = [o for o, _ in message.seed_shares]
        key_owners = [o for o, _ in message.key_shares]
        owners = seed_owners + key_owners
        if (
            len(set(owners)) != len(owners)
            or not set(seed_owners) <= held & u3
            or not set(key_owners) <= held - u3
        ):
            raise InvalidRequest("the unmask shares do not match what the node holds")
        recipients = [r for r, _ in message.next_shares]
        if message.next_shares and (
            not self._next_round
            or len(set(recipients)) != len(recipients)
            or set(recipients) != self.config.holders(peer, u3) - {peer}
        ):
            raise InvalidRequest(
                "the next-round shares are not addressed to exactly the surviving neighbours"
            )
        share_id = self.config.share_id(peer)
        for owner, share in message.seed_shares:
            self._seed_shares.setdefault(owner, {})[share_id] = share
        for owner, share in message.key_shares:
            self._key_shares.setdefault(owner, {})[share_id] = share
        if message.next_shares:
            self._next_outbox[peer] = dict(message.next_shares)
        self._responders.add(peer)

    def finish(self) -> RoundOutcome:
        """End UNMASK: the sum over U3 modulo 2^bits (or :class:`RoundAborted`) and, if a next
        round was announced, its MASKED_INPUT inputs (empty when too few nodes remain)."""
        if self._state is not ServerState.UNMASK:
            raise StageError("stage 'unmask' is not open")
        cfg, t = self.config, self.config.share_threshold
        survivors, dropped = sorted(self._u3), sorted(self._active - self._u3)
        if any(len(self._seed_shares.get(u, {})) < t for u in survivors) or any(
            len(self._key_shares.get(v, {})) < t for v in dropped
        ):
            raise self._abort(
                Stage.UNMASK, f"{len(self._responders)} nodes answered, too few to unmask every node"
            )
        try:
            seeds = [(shamir.combine(self._seed_shares[u], threshold=t), -1) for u in survivors]
            secrets = {
                v: X25519PrivateKey.from_private_bytes(shamir.combine(self._key_shares[v], threshold=t))
                for v in dropped
            }
        except (CryptoError, ValueError):
            raise self._abort(Stage.UNMASK, "some shares could not be combined") from None
        if any(public_bytes(secrets[v].public_key()) != self._ads[v].mask_public for v in dropped):
            # Only the mask keys can be checked (against their advertisement); a wrong self-mask
            # seed share would go unnoticed -- nodes are trusted to be honest-but-curious.
            raise self._abort(Stage.UNMASK, "a rebuilt mask key does not match its advertisement")
        try:
            for v, secret in secrets.items():
                for w in sorted(cfg.mask_graph.of(v) & self._u3):
                    seed = hkdf_pair(
                        agree(secret, self._ads[w].mask_public),
                        job_id=cfg.job_id,
                        epoch=cfg.epoch,
                        round_no=self._round,
                        stage=Stage.MASKED_INPUT,
                        node_a=v,
                        node_b=w,
                    )
                    seeds.append((seed, -mask_sign(w, v)))
        except CryptoError:
            raise self._abort(Stage.UNMASK, "a rebuilt mask key is unusable") from None
        total = self._sum.copy()
        add_keystreams(total, seeds)
        cfg.reduce(total)
        total.setflags(write=False)
        result = AggregateResult(cfg.job_id, cfg.epoch, self._round, total, tuple(survivors), tuple(dropped))
        forward: dict[str, ForwardedShares] = {}
        next_outbox = self._next_outbox
        if self._next_round:
            nxt = self._prune(set(next_outbox))
            if len(nxt) >= cfg.threshold:
                self._round += 1
                self._new_round()
                forward = self._forward(frozenset(nxt), next_outbox)
                return RoundOutcome(result, forward)
        self._new_round()
        self._active = frozenset()
        self._state = ServerState.DONE
        return RoundOutcome(result, forward)
