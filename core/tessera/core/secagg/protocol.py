"""Epoch configuration and the pieces both protocol halves share (Bonawitz et al. 2017, §4).

The two halves are explicit state machines: :class:`~tessera.core.secagg.client.SecAggClient`
(one per node and epoch) and :class:`~tessera.core.secagg.server.SecAggServer` (the coordinator,
one per epoch). They exchange the messages of :mod:`.messages`; any transport may carry them
(encoded by :mod:`.codec`). The security argument is in :mod:`.security`.

Node sets, as in the paper: U1 advertised keys, U2 shared keys (U2 within U1). Per round r: A_r
the *active* nodes (A_first = U2; A_{r+1} = the survivors of r that answered its unmask with
next-round shares), U3 sent a masked input (the *survivors*, whose inputs are summed), A_r without
U3 are *dropped* (their pairwise masks are removed by reconstructing their mask keys, so they are
out for the rest of the epoch). A node's secrets are shared among its *holders*: itself and its
graph neighbours that were active when it shared.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg._util import lp, lp_str
from tessera.core.secagg.graph import NeighbourGraph, complete_graph
from tessera.core.secagg.messages import Binding
from tessera.core.types import Stage

_SHARE_AAD_TAG = b"tessera/secagg/v2/share"
_PARAMS_TAG = b"tessera/secagg/v2/params"


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
class EpochConfig:
    """Public parameters of one epoch of secure aggregation (one key set, one or more rounds).

    Every party must hold the same one: its :attr:`params_digest` is signed into every key
    advertisement and consistency signature. ``threshold``: the fewest survivors whose sum may be
    released, and (complete graph) the Shamir threshold; nodes check it against their own policy
    (:mod:`.security`). ``bits``: arithmetic is modulo 2^bits (1..64) on uint32 words when
    bits <= 32, else uint64. ``length``: the number of vector entries. ``bits`` and ``length`` are
    fixed for the epoch (a job whose vector shape changes starts a new epoch). Rounds are numbered
    ``first_round``, ``first_round + 1``, ...
    """

    job_id: str
    epoch: int
    first_round: int
    participants: tuple[str, ...]
    threshold: int
    bits: int
    length: int
    graph: NeighbourGraph | None = None  # None: the complete graph on the participants
    _digest: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        nodes = tuple(sorted(self.participants))
        object.__setattr__(self, "participants", nodes)
        if len(set(nodes)) != len(nodes) or any(not n for n in nodes):
            raise InvalidRequest("participants must be distinct, non-empty node ids")
        if self.graph is None:
            object.__setattr__(self, "graph", complete_graph(nodes))
        elif self.graph.nodes != nodes:
            raise InvalidRequest("the masking graph must cover exactly the participants")
        Binding(self.job_id, self.epoch, self.first_round, Stage.ADVERTISE_KEYS)  # validates ids
        n = len(nodes)
        if not 2 <= self.threshold <= n:
            raise InvalidRequest("the threshold must be at least 2 and at most the number of participants")
        if 2 * self.threshold <= n:
            raise InvalidRequest("the threshold must be a strict majority of participants")
        if not 1 <= self.bits <= 64:
            raise InvalidRequest("the modulus is 2^bits with bits between 1 and 64")
        if not 1 <= self.length < 2**32:
            raise InvalidRequest("the vector length must be between 1 and 2^32 - 1")
        object.__setattr__(self, "_digest", self._compute_digest())

    def _compute_digest(self) -> bytes:
        graph = self.mask_graph
        h = hashlib.sha256(lp(_PARAMS_TAG))
        h.update(
            struct.pack(">QIIIB", self.first_round, self.threshold, self.bits, self.length, graph.complete)
        )
        h.update(struct.pack(">I", self.share_threshold))
        for node in self.participants:
            h.update(lp_str(node))
            h.update(b"".join(lp_str(peer) for peer in sorted(graph.of(node))))
        return h.digest()

    @property
    def params_digest(self) -> bytes:
        """SHA-256 of participants, threshold, share threshold, bits, length and the graph."""
        return self._digest

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

    def binding(self, stage: Stage, round_no: int | None = None) -> Binding:
        """The binding of ``stage`` in ``round_no`` (default: the epoch's first round)."""
        return Binding(self.job_id, self.epoch, self.first_round if round_no is None else round_no, stage)

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


class ShareKind(enum.IntEnum):
    """What a share ciphertext carries: SHARE_KEYS (b_first and s) or NEXT_SEED (b of one round)."""

    SHARE_KEYS = 1
    NEXT_SEED = 2


def _share_aad(config: EpochConfig, kind: ShareKind, round_no: int, sender: str, receiver: str) -> bytes:
    return (
        lp(_SHARE_AAD_TAG)
        + lp_str(config.job_id)
        + struct.pack(">QQB", config.epoch, round_no, kind)
        + lp_str(sender)
        + lp_str(receiver)
    )


def _nonce(kind: ShareKind, round_no: int, sender: str, receiver: str) -> bytes:
    # One key per (job, epoch, pair) encrypts at most one message per (kind, round, direction).
    return struct.pack(">BQxxB", kind, round_no, 0 if sender < receiver else 1)


def seal_shares(
    key: bytes,
    config: EpochConfig,
    *,
    kind: ShareKind,
    round_no: int,
    sender: str,
    receiver: str,
    shares: tuple[bytes, ...],
) -> bytes:
    """AES-256-GCM ciphertext of the shares ``sender`` gives ``receiver`` (bound to kind and round)."""
    plain = b"".join(lp(share) for share in shares)
    return AESGCM(key).encrypt(
        _nonce(kind, round_no, sender, receiver), plain, _share_aad(config, kind, round_no, sender, receiver)
    )


def open_shares(
    key: bytes,
    config: EpochConfig,
    *,
    kind: ShareKind,
    round_no: int,
    sender: str,
    receiver: str,
    ciphertext: bytes,
) -> tuple[bytes, ...]:
    """The shares in a ciphertext (two for SHARE_KEYS: b, s; one for NEXT_SEED: b);
    :class:`CryptoError` if it was altered, misrouted, or made for another kind or round."""
    try:
        plain = AESGCM(key).decrypt(
            _nonce(kind, round_no, sender, receiver),
            ciphertext,
            _share_aad(config, kind, round_no, sender, receiver),
        )
    except InvalidTag:
        raise CryptoError("a share ciphertext failed authentication") from None
    # The plaintext is authenticated, but its sender may still be faulty: parse defensively.
    shares, pos = [], 0
    while pos < len(plain):
        n = int.from_bytes(plain[pos : pos + 4], "big")
        share = plain[pos + 4 : pos + 4 + n]
        if pos + 4 > len(plain) or len(share) != n:
            raise CryptoError("a share plaintext is malformed")
        shares.append(share)
        pos += 4 + n
    if len(shares) != (2 if kind is ShareKind.SHARE_KEYS else 1):
        raise CryptoError("a share plaintext is malformed")
    return tuple(shares)
