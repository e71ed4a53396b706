"""The coordinator's half of secure aggregation: collect, route, sum and unmask.

For each stage the transport calls ``receive_*`` once per arriving message (with the node
identity it authenticated, e.g. from mTLS) and ``close_*`` when the stage's deadline passes; a
node that missed the deadline has dropped. The server sees only public keys, ciphertexts it cannot
open, masked vectors and -- at the end -- the shares that honest nodes release: enough to rebuild
the self-mask seed of each survivor and the mask key of each dropped node, never both for one node.

Cost of :meth:`finish`: one AES-CTR keystream per survivor, plus one per (dropped node, surviving
neighbour) pair, each over the vector; Shamir and X25519 work is negligible beside them.
"""

from __future__ import annotations

import enum

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg import shamir
from tessera.core.secagg.keys import SignedKeys, derive_key, public_bytes
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    BindingMismatch,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tessera.core.secagg.prg import add_keystreams
from tessera.core.secagg.protocol import RoundAborted, RoundConfig, StageError, mask_sign
from tessera.core.types import Stage


class ServerState(enum.Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


_FromNode = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse
_STAGE_OF = {
    ServerState.ADVERTISE: Stage.ADVERTISE_KEYS,
    ServerState.SHARE: Stage.SHARE_KEYS,
    ServerState.MASKED: Stage.MASKED_INPUT,
    ServerState.UNMASK: Stage.UNMASK,
}


class SecAggServer:
    """The coordinator's state machine for one round."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self._state = ServerState.ADVERTISE
        self._ads: dict[str, SignedKeys] = {}
        self._u1: frozenset[str] = frozenset()
        self._outbox: dict[str, dict[str, bytes]] = {}  # sender -> receiver -> ciphertext
        self._u2: frozenset[str] = frozenset()
        self._sum = np.zeros(config.length, dtype=config.dtype)
        self._u3: set[str] = set()
        self._responders: set[str] = set()
        self._seed_shares: dict[str, dict[int, bytes]] = {}
        self._key_shares: dict[str, dict[int, bytes]] = {}

    @property
    def state(self) -> ServerState:
        return self._state

    def _accept(self, state: ServerState, message: _FromNode, *, peer: str, allowed: set[str]) -> None:
        stage = _STAGE_OF[state]
        if self._state is not state:
            raise StageError(f"stage '{stage.value}' is not open")
        message.binding.expect(self.config.binding(stage))
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

    # -- stage ADVERTISE_KEYS ------------------------------------------------------------------
    def receive_advertisement(self, message: AdvertiseKeys, *, peer: str) -> None:
        pending = set(self.config.participants) - set(self._ads)
        self._accept(ServerState.ADVERTISE, message, peer=peer, allowed=pending)
        self._ads[peer] = message.keys

    def _prune(self, active: set[str]) -> set[str]:
        # A node with too few live holders could never be unmasked; it is dropped before anyone
        # masks with it (repeated, since dropping one node can starve another).
        while True:
            weak = {u for u in active if len(self.config.holders(u, active)) < self.config.share_threshold}
            if not weak:
                return active
            active -= weak

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
        """End SHARE_KEYS: per node of U2, the ciphertexts addressed to it."""
        if self._state is not ServerState.SHARE:
            raise StageError("stage 'share_keys' is not open")
        u2 = self._prune(set(self._outbox))
        if len(u2) < self.config.threshold:
            raise self._abort(
                Stage.SHARE_KEYS,
                f"{len(self._outbox)} nodes shared keys ({len(u2)} with enough live neighbours), "
                f"the threshold is {self.config.threshold}",
            )
        self._u2 = frozenset(u2)
        self._state = ServerState.MASKED
        binding, shared = self.config.binding(Stage.MASKED_INPUT), tuple(sorted(u2))
        return {
            v: ForwardedShares(
                binding,
                v,
                shared,
                tuple((u, self._outbox[u][v]) for u in sorted(self.config.holders(v, u2) - {v})),
            )
            for v in shared
        }

    # -- stage MASKED_INPUT --------------------------------------------------------------------
    def receive_masked_input(self, message: MaskedInput, *, peer: str) -> None:
        pending = set(self._u2) - self._u3
        self._accept(ServerState.MASKED, message, peer=peer, allowed=pending)
        vector = message.vector
        self.config.check_vector(vector, what="masked vector")
        if vector.dtype != self.config.dtype:
            raise InvalidRequest("the masked vector has the wrong word size")
        np.add(self._sum, vector, out=self._sum)
        self._u3.add(peer)

    def close_masked_inputs(self) -> UnmaskRequest:
        """End MASKED_INPUT: ask the survivors U3 for shares, if unmasking is possible and safe."""
        if self._state is not ServerState.MASKED:
            raise StageError("stage 'masked_input' is not open")
        u3, t = frozenset(self._u3), self.config.threshold
        if len(u3) < t:
            raise self._abort(Stage.MASKED_INPUT, f"{len(u3)} masked inputs arrived, the threshold is {t}")
        if not self.config.mask_graph.is_connected(u3):
            raise self._abort(Stage.MASKED_INPUT, "the survivors are not connected in the masking graph")
        if any(len(self.config.holders(u, self._u2) & u3) < self.config.share_threshold for u in self._u2):
            raise self._abort(Stage.MASKED_INPUT, "too few survivors hold the shares of some node")
        self._state = ServerState.UNMASK
        return UnmaskRequest(self.config.binding(Stage.UNMASK), tuple(sorted(u3)))

    # -- stage UNMASK --------------------------------------------------------------------------
    def receive_unmask(self, message: UnmaskResponse, *, peer: str) -> None:
        pending = set(self._u3) - self._responders
        self._accept(ServerState.UNMASK, message, peer=peer, allowed=pending)
        held = self.config.holders(peer, self._u2)
        seed_owners = [o for o, _ in message.seed_shares]
        key_owners = [o for o, _ in message.key_shares]
        owners = seed_owners + key_owners
        if (
            len(set(owners)) != len(owners)
            or not set(seed_owners) <= held & self._u3
            or not set(key_owners) <= held - self._u3
        ):
            raise InvalidRequest("the unmask shares do not match what the node holds")
        share_id = self.config.share_id(peer)
        for owner, share in message.seed_shares:
            self._seed_shares.setdefault(owner, {})[share_id] = share
        for owner, share in message.key_shares:
            self._key_shares.setdefault(owner, {})[share_id] = share
        self._responders.add(peer)

    def finish(self) -> AggregateResult:
        """End UNMASK: the sum over U3 modulo 2^bits, or :class:`RoundAborted`."""
        if self._state is not ServerState.UNMASK:
            raise StageError("stage 'unmask' is not open")
        cfg, t = self.config, self.config.share_threshold
        survivors, dropped = sorted(self._u3), sorted(self._u2 - self._u3)
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
        for v, secret in secrets.items():
            for w in sorted(cfg.mask_graph.of(v) & self._u3):
                seed = derive_key(
                    secret,
                    self._ads[w].mask_public,
                    job_id=cfg.job_id,
                    round_no=cfg.round_no,
                    stage=Stage.MASKED_INPUT,
                    node_a=v,
                    node_b=w,
                )
                seeds.append((seed, -mask_sign(w, v)))
        total = self._sum.copy()
        add_keystreams(total, seeds)
        cfg.reduce(total)
        total.setflags(write=False)
        self._state = ServerState.DONE
        self._seed_shares.clear()
        self._key_shares.clear()
        return AggregateResult(cfg.job_id, cfg.round_no, total, tuple(survivors), tuple(dropped))
