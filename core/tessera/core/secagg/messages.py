"""The secure-aggregation messages as frozen dataclasses (wire form: :mod:`.codec`).

Every message carries a :class:`Binding` (job, round, stage); a receiver refuses any message
whose binding differs from the one it expects, which stops replays from another job or round and
messages delivered out of stage order. ``node_id`` is the sender of a node's message and the
recipient of a coordinator's per-node message.

Stage of each message: AdvertiseKeys -> ADVERTISE_KEYS; KeyRoster, ShareKeys -> SHARE_KEYS;
ForwardedShares, MaskedInput -> MASKED_INPUT; UnmaskRequest, UnmaskResponse -> UNMASK.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.core.errors import InvalidRequest
from tessera.core.secagg.keys import SignedKeys
from tessera.core.types import Stage

PROTOCOL_STAGES = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


class BindingMismatch(InvalidRequest):
    """A message belongs to another job, round, stage or node; refused as a possible replay."""

    code = "secagg.binding_mismatch"


@dataclass(frozen=True, slots=True)
class Binding:
    job_id: str
    round_no: int
    stage: Stage

    def __post_init__(self) -> None:
        if not self.job_id or not 0 <= self.round_no < 2**32:
            raise InvalidRequest("a secure-aggregation binding needs a job id and a round in [0, 2^32)")
        if self.stage not in PROTOCOL_STAGES:
            raise InvalidRequest("a secure-aggregation message names an unknown stage")

    def expect(self, expected: Binding) -> None:
        """Raise :class:`BindingMismatch` unless this binding is exactly ``expected``."""
        if self != expected:
            raise BindingMismatch(
                f"a secure-aggregation message for another job, round or stage was refused "
                f"(expected stage '{expected.stage.value}')"
            )


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Node -> coordinator: this round's signed public keys."""

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
    """Node -> coordinator: one AES-GCM ciphertext of Shamir shares per holder (recipient, ct)."""

    binding: Binding
    node_id: str
    ciphertexts: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class ForwardedShares:
    """Coordinator -> one node: the set U2 of nodes that shared, and the ciphertexts for it."""

    binding: Binding
    node_id: str
    shared: tuple[str, ...]
    ciphertexts: tuple[tuple[str, bytes], ...]  # (sender, ciphertext)


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """Node -> coordinator: y = x + PRG(b) + sum of signed pairwise masks, modulo 2^bits."""

    binding: Binding
    node_id: str
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Coordinator -> survivors: the set U3 of nodes whose masked input was received."""

    binding: Binding
    survivors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Node -> coordinator: self-mask-seed shares of survivors, mask-key shares of dropped nodes."""

    binding: Binding
    node_id: str
    seed_shares: tuple[tuple[str, bytes], ...]  # (owner, share of b_owner), owner in U3
    key_shares: tuple[tuple[str, bytes], ...]  # (owner, share of s_owner), owner in U2 \ U3


@dataclass(frozen=True, slots=True, eq=False)
class AggregateResult:
    """The coordinator's output: the sum over ``survivors`` modulo 2^bits (never sent by nodes)."""

    job_id: str
    round_no: int
    total: np.ndarray
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]  # shared keys but sent no masked input; their masks were removed


Message = (
    AdvertiseKeys | KeyRoster | ShareKeys | ForwardedShares | MaskedInput | UnmaskRequest | UnmaskResponse
)
