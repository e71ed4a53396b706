"""Dropouts at every stage: the sum over the right set, or a clean failure below the threshold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.core.secagg import RoundAborted, sparse_graph
from tessera.core.secagg.testing import simulate_round
from tessera.core.types import Stage

STAGES = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK]
NODES = [f"n{i}" for i in range(5)]


def _vectors(seed: int, nodes: list[str] = NODES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.integers(0, 2**32, size=7, dtype=np.uint64).astype(np.uint32) for n in nodes}


def _sum(vectors: dict[str, np.ndarray], nodes: tuple[str, ...]) -> list[int]:
    return [sum(int(vectors[n][i]) for n in nodes) % 2**32 for i in range(7)]


@pytest.mark.parametrize("stage", STAGES)
def test_one_dropout_at_each_stage(stage: Stage) -> None:
    vectors = _vectors(1)
    result = simulate_round(
        vectors, threshold=3, bits=32, drop_at={"n2": stage}, rng=np.random.default_rng(2)
    )
    # A node that sent its masked input is summed even if it vanishes before unmasking.
    expected = tuple(NODES) if stage is Stage.UNMASK else tuple(n for n in NODES if n != "n2")
    assert result.survivors == expected
    assert result.dropped == (("n2",) if stage is Stage.MASKED_INPUT else ())
    assert result.total.tolist() == _sum(vectors, expected)


def test_dropouts_spread_over_stages() -> None:
    vectors = _vectors(3, [f"n{i}" for i in range(8)])
    drops = {"n1": Stage.SHARE_KEYS, "n4": Stage.MASKED_INPUT, "n6": Stage.UNMASK}
    result = simulate_round(vectors, threshold=5, bits=32, drop_at=drops, rng=np.random.default_rng(4))
    assert result.survivors == ("n0", "n2", "n3", "n5", "n6", "n7")
    assert result.dropped == ("n4",)
    assert result.total.tolist() == _sum(vectors, result.survivors)


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_fails_cleanly_naming_the_stage(stage: Stage) -> None:
    drops = {n: stage for n in ("n0", "n1", "n3")}
    with pytest.raises(RoundAborted) as info:
        simulate_round(_vectors(5), threshold=3, bits=32, drop_at=drops, rng=np.random.default_rng(6))
    assert info.value.stage is stage
    assert info.value.code == "secagg.round_aborted"
    assert stage.value in str(info.value)


@pytest.mark.parametrize("stage", STAGES)
def test_sparse_graph_dropout_at_each_stage(stage: Stage) -> None:
    nodes = [f"n{i}" for i in range(10)]
    vectors = _vectors(7, nodes)
    graph = sparse_graph(nodes, seed=bytes(range(32)), degree=4)
    drops = {"n3": stage, "n8": Stage.MASKED_INPUT}
    result = simulate_round(
        vectors, threshold=5, bits=32, drop_at=drops, graph=graph, rng=np.random.default_rng(8)
    )
    gone = {"n8"} | ({"n3"} if stage is not Stage.UNMASK else set())
    assert result.survivors == tuple(n for n in nodes if n not in gone)
    assert result.total.tolist() == _sum(vectors, result.survivors)


def test_sparse_node_without_enough_holders_is_left_out() -> None:
    nodes = [f"n{i}" for i in range(10)]
    graph = sparse_graph(nodes, seed=bytes(range(32)), degree=4)  # share threshold 3 of 5 holders
    victim = "n0"
    silent = sorted(graph.of(victim))[:3]  # 1 neighbour + itself remain: too few holders
    vectors = _vectors(9, nodes)
    drops = dict.fromkeys(silent, Stage.ADVERTISE_KEYS)
    result = simulate_round(
        vectors, threshold=4, bits=32, drop_at=drops, graph=graph, rng=np.random.default_rng(1)
    )
    assert victim not in result.survivors
    assert result.total.tolist() == _sum(vectors, result.survivors)


def test_disconnected_survivors_are_never_unmasked() -> None:
    nodes = [f"n{i}" for i in range(8)]
    graph = sparse_graph(nodes, seed=bytes(32), degree=2)  # a ring: two gaps split it
    start = nodes[0]
    ring = [start]
    while len(ring) < len(nodes):
        ring.append(next(p for p in sorted(graph.of(ring[-1])) if p not in ring))
    drops = {ring[1]: Stage.MASKED_INPUT, ring[4]: Stage.MASKED_INPUT}
    with pytest.raises(RoundAborted) as info:
        simulate_round(
            _vectors(2, nodes), threshold=4, bits=32, drop_at=drops, graph=graph, rng=np.random.default_rng(3)
        )
    assert info.value.stage is Stage.MASKED_INPUT
    assert "connected" in str(info.value)


def test_corrupted_key_share_is_detected(make_round: Callable[..., Any]) -> None:
    r = make_round(5, threshold=3)
    forwarded = r.share(r.advertise())
    request = r.mask(forwarded, ["n0", "n2", "n3", "n4"])
    for node in request.survivors:
        response = r.clients[node].unmask(request)
        if node == "n0":
            owner, share = response.key_shares[0]
            tampered = share[:-1] + bytes([share[-1] ^ 1])
            response = type(response)(response.binding, node, response.seed_shares, ((owner, tampered),))
        r.server.receive_unmask(response, peer=node)
    with pytest.raises(RoundAborted, match="rebuilt mask key"):
        r.server.finish()


def test_malformed_seed_share_aborts_cleanly(make_round: Callable[..., Any]) -> None:
    r = make_round(4, threshold=3)
    request = r.mask(r.share(r.advertise()))
    for node in request.survivors:
        response = r.clients[node].unmask(request)
        if node == "n0":
            cut = tuple((owner, share[:-3]) for owner, share in response.seed_shares)
            response = type(response)(response.binding, node, cut, response.key_shares)
        r.server.receive_unmask(response, peer=node)
    with pytest.raises(RoundAborted, match="could not be combined") as info:
        r.server.finish()
    assert info.value.stage is Stage.UNMASK


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 8), data=st.data())
def test_random_dropouts_give_the_right_sum_or_a_clean_failure(n: int, data: st.DataObject) -> None:
    nodes = [f"n{i}" for i in range(n)]
    threshold = n // 2 + 1
    drops = data.draw(st.dictionaries(st.sampled_from(nodes), st.sampled_from(STAGES), max_size=n))
    seed = data.draw(st.integers(0, 2**32 - 1))
    vectors = _vectors(seed, nodes)
    # Who is left after each stage, and the first stage at which fewer than t remain.
    alive, fails_at = list(nodes), None
    for stage in STAGES:
        alive = [v for v in alive if drops.get(v) is not stage]
        if stage is Stage.MASKED_INPUT:
            survivors = tuple(alive)
        if fails_at is None and len(alive) < threshold:
            fails_at = stage
    rng = np.random.default_rng(seed)
    if fails_at is not None:
        with pytest.raises(RoundAborted) as info:
            simulate_round(vectors, threshold=threshold, bits=32, drop_at=drops, rng=rng)
        assert info.value.stage is fails_at
    else:
        result = simulate_round(vectors, threshold=threshold, bits=32, drop_at=drops, rng=rng)
        assert result.survivors == survivors
        assert result.total.tolist() == _sum(vectors, survivors)
