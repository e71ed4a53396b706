"""The security parameters a node derives itself, and the argument they rest on.

A node never takes the coordinator's word for a threshold or a graph: it builds
:class:`SecurityParams` from its own policy (``min_participants``, ``collusion_tolerance``) and
code constants, and :meth:`SecurityParams.check` refuses an epoch (``secagg.unsafe_parameters``)
before any key leaves the node.

Adversary. The coordinator is honest-but-curious about the data and *active* about the round's
bookkeeping: it may drop, delay, reorder and lie about who dropped, telling each node another
story. Up to ``c = collusion_tolerance`` nodes may collude with it, sharing every secret they hold
(their signing keys too, so they can sign anything). The graph seed is drawn by the coordinator
before it knows any node's keys and the colluders are fixed before the job (static corruption).

Notation: n participants of the epoch, t the threshold (fewest survivors whose sum is released),
k the degree of the masking graph, tau the Shamir threshold of each node's secrets (t on the
complete graph, ``k // 2 + 1`` -- a strict majority of the k + 1 holders -- on the sparse one), A_r
the round's active set, U3 the survivors (masked input received), A_r \\ U3 the dropped nodes.

1. One story per round (consistency check). Before revealing any share a node verifies signatures
   of at least t distinct participants on exactly what it signed itself: (job, epoch, round, A_r,
   U3, digest of these parameters). An honest node signs once per round. If two honest nodes were
   both satisfied with different sets, their signer sets S1, S2 (each >= t) would meet only in
   colluders, so n >= |S1 u S2| >= 2t - c. Hence ``t > (n + c) / 2`` makes every honest node that
   reveals anything agree on one (A_r, U3): for each node u the honest holders reveal either the
   share of b_u (u in U3) or the share of s_u (u dropped), never both across nodes.
2. Colluders alone never finish a secret: they hold at most c shares of any node's b_u or s_u,
   so ``tau > c`` (complete graph: t > c follows from 1; sparse graph: k >= 2c).
3. What is learnt. With 1 and 2, the coalition knows b_u for u in U3, s_v for dropped v, and the
   pairwise masks touching colluders. Every honest survivor's input stays hidden behind the
   pairwise masks it shares with other honest survivors, which cancel only in the total, as long
   as the honest survivors are connected in the graph. Complete graph: always. Sparse graph: the
   Harary graph is k-vertex-connected for *any* node ordering, and at most (n - t) non-survivors
   plus c colluders are removed, so ``k >= (n - t) + c + 1`` keeps them connected whatever the
   seed, whichever nodes drop or are claimed dropped. The coalition then learns only the sum of
   the honest inputs in U3 -- at least t - c of them -- plus its own inputs: nothing about one node
   or about a sum of fewer than t - c honest nodes. DP noise is sized for t survivors, so a
   coalition that subtracts its own c noise shares sees the sum with (t - c) / t of the noise
   variance (the DP accounting must allow for it; see the DP module).
4. Many rounds per epoch. Pairwise masks come from HKDF bound to (job, epoch, round), and b_u is
   fresh per round with fresh shares, so revealing b_u in round r says nothing about round r + 1.
   Once s_u is revealed (u claimed dropped in round r), every later round of u would be unmasked
   by b_u alone; therefore u takes no further part in the epoch (it never completed round r's
   unmask, so it holds no next-round seed), honest holders refuse to reveal u's b-shares after
   they revealed -- or signed a survivor set implying -- its s-shares, and the coordinator prunes u.
   A new epoch has fresh keys; a node starting one destroys every older epoch of the job first.
5. Liveness, not safety, rests on probabilities: the degree is also at least
   :func:`~tessera.core.secagg.graph.choose_degree` for the node's own dropout assumption
   (:data:`ASSUMED_DROPOUT`, which a coordinator's lower figure cannot undercut), so each node keeps
   a strict majority of its holders with probability 1 - 2^-20.

Each result therefore guarantees, per round: the released total is the sum over U3 (|U3| >= t),
and no coalition of the coordinator with at most c nodes learns more than stated in 3 -- assuming
X25519/HKDF/AES are secure, signatures unforgeable, the certificates honest (the CA), and that
more than c nodes are not colluding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tessera.core.errors import CryptoError
from tessera.core.secagg.graph import NeighbourGraph, choose_degree, complete_graph, sparse_graph

if TYPE_CHECKING:
    from tessera.core.secagg.protocol import EpochConfig

# The per-node, per-round drop probability the sparse graph must absorb (liveness only). A
# coordinator may ask for more, never for less: a tiny figure would shrink the graph to a ring.
ASSUMED_DROPOUT = 0.1
_MAX_DROPOUT = 0.45


class UnsafeParameters(CryptoError):
    """The coordinator's threshold or graph is weaker than this node's policy and the security
    argument allow; the node refuses the epoch before any key leaves it."""

    code = "secagg.unsafe_parameters"


class _PolicyLike(Protocol):
    @property
    def min_participants(self) -> int: ...
    @property
    def collusion_tolerance(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityParams:
    """One node's own security assumptions (its policy plus code constants).

    ``min_participants``: the policy's floor on the threshold. ``collusion_tolerance`` (c): how
    many nodes may collude with the coordinator. ``assumed_dropout``: see :data:`ASSUMED_DROPOUT`.
    """

    min_participants: int
    collusion_tolerance: int = 0
    assumed_dropout: float = ASSUMED_DROPOUT

    def __post_init__(self) -> None:
        if self.min_participants < 2:
            raise ValueError("min_participants is at least 2")
        if self.collusion_tolerance < 0:
            raise ValueError("collusion_tolerance cannot be negative")
        if not 0.0 <= self.assumed_dropout <= _MAX_DROPOUT:
            raise ValueError("the assumed dropout is a probability in [0, 0.45]")

    @classmethod
    def from_policy(cls, policy: _PolicyLike) -> SecurityParams:
        return cls(min_participants=policy.min_participants, collusion_tolerance=policy.collusion_tolerance)

    def min_threshold(self, n: int) -> int:
        """The lowest threshold this node accepts among ``n`` participants (see 1 above)."""
        return max(self.min_participants, (n + self.collusion_tolerance) // 2 + 1, 2)

    def min_degree(self, n: int, threshold: int, *, dropout: float = 0.0) -> int:
        """The lowest even sparse-graph degree this node accepts; ``n - 1`` means "complete only".

        ``dropout`` (e.g. the coordinator's figure) can raise the liveness assumption, never lower
        it below :attr:`assumed_dropout`.
        """
        c = self.collusion_tolerance
        rate = max(self.assumed_dropout, min(float(dropout), _MAX_DROPOUT))
        k = max(choose_degree(n, dropout=rate), 2 * c, (n - threshold) + c + 1, 2)
        k += k % 2
        return n - 1 if k >= n - 1 else k

    def graph(
        self,
        nodes: Iterable[str],
        *,
        threshold: int,
        seed: bytes | None,
        proposed_degree: int = 0,
        dropout: float = 0.0,
    ) -> NeighbourGraph:
        """The masking graph this node builds itself: complete without a seed, else the Harary
        graph from the public ``seed`` with degree ``max(proposed_degree, min_degree)``.

        Every node with the same minimum builds the same graph; a node with a stricter policy
        builds a denser one, and the signed parameter digest then stops the epoch at SHARE_KEYS
        (the coordinator should propose the largest minimum among its participants).
        """
        ordered = sorted(nodes)
        if seed is None:
            return complete_graph(ordered)
        k = max(proposed_degree, self.min_degree(len(ordered), threshold, dropout=dropout))
        k += k % 2
        return sparse_graph(ordered, seed=seed, degree=k)

    def check(self, config: EpochConfig) -> None:
        """Raise :class:`UnsafeParameters` unless ``config`` meets this node's requirements."""
        n, t = len(config.participants), config.threshold
        c = self.collusion_tolerance
        floor = self.min_threshold(n)
        if t < floor:
            raise UnsafeParameters(
                f"the threshold {t} is below what this node accepts among {n} participants ({floor}: "
                f"its min_participants {self.min_participants}, a strict majority, and more than "
                f"(n + {c}) / 2 for its collusion tolerance {c})"
            )
        graph = config.mask_graph
        if not graph.complete:
            need = self.min_degree(n, t)
            have = min(len(graph.of(v)) for v in graph.nodes)
            if need >= n - 1 or have < need:
                raise UnsafeParameters(
                    f"the masking graph gives some node {have} neighbours; this node needs "
                    + ("the complete graph" if need >= n - 1 else f"at least {need}")
                    + f" for {n} participants, threshold {t} and collusion tolerance {c}"
                )
        if config.share_threshold <= c:
            raise UnsafeParameters(
                f"{config.share_threshold} shares rebuild a node's secret, no more than the {c} "
                "nodes this node's policy assumes may collude"
            )
