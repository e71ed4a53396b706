"""The node's half of secure aggregation: a state machine, one instance per node and round.

READY --advertise--> ADVERTISED --share_keys--> SHARED --masked_input--> MASKED --unmask--> DONE.
A message for another job, round, stage or node is refused with :class:`BindingMismatch` and
leaves the state unchanged (it may be a stray replay); any other failure (bad signature, altered
ciphertext, too few peers) moves the client to FAILED for good, since continuing could leak.
The client reveals, per peer, either the self-mask-seed share (peer survived) or the mask-key
share (peer dropped) and answers one unmask request only, so no peer is ever unmasked alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg import shamir
from tessera.core.secagg._util import RandomBytes, random_source
from tessera.core.secagg.keys import RoundKeys, SignedKeys, derive_key, sign_keys, verify_keys
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    Binding,
    BindingMismatch,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tessera.core.secagg.prg import SEED_BYTES, add_keystreams
from tessera.core.secagg.protocol import (
    RoundAborted,
    RoundConfig,
    StageError,
    mask_sign,
    open_shares,
    seal_shares,
)
from tessera.core.types import Stage

T = TypeVar("T")


class ClientState(enum.Enum):
    READY = "ready"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    FAILED = "failed"


# The stage whose input a client in each state is waiting for.
_EXPECTED_STAGE = {
    ClientState.ADVERTISED: Stage.SHARE_KEYS,
    ClientState.SHARED: Stage.MASKED_INPUT,
    ClientState.MASKED: Stage.UNMASK,
}


class SecAggClient:
    """One node in one round. ``peer_keys`` maps every participant to its certificate public key
    (ECDSA P-256) as the PKI delivers it; ``rng`` is for reproducible tests only."""

    def __init__(
        self,
        config: RoundConfig,
        *,
        node_id: str,
        signing_key: ec.EllipticCurvePrivateKey,
        peer_keys: Mapping[str, ec.EllipticCurvePublicKey],
        rng: RandomBytes | None = None,
    ) -> None:
        if node_id not in config.participants:
            raise InvalidRequest("this node is not a participant of the round")
        self.config = config
        self.node_id = node_id
        self._signing_key = signing_key
        self._peer_keys = dict(peer_keys)
        self._rng = random_source(rng)
        self._keys = RoundKeys.generate(rng)
        self._state = ClientState.READY
        self._roster: dict[str, SignedKeys] = {}
        self._shared: frozenset[str] = frozenset()
        self._held: dict[str, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)
        self._self_seed = b""

    @property
    def state(self) -> ClientState:
        return self._state

    def _step(
        self, expected: ClientState, binding: Binding, body: Callable[[], T], *, recipient: str | None = None
    ) -> T:
        if self._state is not expected:
            raise StageError(f"this node cannot take part in stage '{binding.stage.value}' now")
        binding.expect(self.config.binding(_EXPECTED_STAGE[expected]))
        if recipient is not None and recipient != self.node_id:
            raise BindingMismatch("a message addressed to another node was refused")
        try:
            return body()
        except BindingMismatch:
            raise
        except Exception:
            self._state = ClientState.FAILED
            self._held.clear()
            self._self_seed = b""
            raise

    def advertise(self) -> AdvertiseKeys:
        """Stage ADVERTISE_KEYS: this round's two public keys, signed with the certificate key."""
        if self._state is not ClientState.READY:
            raise StageError("this node has already advertised its keys")
        signed = sign_keys(
            self._keys,
            job_id=self.config.job_id,
            round_no=self.config.round_no,
            node_id=self.node_id,
            signing_key=self._signing_key,
        )
        self._state = ClientState.ADVERTISED
        return AdvertiseKeys(self.config.binding(Stage.ADVERTISE_KEYS), signed)

    def share_keys(self, roster: KeyRoster) -> ShareKeys:
        """Stage SHARE_KEYS: verify every advertisement, share b_u and s_u among the holders."""
        return self._step(ClientState.ADVERTISED, roster.binding, lambda: self._share_keys(roster))

    def _share_keys(self, roster: KeyRoster) -> ShareKeys:
        cfg, me = self.config, self.node_id
        ads = {ad.node_id: ad for ad in roster.advertisements}
        if len(ads) != len(roster.advertisements) or not set(ads) <= set(cfg.participants):
            raise InvalidRequest("the key roster lists a node twice or a node outside the round")
        own = ads.get(me)
        if own is None or (own.mask_public, own.share_public) != (
            self._keys.mask_public,
            self._keys.share_public,
        ):
            raise CryptoError("the key roster does not carry this node's own keys")
        for ad in ads.values():
            if ad.node_id not in self._peer_keys:
                raise CryptoError("a peer has no certificate key to verify its advertisement")
            verify_keys(ad, job_id=cfg.job_id, round_no=cfg.round_no, public_key=self._peer_keys[ad.node_id])
        publics = [k for ad in ads.values() for k in (ad.mask_public, ad.share_public)]
        if len(set(publics)) != len(publics):
            raise CryptoError("two advertised public keys are equal")
        if len(ads) < cfg.threshold:
            raise RoundAborted(
                Stage.SHARE_KEYS, f"{len(ads)} nodes advertised keys, the threshold is {cfg.threshold}"
            )
        holders = sorted(cfg.holders(me, frozenset(ads)))
        if len(holders) < cfg.share_threshold:
            raise RoundAborted(
                Stage.SHARE_KEYS, "too few neighbours advertised keys to hold this node's shares"
            )
        self._roster = ads
        self._self_seed = self._rng(SEED_BYTES)
        ids = [cfg.share_id(h) for h in holders]
        t = cfg.share_threshold
        seed_shares = shamir.split(self._self_seed, threshold=t, share_ids=ids, rng=self._rng)
        key_shares = shamir.split(
            self._keys.mask_private.private_bytes_raw(), threshold=t, share_ids=ids, rng=self._rng
        )
        ciphertexts = []
        for holder in holders:
            pair = (seed_shares[cfg.share_id(holder)], key_shares[cfg.share_id(holder)])
            if holder == me:
                self._held[me] = pair
                continue
            key = derive_key(
                self._keys.share_private,
                ads[holder].share_public,
                job_id=cfg.job_id,
                round_no=cfg.round_no,
                stage=Stage.SHARE_KEYS,
                node_a=me,
                node_b=holder,
            )
            ct = seal_shares(key, cfg, sender=me, receiver=holder, seed_share=pair[0], key_share=pair[1])
            ciphertexts.append((holder, ct))
        self._state = ClientState.SHARED
        return ShareKeys(cfg.binding(Stage.SHARE_KEYS), me, tuple(ciphertexts))

    def masked_input(self, forwarded: ForwardedShares, vector: np.ndarray) -> MaskedInput:
        """Stage MASKED_INPUT: keep the peers' shares, send y = x + PRG(b) + sum +-PRG(s_uv).

        ``vector``: unsigned integers below 2^bits, of the round's length (checked first; a bad
        vector is refused without spending the round). Cost: one AES-CTR keystream and one add
        per neighbour plus one for the self mask (about 8 ms for 10^6 uint32 and 10 peers here).
        """
        self.config.check_vector(vector, what="input vector")
        return self._step(
            ClientState.SHARED,
            forwarded.binding,
            lambda: self._masked_input(forwarded, vector),
            recipient=forwarded.node_id,
        )

    def _masked_input(self, forwarded: ForwardedShares, vector: np.ndarray) -> MaskedInput:
        cfg, me = self.config, self.node_id
        shared = frozenset(forwarded.shared)
        if len(shared) != len(forwarded.shared) or not shared <= set(self._roster) or me not in shared:
            raise InvalidRequest("the list of nodes that shared keys is inconsistent")
        if len(shared) < cfg.threshold:
            raise RoundAborted(
                Stage.MASKED_INPUT, f"{len(shared)} nodes shared keys, the threshold is {cfg.threshold}"
            )
        senders = [s for s, _ in forwarded.ciphertexts]
        if len(set(senders)) != len(senders) or set(senders) != cfg.holders(me, shared) - {me}:
            raise InvalidRequest("the forwarded shares do not match the neighbours that shared keys")
        for sender, ct in forwarded.ciphertexts:
            key = derive_key(
                self._keys.share_private,
                self._roster[sender].share_public,
                job_id=cfg.job_id,
                round_no=cfg.round_no,
                stage=Stage.SHARE_KEYS,
                node_a=me,
                node_b=sender,
            )
            self._held[sender] = open_shares(key, cfg, sender=sender, receiver=me, ciphertext=ct)
        seeds = [(self._self_seed, 1)]
        for peer in sorted(set(senders)):
            seed = derive_key(
                self._keys.mask_private,
                self._roster[peer].mask_public,
                job_id=cfg.job_id,
                round_no=cfg.round_no,
                stage=Stage.MASKED_INPUT,
                node_a=me,
                node_b=peer,
            )
            seeds.append((seed, mask_sign(me, peer)))
        masked = vector.astype(cfg.dtype, copy=True)
        add_keystreams(masked, seeds)
        cfg.reduce(masked)
        masked.setflags(write=False)
        self._self_seed = b""  # the seed now lives on only as shares
        self._shared = shared
        self._state = ClientState.MASKED
        return MaskedInput(cfg.binding(Stage.MASKED_INPUT), me, masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage UNMASK: seed shares of survivors, key shares of dropped nodes; never both."""
        return self._step(ClientState.MASKED, request.binding, lambda: self._unmask(request))

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        cfg, me = self.config, self.node_id
        survivors = frozenset(request.survivors)
        if len(survivors) != len(request.survivors) or not survivors <= self._shared:
            raise InvalidRequest("the survivor list names nodes that did not share keys")
        if me not in survivors:
            raise InvalidRequest("this node is not listed among the survivors")
        if len(survivors) < cfg.threshold:
            raise RoundAborted(
                Stage.UNMASK, f"{len(survivors)} nodes survived, the threshold is {cfg.threshold}"
            )
        if not cfg.mask_graph.is_connected(survivors):
            raise RoundAborted(Stage.UNMASK, "the survivors are not connected in the masking graph")
        seed_shares, key_shares = [], []
        for owner in sorted(self._held):
            seed_share, key_share = self._held[owner]
            if owner in survivors:
                seed_shares.append((owner, seed_share))
            else:
                key_shares.append((owner, key_share))
        self._held.clear()
        self._state = ClientState.DONE
        return UnmaskResponse(cfg.binding(Stage.UNMASK), me, tuple(seed_shares), tuple(key_shares))
