"""Who masks with whom: the complete graph, or the sparse SecAgg+ graph (Bell et al., CCS 2020).

The sparse graph is a Harary graph -- a circulant where ring position i is joined to positions
i +- 1 .. i +- k/2 -- over a pseudo-random ordering of the nodes derived from a public 32-byte seed,
so every node derives the same graph and no party chooses its neighbours. It is k-regular and
k-vertex-connected: any fewer than k dropouts leave the survivors connected.

Each node's secrets are Shamir-shared among its *holders* (its neighbours and itself, h = k + 1)
with threshold ``h // 2 + 1``: a strict majority, so even a coordinator that tells different
holders different stories cannot collect both the self-mask share and the mask-key share of one
node (double masking holds per neighbourhood).

Choice of k (see :func:`choose_degree`): the smallest even k such that, when each node drops
independently with probability ``dropout``, (a) the union bound over nodes on "fewer than
``h // 2 + 1`` holders survive" is at most 2^-20 (the round completes), and (b) the union bound on
"two runs of k/2 consecutive ring positions all drop" -- the only way to disconnect the survivors,
which would reveal partial sums -- is at most 2^-40. Both shrink exponentially in k, so k grows
as O(log n), as in Bell et al. When no k below n - 1 qualifies the graph is complete. Clients
and the coordinator also check connectivity of the actual survivors before unmasking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from tessera.core.secagg.prg import SEED_BYTES, expand

_COMPLETION_FAILURE = 2.0**-20
_PRIVACY_FAILURE = 2.0**-40


@dataclass(frozen=True, slots=True)
class NeighbourGraph:
    """An undirected graph on sorted node ids; ``complete`` when everyone neighbours everyone."""

    nodes: tuple[str, ...]
    neighbours: Mapping[str, frozenset[str]]
    complete: bool

    def __post_init__(self) -> None:
        if list(self.nodes) != sorted(set(self.nodes)):
            raise ValueError("graph nodes must be distinct and sorted")
        if set(self.neighbours) != set(self.nodes):
            raise ValueError("every node needs a neighbour set")
        for node, peers in self.neighbours.items():
            if node in peers or any(node not in self.neighbours.get(p, ()) for p in peers):
                raise ValueError("the neighbour relation must be symmetric and loop-free")

    def of(self, node: str) -> frozenset[str]:
        return self.neighbours[node]

    @property
    def degree(self) -> int:
        """The largest number of neighbours of any node."""
        return max((len(p) for p in self.neighbours.values()), default=0)

    def is_connected(self, subset: Iterable[str]) -> bool:
        """Whether the subgraph induced by ``subset`` is connected (empty counts as connected)."""
        members = set(subset)
        if not members:
            return True
        start = next(iter(members))
        seen, todo = {start}, [start]
        while todo:
            for peer in self.neighbours[todo.pop()] & members:
                if peer not in seen:
                    seen.add(peer)
                    todo.append(peer)
        return seen == members


def _sorted_unique(nodes: Iterable[str]) -> tuple[str, ...]:
    ordered = tuple(sorted(nodes))
    if len(set(ordered)) != len(ordered) or not ordered:
        raise ValueError("a graph needs at least one node and distinct node ids")
    return ordered


def complete_graph(nodes: Iterable[str]) -> NeighbourGraph:
    ordered = _sorted_unique(nodes)
    everyone = frozenset(ordered)
    return NeighbourGraph(ordered, {n: everyone - {n} for n in ordered}, complete=True)


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P[Binomial(n, p) <= k], 0 < p < 1, summed in log space so large n cannot overflow."""
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        log_comb = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        total += math.exp(log_comb + i * log_p + (n - i) * log_q)
    return total


def choose_degree(n: int, *, dropout: float = 0.1) -> int:
    """Even neighbour count k for ``n`` nodes (see the module docstring); ``n - 1`` = complete."""
    if n < 1 or not 0.0 <= dropout < 0.5:
        raise ValueError("need n >= 1 and a dropout probability in [0, 0.5)")
    for k in range(2, n - 1, 2):
        holders = k + 1
        needed = holders // 2 + 1
        completion = n * _binomial_cdf(needed - 1, holders, 1 - dropout) if dropout > 0 else 0.0
        privacy = float(n) ** 2 * dropout**k
        if completion <= _COMPLETION_FAILURE and privacy <= _PRIVACY_FAILURE:
            return k
    return n - 1


def _permutation(count: int, seed: bytes) -> list[int]:
    # Fisher-Yates driven by the AES-CTR PRG; modulo bias is removed by rejection sampling.
    words = iter(expand(seed, 4 * count + 64, dtype=np.uint64).tolist())
    order = list(range(count))
    for i in range(count - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            try:
                word = next(words)
            except StopIteration:  # pragma: no cover - probability below 2^-64 per draw
                raise RuntimeError("graph PRG exhausted") from None
            if word < limit:
                break
        j = word % bound
        order[i], order[j] = order[j], order[i]
    return order


def sparse_graph(
    nodes: Iterable[str], *, seed: bytes, degree: int | None = None, dropout: float = 0.1
) -> NeighbourGraph:
    """The SecAgg+ Harary graph for ``nodes`` from a public 32-byte ``seed``.

    ``degree`` (even, >= 2) defaults to :func:`choose_degree`; a degree of ``n - 1`` or more
    gives the complete graph.
    """
    ordered = _sorted_unique(nodes)
    if len(seed) != SEED_BYTES:
        raise ValueError("the graph seed is exactly 32 bytes")
    n = len(ordered)
    k = choose_degree(n, dropout=dropout) if degree is None else degree
    if k >= n - 1:  # checked first: choose_degree answers n - 1 (odd or not) for "complete"
        return complete_graph(ordered)
    if k < 2 or k % 2:
        raise ValueError("the sparse graph degree must be an even number of at least 2")
    ring = [ordered[i] for i in _permutation(n, seed)]
    neighbours: dict[str, set[str]] = {node: set() for node in ordered}
    for pos, node in enumerate(ring):
        for step in range(1, k // 2 + 1):
            peer = ring[(pos + step) % n]
            neighbours[node].add(peer)
            neighbours[peer].add(node)
    return NeighbourGraph(ordered, {n_: frozenset(p) for n_, p in neighbours.items()}, complete=False)
