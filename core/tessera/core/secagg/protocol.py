"""Round configuration and the pieces both protocol halves share (Bonawitz et al. 2017, §4).

The two halves are explicit state machines: :class:`~tessera.core.secagg.client.SecAggClient`
(one per node) and :class:`~tessera.core.secagg.server.SecAggServer` (the coordinator). They
exchange the messages of :mod:`.messages`; any transport may carry them (encoded by :mod:`.codec`).

Node sets, as in the paper: U1 advertised keys, U2 shared keys (U2 within U1), U3 sent a masked
input (the *survivors*, whose inputs are summed), U2 without U3 are *dropped* (their pairwise masks
are removed by reconstructing their mask keys). A node's secrets are shared among its *holders*:
itself and its graph neighbours that are in U1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg._util import lp, lp_str
from tessera.core.secagg.graph import NeighbourGraph, complete_graph
from tessera.core.secagg.messages import Binding
from tessera.core.types import Stage

_SHARE_AAD_TAG = b"tessera/secagg/v1/share"


class RoundAborted(CryptoError):
    """The round cannot finish safely (too few nodes, unrecoverable or disconnected survivors).

    ``stage`` names where it stopped; the message gives counts only, never data.
    """

    code = "secagg.round_aborted"

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(f"secure aggregation stopped at stage '{stage.value}': {reason}")
        self.stage = stage


class StageError(InvalidRequest):
    """A step was called out of order, twice, after the stage closed or by an unexpected node."""

    code = "secagg.out_of_order"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundConfig:
    """Public parameters of one secure-aggregation round; every party must hold the same one.

    ``threshold``: the fewest survivors whose sum may be released, and (complete graph) the
    Shamir threshold; it must be a strict majority of the participants so that no coordinator
    can obtain both secrets of one node. ``bits``: arithmetic is modulo 2^bits (1..64) on uint32
    words when bits <= 32, else uint64. ``length``: the number of vector entries.
    """

    job_id: str
    round_no: int
    participants: tuple[str, ...]
    threshold: int
    bits: int
    length: int
    graph: NeighbourGraph | None = None  # None: the complete graph on the participants

    def __post_init__(self) -> None:
        nodes = tuple(sorted(self.participants))
        object.__setattr__(self, "participants", nodes)
        if len(set(nodes)) != len(nodes) or any(not n for n in nodes):
            raise InvalidRequest("participants must be distinct, non-empty node ids")
        if self.graph is None:
            object.__setattr__(self, "graph", complete_graph(nodes))
        elif self.graph.nodes != nodes:
            raise InvalidRequest("the masking graph must cover exactly the participants")
        Binding(self.job_id, self.round_no, Stage.ADVERTISE_KEYS)  # validates job_id and round
        n = len(nodes)
        graph = self.mask_graph
        if not 2 <= self.threshold <= n:
            raise InvalidRequest("the threshold must be at least 2 and at most the number of participants")
        if graph.complete and 2 * self.threshold <= n:
            raise InvalidRequest(
                "with the complete graph the threshold must be a strict majority of participants"
            )
        if not 1 <= self.bits <= 64:
            raise InvalidRequest("the modulus is 2^bits with bits between 1 and 64")
        if not 1 <= self.length < 2**32:
            raise InvalidRequest("the vector length must be between 1 and 2^32 - 1")

    @property
    def mask_graph(self) -> NeighbourGraph:
        """Who masks with whom (always set after construction)."""
        assert self.graph is not None
        return self.graph

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        return np.dtype(np.uint32 if self.bits <= 32 else np.uint64)

    @property
    def share_threshold(self) -> int:
        """Shares needed to rebuild one node's secret: ``threshold`` (complete graph) or a strict
        majority of a full neighbourhood (sparse graph, see :mod:`.graph`)."""
        if self.mask_graph.complete:
            return self.threshold
        return (self.mask_graph.degree + 1) // 2 + 1

    def share_id(self, node: str) -> int:
        """The Shamir evaluation point of ``node``: its 1-based position among the participants."""
        return self.participants.index(node) + 1

    def binding(self, stage: Stage) -> Binding:
        return Binding(self.job_id, self.round_no, stage)

    def holders(self, node: str, active: set[str] | frozenset[str]) -> set[str]:
        """Nodes holding shares of ``node``'s secrets when ``active`` nodes received them."""
        return (set(self.mask_graph.of(node)) & set(active)) | {node}

    def reduce(self, vector: np.ndarray) -> None:
        """In place: reduce a ``dtype`` vector modulo 2^bits."""
        if self.bits < 8 * self.dtype.itemsize:
            np.bitwise_and(vector, self.dtype.type((1 << self.bits) - 1), out=vector)

    def check_vector(self, vector: np.ndarray, *, what: str) -> None:
        """Raise :class:`InvalidRequest` unless ``vector`` is 1-D unsigned, of ``length``, < 2^bits."""
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.shape[0] != self.length:
            raise InvalidRequest(f"the {what} must be a 1-D array of the round's length")
        if not np.issubdtype(vector.dtype, np.unsignedinteger) or vector.dtype.itemsize > self.dtype.itemsize:
            raise InvalidRequest(f"the {what} must be unsigned integers no wider than the round's words")
        if self.bits < 8 * vector.dtype.itemsize and bool((vector >> vector.dtype.type(self.bits)).any()):
            raise InvalidRequest(f"the {what} has entries at or above 2^bits")


def mask_sign(node: str, peer: str) -> int:
    """The sign with which ``node`` adds the pairwise mask shared with ``peer`` (they cancel)."""
    return 1 if node < peer else -1


def _share_aad(config: RoundConfig, sender: str, receiver: str) -> bytes:
    binding = config.binding(Stage.SHARE_KEYS)
    return (
        lp(_SHARE_AAD_TAG)
        + lp_str(binding.job_id)
        + struct.pack(">Q", binding.round_no)
        + lp_str(sender)
        + lp_str(receiver)
    )


def _nonce(sender: str, receiver: str) -> bytes:
    # One key per (job, round, pair) encrypts exactly two messages, one per direction.
    return bytes(11) + bytes([0 if sender < receiver else 1])


def seal_shares(
    key: bytes, config: RoundConfig, *, sender: str, receiver: str, seed_share: bytes, key_share: bytes
) -> bytes:
    """AES-256-GCM ciphertext of the two shares that ``sender`` gives ``receiver``."""
    plain = lp(seed_share) + lp(key_share)
    return AESGCM(key).encrypt(_nonce(sender, receiver), plain, _share_aad(config, sender, receiver))


def open_shares(
    key: bytes, config: RoundConfig, *, sender: str, receiver: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """(seed share, key share) from a ciphertext; :class:`CryptoError` if it was altered or misrouted."""
    try:
        plain = AESGCM(key).decrypt(
            _nonce(sender, receiver), ciphertext, _share_aad(config, sender, receiver)
        )
    except InvalidTag:
        raise CryptoError("a share ciphertext failed authentication") from None
    # The plaintext is authenticated, but its sender may still be faulty: parse defensively.
    n = int.from_bytes(plain[:4], "big")
    seed_share = plain[4 : 4 + n]
    m = int.from_bytes(plain[4 + n : 8 + n], "big")
    key_share = plain[8 + n :]
    if len(plain) < 8 or len(seed_share) != n or len(key_share) != m:
        raise CryptoError("a share plaintext is malformed")
    return seed_share, key_share
