"""Neighbour graphs: complete and SecAgg+ sparse."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tessera.core.secagg.graph import NeighbourGraph, choose_degree, complete_graph, sparse_graph

NODES = [f"node-{i:02d}" for i in range(30)]


def test_complete_graph() -> None:
    g = complete_graph(["c", "a", "b"])
    assert g.nodes == ("a", "b", "c")
    assert g.complete and g.degree == 2
    assert g.of("a") == {"b", "c"}


def test_sparse_graph_is_deterministic_regular_symmetric_and_connected() -> None:
    seed = bytes(range(32))
    g = sparse_graph(NODES, seed=seed, degree=6)
    assert g == sparse_graph(reversed(NODES), seed=seed, degree=6)  # every node derives the same
    assert g != sparse_graph(NODES, seed=bytes(32), degree=6)
    assert not g.complete
    assert all(len(g.of(n)) == 6 for n in NODES)
    assert all(n in g.of(p) for n in NODES for p in g.of(n))
    assert g.is_connected(NODES)


def test_sparse_graph_survives_fewer_than_k_dropouts() -> None:
    # A Harary graph of degree k is k-vertex-connected: removing k-1 nodes keeps it connected.
    g = sparse_graph(NODES[:12], seed=bytes(range(32)), degree=4)
    for removed in itertools.combinations(NODES[:12], 3):
        assert g.is_connected(set(NODES[:12]) - set(removed))


def test_disconnected_subset_is_detected() -> None:
    g = sparse_graph(NODES, seed=bytes(32), degree=2)  # a ring
    ring_neighbours = sorted(g.of(NODES[0]))
    assert not g.is_connected(set(NODES) - {NODES[0], *ring_neighbours} | {NODES[0]})


def test_degree_choice() -> None:
    assert choose_degree(5) == 4  # small rounds stay complete
    for n in (50, 200, 1000):
        k = choose_degree(n)
        assert k % 2 == 0 and k < n - 1
    assert choose_degree(1000) < choose_degree(1000, dropout=0.3)
    assert sparse_graph(NODES[:5], seed=bytes(32)).complete


def test_invalid_graphs_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        sparse_graph(NODES, seed=bytes(32), degree=3)
    with pytest.raises(ValueError, match="32 bytes"):
        sparse_graph(NODES, seed=b"short")
    with pytest.raises(ValueError, match="distinct"):
        complete_graph(["a", "a"])
    with pytest.raises(ValueError, match="symmetric"):
        NeighbourGraph(("a", "b"), {"a": frozenset({"b"}), "b": frozenset()}, complete=False)


def test_permutation_is_roughly_uniform() -> None:
    # Node 0's ring neighbours over many seeds should hit every other node (no fixed structure).
    rng = np.random.default_rng(4)
    seen: set[str] = set()
    for _ in range(200):
        seen |= sparse_graph(NODES[:10], seed=rng.bytes(32), degree=2).of(NODES[0])
    assert seen == set(NODES[1:10])
