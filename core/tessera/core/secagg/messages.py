"""The secure-aggregation messages as frozen dataclasses (wire form: :mod:`.codec`).

Every message carries a :class:`Binding` (job, epoch, round, stage); a receiver refuses any
message whose binding differs from the one it expects, which stops replays from another job,
epoch or round and messages delivered out of stage order. ``node_id`` is the sender of a node's
message and the recipient of a coordinator's per-node message.

Stage of each message: AdvertiseKeys -> ADVERTISE_KEYS; KeyRoster, ShareKeys -> SHARE_KEYS;
ForwardedShares, MaskedInput -> MASKED_INPUT; ConsistencyRequest, ConsistencySignature ->
CONSISTENCY_CHECK; UnmaskRequest, UnmaskResponse -> UNMASK. The first round of an epoch runs all
five stages, every later round only the last three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tessera.core.errors import InvalidRequest
from tessera.core.secagg.keys import SignedKeys
from tessera.core.types import Stage

PROTOCOL_STAGES = (
    Stage.ADVERTISE_KEYS,
    Stage.SHARE_KEYS,
    Stage.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK,
    Stage.UNMASK,
)
# The stages of every round after the first of an epoch (keys and mask-key shares are reused).
ROUND_STAGES = (Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)


class BindingMismatch(InvalidRequest):
    """A message belongs to another job, epoch, round, stage or node; refused as a possible replay."""

    code = "secagg.binding_mismatch"


@dataclass(frozen=True, slots=True)
class Binding:
    job_id: str
    epoch: int
    round_no: int
    stage: Stage

    def __post_init__(self) -> None:
        if not self.job_id or not 0 <= self.round_no < 2**32 or not 0 <= self.epoch < 2**32:
            raise InvalidRequest(
                "a secure-aggregation binding needs a job id, an epoch and a round in [0, 2^32)"
            )
        if self.stage not in PROTOCOL_STAGES:
            raise InvalidRequest("a secure-aggregation message names an unknown stage")

    def expect(self, expected: Binding) -> None:
        """Raise :class:`BindingMismatch` unless this binding is exactly ``expected``."""
        if self != expected:
            raise BindingMismatch(
                f"a secure-aggregation message for another job, epoch, round or stage was refused "
                f"(expected stage '{expected.stage.value}' of round {expected.round_no})"
            )


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Node -> coordinator: the epoch's signed public keys (once per epoch)."""

    binding: Binding
    keys: SignedKeys

    @property
    def node_id(self) -> str:
        return self.keys.node_id


@dataclass(frozen=True, slots=True)
class KeyRoster:
    """Coordinator -> every node: the advertisements of all nodes that advertised (U1)."""

    binding: Binding
    advertisements: tuple[SignedKeys, ...]


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Node -> coordinator: per holder, one AES-GCM ciphertext of the shares of s_u (the epoch's
    mask key) and of b_u (the first round's self-mask seed); (recipient, ciphertext) pairs."""

    binding: Binding
    node_id: str
    ciphertexts: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class ForwardedShares:
    """Coordinator -> one node: the round's active set A_r and the ciphertexts addressed to it.

    First round: A is U2 (the nodes that shared keys) and the ciphertexts are ShareKeys'. Later
    rounds: A is the set that answered the previous unmask with next-round shares, and the
    ciphertexts are those shares of this round's self-mask seeds (``UnmaskResponse.next_shares``).
    """

    binding: Binding
    node_id: str
    active: tuple[str, ...]
    ciphertexts: tuple[tuple[str, bytes], ...]  # (sender, ciphertext)


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """Node -> coordinator: y = x + PRG(b_r) + sum of signed pairwise masks, modulo 2^bits."""

    binding: Binding
    node_id: str
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """Coordinator -> every survivor: the set U3 of nodes whose masked input was received."""

    binding: Binding
    survivors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """Node -> coordinator: ECDSA signature (certificate key) over the round's consistency
    payload (:func:`~tessera.core.secagg.consistency.payload`): job, epoch, round, A_r, U3 and
    the digest of the security parameters."""

    binding: Binding
    node_id: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Coordinator -> signers: U3, the collected signatures on it, and whether a round follows."""

    binding: Binding
    survivors: tuple[str, ...]
    signatures: tuple[tuple[str, bytes], ...] = ()  # (signer, signature)
    next_round: bool = False


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Node -> coordinator: self-mask-seed shares of survivors, mask-key shares of dropped nodes,
    and -- when another round follows -- the encrypted shares of the next round's self-mask seed,
    one per holder (recipient, ciphertext)."""

    binding: Binding
    node_id: str
    seed_shares: tuple[tuple[str, bytes], ...]  # (owner, share of b_owner), owner in U3
    key_shares: tuple[tuple[str, bytes], ...]  # (owner, share of s_owner), owner in A_r \ U3
    next_shares: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class AggregateResult:
    """The coordinator's output: the sum over ``survivors`` modulo 2^bits (never sent by nodes)."""

    job_id: str
    epoch: int
    round_no: int
    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # active but sent no masked input; their masks were removed


@dataclass(frozen=True, slots=True, eq=False)
class RoundOutcome:
    """What :meth:`SecAggServer.finish` returns: the round's result and, when a next round was
    announced and can run, the MASKED_INPUT inputs of that round (node -> ForwardedShares).
    An empty ``forward`` after a requested next round means too few nodes remain in the epoch:
    the coordinator must start a new epoch (fresh keys) to go on."""

    result: AggregateResult
    forward: dict[str, ForwardedShares] = field(default_factory=dict)


Message = (
    AdvertiseKeys
    | KeyRoster
    | ShareKeys
    | ForwardedShares
    | MaskedInput
    | ConsistencyRequest
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskResponse
)
