"""The node's half of secure aggregation: a state machine, one instance per node, job and epoch.

First round of an epoch: READY --advertise--> ADVERTISED --share_keys--> SHARED --masked_input-->
MASKED --consistency--> SIGNED --unmask--> SHARED (next round announced) or DONE. Every later
round: SHARED --masked_input--> MASKED --consistency--> SIGNED --unmask--> SHARED or DONE.

A message for another job, epoch, round, stage or node is refused with :class:`BindingMismatch`
and leaves the state unchanged (it may be a stray replay); any other failure (bad signature,
altered ciphertext, a survivor set others did not sign, unsafe parameters) moves the client to
FAILED for good and wipes its secrets, since continuing could leak.

What the node reveals, and when (see :mod:`.security` for why it is safe):

* nothing before it has verified ``threshold`` signatures on exactly the (A_r, U3) it signed;
* per peer and round either the share of b_peer (peer survived) or of s_peer (peer dropped);
* never a b-share of a peer once it revealed, or signed a view implying, that peer's s-share;
* a node that misses a round's unmask holds no seed for the next round and so cannot go on: a
  node claimed dropped is out for the rest of the epoch.

What a node must keep between rounds: this object, in memory only (its X25519 private keys, the
held shares, the epoch's dropped set). Never persist it: a node that restarts joins a new epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg import consistency, shamir
from tessera.core.secagg._util import RandomBytes, random_source
from tessera.core.secagg.keys import EpochKeys, SignedKeys, agree, hkdf_pair, sign_keys, verify_keys
from tessera.core.secagg.messages import (
    AdvertiseKeys,
    Binding,
    BindingMismatch,
    ConsistencyRequest,
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tessera.core.secagg.prg import SEED_BYTES, add_keystreams
from tessera.core.secagg.protocol import (
    EpochConfig,
    RoundAborted,
    ShareKind,
    StageError,
    mask_sign,
    open_shares,
    seal_shares,
)
from tessera.core.secagg.security import SecurityParams
from tessera.core.types import Stage

T = TypeVar("T")


class ClientState(enum.Enum):
    READY = "ready"
    ADVERTISED = "advertised"
    SHARED = "shared"  # holds the shares for the current round; waits for its MASKED_INPUT task
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"  # the epoch is over for this node
    FAILED = "failed"
    DESTROYED = "destroyed"  # wiped on purpose (a newer epoch of the job started, or the job ended)


# The stage whose input a client in each state is waiting for.
_EXPECTED_STAGE = {
    ClientState.ADVERTISED: Stage.SHARE_KEYS,
    ClientState.SHARED: Stage.MASKED_INPUT,
    ClientState.MASKED: Stage.CONSISTENCY_CHECK,
    ClientState.SIGNED: Stage.UNMASK,
}


class SecAggClient:
    """One node in one epoch of a job.

    ``config`` is the epoch as this node built it (its own graph, see :mod:`.security`);
    ``security`` is this node's own requirement, checked here (``secagg.unsafe_parameters``)
    before anything is generated. ``peer_keys`` maps every participant to its certificate public
    key (ECDSA P-256) as the PKI delivers it; ``signing_key`` is this node's certificate key.
    ``rng`` is for reproducible tests only.
    """

    def __init__(
        self,
        config: EpochConfig,
        *,
        node_id: str,
        signing_key: ec.EllipticCurvePrivateKey,
        peer_keys: Mapping[str, ec.EllipticCurvePublicKey],
        security: SecurityParams,
        rng: RandomBytes | None = None,
    ) -> None:
        if node_id not in config.participants:
            raise InvalidRequest("this node is not a participant of the epoch")
        security.check(config)
        self.config = config
        self.node_id = node_id
        self.security = security
        self._signing_key = signing_key
        self._peer_keys = dict(peer_keys)
        self._rng = random_source(rng)
        self._keys: EpochKeys | None = EpochKeys.generate(rng)
        self._state = ClientState.READY
        self._round = config.first_round
        self._roster: dict[str, SignedKeys] = {}
        self._mask_secrets: dict[str, bytes] = {}  # peer -> X25519 secret of the mask keys
        self._share_keys: dict[str, bytes] = {}  # peer -> AES key for shares (epoch)
        self._key_shares: dict[str, bytes] = {}  # owner -> share of s_owner (epoch)
        self._seed_shares: dict[str, bytes] = {}  # owner -> share of b_owner (current round)
        self._self_seed = b""  # b_me of the current round until the masked input leaves
        self._eligible: frozenset[str] = frozenset()  # who may be active in the current round
        self._active: frozenset[str] = frozenset()
        self._survivors: frozenset[str] = frozenset()
        self._payload = b""
        self._dropped: set[str] = set()  # owners whose s-share this node revealed or committed to

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def round_no(self) -> int:
        """The round this node is in (or waits for)."""
        return self._round

    @property
    def dropped(self) -> frozenset[str]:
        """Nodes of this epoch whose mask-key shares this node revealed or committed to reveal."""
        return frozenset(self._dropped)

    def destroy(self) -> None:
        """Wipe every secret of the epoch; the client answers nothing afterwards."""
        self._wipe()
        self._dropped.clear()
        self._state = ClientState.DESTROYED

    def _wipe(self) -> None:
        self._keys = None
        self._mask_secrets.clear()
        self._share_keys.clear()
        self._key_shares.clear()
        self._seed_shares.clear()
        self._self_seed = b""
        self._payload = b""

    @property
    def _epoch_keys(self) -> EpochKeys:
        if self._keys is None:
            raise StageError("this epoch's keys were destroyed")
        return self._keys

    def _step(
        self,
        expected: ClientState,
        binding: Binding,
        body: Callable[[], T],
        *,
        recipient: str | None = None,
        round_no: int | None = None,
    ) -> T:
        if self._state is not expected:
            raise StageError(f"this node cannot take part in stage '{binding.stage.value}' now")
        if round_no is not None and round_no != self._round:
            raise BindingMismatch(f"this node is in round {self._round} of the epoch, not round {round_no}")
        binding.expect(self.config.binding(_EXPECTED_STAGE[expected], self._round))
        if recipient is not None and recipient != self.node_id:
            raise BindingMismatch("a message addressed to another node was refused")
        try:
            return body()
        except BindingMismatch:
            raise
        except Exception:
            self._state = ClientState.FAILED
            self._wipe()
            raise

    # -- helpers -------------------------------------------------------------------------------
    def _fresh_seed(self) -> bytes:
        """A new self-mask seed b_u: one per round, never reused (see :mod:`.security`, 4)."""
        return self._rng(SEED_BYTES)

    def _share_key(self, peer: str) -> bytes:
        key = self._share_keys.get(peer)
        if key is None:
            secret = agree(self._epoch_keys.share_private, self._roster[peer].share_public)
            key = hkdf_pair(
                secret,
                job_id=self.config.job_id,
                epoch=self.config.epoch,
                round_no=self.config.first_round,
                stage=Stage.SHARE_KEYS,
                node_a=self.node_id,
                node_b=peer,
            )
            self._share_keys[peer] = key
        return key

    def _mask_seed(self, peer: str) -> bytes:
        secret = self._mask_secrets.get(peer)
        if secret is None:
            secret = agree(self._epoch_keys.mask_private, self._roster[peer].mask_public)
            self._mask_secrets[peer] = secret
        return hkdf_pair(
            secret,
            job_id=self.config.job_id,
            epoch=self.config.epoch,
            round_no=self._round,
            stage=Stage.MASKED_INPUT,
            node_a=self.node_id,
            node_b=peer,
        )

    # -- stage ADVERTISE_KEYS ------------------------------------------------------------------
    def advertise(self) -> AdvertiseKeys:
        """Stage ADVERTISE_KEYS: the epoch's two public keys, signed with the certificate key
        together with the digest of the security parameters this node accepted."""
        if self._state is not ClientState.READY:
            raise StageError("this node has already advertised its keys")
        signed = sign_keys(
            self._epoch_keys,
            job_id=self.config.job_id,
            epoch=self.config.epoch,
            node_id=self.node_id,
            params=self.config.params_digest,
            signing_key=self._signing_key,
        )
        self._state = ClientState.ADVERTISED
        return AdvertiseKeys(self.config.binding(Stage.ADVERTISE_KEYS), signed)

    # -- stage SHARE_KEYS ----------------------------------------------------------------------
    def share_keys(self, roster: KeyRoster) -> ShareKeys:
        """Stage SHARE_KEYS: verify every advertisement, share s_u (for the epoch) and b_u (for
        the first round) among the holders."""
        return self._step(ClientState.ADVERTISED, roster.binding, lambda: self._do_share_keys(roster))

    def _do_share_keys(self, roster: KeyRoster) -> ShareKeys:
        cfg, me, keys = self.config, self.node_id, self._epoch_keys
        ads = {ad.node_id: ad for ad in roster.advertisements}
        if len(ads) != len(roster.advertisements) or not set(ads) <= set(cfg.participants):
            raise InvalidRequest("the key roster lists a node twice or a node outside the epoch")
        own = ads.get(me)
        if own is None or (own.mask_public, own.share_public) != (keys.mask_public, keys.share_public):
            raise CryptoError("the key roster does not carry this node's own keys")
        for ad in ads.values():
            if ad.node_id not in self._peer_keys:
                raise CryptoError("a peer has no certificate key to verify its advertisement")
            verify_keys(
                ad,
                job_id=cfg.job_id,
                epoch=cfg.epoch,
                params=cfg.params_digest,
                public_key=self._peer_keys[ad.node_id],
            )
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
        self._eligible = frozenset(ads)
        self._self_seed = self._fresh_seed()
        ids = [cfg.share_id(h) for h in holders]
        t = cfg.share_threshold
        seed_shares = shamir.split(self._self_seed, threshold=t, share_ids=ids, rng=self._rng)
        key_shares = shamir.split(
            keys.mask_private.private_bytes_raw(), threshold=t, share_ids=ids, rng=self._rng
        )
        ciphertexts = []
        for holder in holders:
            pair = (seed_shares[cfg.share_id(holder)], key_shares[cfg.share_id(holder)])
            if holder == me:
                self._seed_shares[me], self._key_shares[me] = pair
                continue
            ct = seal_shares(
                self._share_key(holder),
                cfg,
                kind=ShareKind.SHARE_KEYS,
                round_no=cfg.first_round,
                sender=me,
                receiver=holder,
                shares=pair,
            )
            ciphertexts.append((holder, ct))
        self._state = ClientState.SHARED
        return ShareKeys(cfg.binding(Stage.SHARE_KEYS), me, tuple(ciphertexts))

    # -- stage MASKED_INPUT --------------------------------------------------------------------
    def masked_input(self, forwarded: ForwardedShares, vector: np.ndarray, round_no: int) -> MaskedInput:
        """Stage MASKED_INPUT of ``round_no``: keep the peers' shares, send
        y = x + PRG(b_r) + sum over active neighbours of +-PRG(HKDF(s_uv, job, epoch, round)).

        ``vector``: unsigned integers below 2^bits, of the epoch's length (checked first; a bad
        vector is refused without spending the round). Cost: one AES-CTR keystream and one add
        per neighbour plus one for the self mask (about 8 ms for 10^6 uint32 and 10 peers here).
        """
        self.config.check_vector(vector, what="input vector")
        return self._step(
            ClientState.SHARED,
            forwarded.binding,
            lambda: self._do_masked_input(forwarded, vector),
            recipient=forwarded.node_id,
            round_no=round_no,
        )

    def _do_masked_input(self, forwarded: ForwardedShares, vector: np.ndarray) -> MaskedInput:
        cfg, me = self.config, self.node_id
        first = self._round == cfg.first_round
        active = frozenset(forwarded.active)
        if len(active) != len(forwarded.active) or not active <= self._eligible or me not in active:
            raise InvalidRequest("the round's active set names nodes that cannot take part in it")
        if active & self._dropped:
            raise CryptoError("the round's active set names a node whose mask key was revealed")
        if len(active) < cfg.threshold:
            raise RoundAborted(
                Stage.MASKED_INPUT, f"{len(active)} nodes are active, the threshold is {cfg.threshold}"
            )
        senders = [s for s, _ in forwarded.ciphertexts]
        neighbours = cfg.holders(me, active) - {me}
        if len(set(senders)) != len(senders) or set(senders) != neighbours:
            raise InvalidRequest("the forwarded shares do not match the active neighbours")
        kind = ShareKind.SHARE_KEYS if first else ShareKind.NEXT_SEED
        for sender, ct in forwarded.ciphertexts:
            shares = open_shares(
                self._share_key(sender),
                cfg,
                kind=kind,
                round_no=self._round,
                sender=sender,
                receiver=me,
                ciphertext=ct,
            )
            self._seed_shares[sender] = shares[0]
            if first:
                self._key_shares[sender] = shares[1]
        seeds = [(self._self_seed, 1)]
        seeds.extend((self._mask_seed(peer), mask_sign(me, peer)) for peer in sorted(neighbours))
        masked = vector.astype(cfg.dtype, copy=True)
        add_keystreams(masked, seeds)
        cfg.reduce(masked)
        masked.setflags(write=False)
        self._self_seed = b""  # the seed now lives on only as shares
        self._active = active
        self._state = ClientState.MASKED
        return MaskedInput(cfg.binding(Stage.MASKED_INPUT, self._round), me, masked)

    # -- stage CONSISTENCY_CHECK ---------------------------------------------------------------
    def consistency(self, request: ConsistencyRequest) -> ConsistencySignature:
        """Stage CONSISTENCY_CHECK: check U3 and sign this node's view (A_r, U3) of the round."""
        return self._step(ClientState.MASKED, request.binding, lambda: self._do_consistency(request))

    def _do_consistency(self, request: ConsistencyRequest) -> ConsistencySignature:
        cfg, me = self.config, self.node_id
        survivors = frozenset(request.survivors)
        if len(survivors) != len(request.survivors) or not survivors <= self._active:
            raise InvalidRequest("the survivor list names nodes that were not active in this round")
        if me not in survivors:
            raise InvalidRequest("this node is not listed among the survivors")
        if len(survivors) < cfg.threshold:
            raise RoundAborted(
                Stage.CONSISTENCY_CHECK, f"{len(survivors)} nodes survived, the threshold is {cfg.threshold}"
            )
        if not cfg.mask_graph.is_connected(survivors):
            raise RoundAborted(
                Stage.CONSISTENCY_CHECK, "the survivors are not connected in the masking graph"
            )
        self._payload = consistency.payload(
            cfg, round_no=self._round, active=self._active, survivors=survivors
        )
        signature = consistency.sign(self._payload, self._signing_key)
        # From here on this node stands by the story: the nodes it calls dropped stay dropped.
        self._dropped |= self._active - survivors
        self._survivors = survivors
        self._state = ClientState.SIGNED
        return ConsistencySignature(cfg.binding(Stage.CONSISTENCY_CHECK, self._round), me, signature)

    # -- stage UNMASK --------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage UNMASK: after verifying ``threshold`` signatures on this node's own view, the
        b-shares of survivors and the s-shares of dropped nodes; when ``next_round`` is set, also
        the encrypted shares of a fresh self-mask seed for the next round."""
        return self._step(ClientState.SIGNED, request.binding, lambda: self._do_unmask(request))

    def _do_unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        cfg, me = self.config, self.node_id
        survivors = self._survivors
        if len(set(request.survivors)) != len(request.survivors) or frozenset(request.survivors) != survivors:
            raise CryptoError("the unmask request names other survivors than this node signed")
        consistency.verify_quorum(
            self._payload,
            request.signatures,
            eligible=survivors,
            peer_keys=self._peer_keys,
            threshold=cfg.threshold,
        )
        seed_shares, key_shares = [], []
        for owner in sorted(self._seed_shares):
            if owner in survivors:
                if owner in self._dropped:  # unreachable after the checks above; kept as a guard
                    raise CryptoError("a survivor's mask key was revealed earlier in this epoch")
                seed_shares.append((owner, self._seed_shares[owner]))
        for owner in sorted((self._active - survivors) & set(self._key_shares)):
            key_shares.append((owner, self._key_shares[owner]))
        self._seed_shares.clear()
        next_shares: list[tuple[str, bytes]] = []
        holders = sorted(cfg.holders(me, survivors))
        if request.next_round and len(holders) >= cfg.share_threshold:
            next_round = self._round + 1
            seed = self._fresh_seed()
            ids = [cfg.share_id(h) for h in holders]
            shares = shamir.split(seed, threshold=cfg.share_threshold, share_ids=ids, rng=self._rng)
            for holder in holders:
                share = shares[cfg.share_id(holder)]
                if holder == me:
                    self._seed_shares[me] = share
                    continue
                ct = seal_shares(
                    self._share_key(holder),
                    cfg,
                    kind=ShareKind.NEXT_SEED,
                    round_no=next_round,
                    sender=me,
                    receiver=holder,
                    shares=(share,),
                )
                next_shares.append((holder, ct))
            self._self_seed = seed
            self._eligible = survivors
            self._round = next_round
            self._state = ClientState.SHARED
        else:
            self._wipe()
            self._state = ClientState.DONE
        binding = cfg.binding(Stage.UNMASK, request.binding.round_no)
        return UnmaskResponse(binding, me, tuple(seed_shares), tuple(key_shares), tuple(next_shares))
