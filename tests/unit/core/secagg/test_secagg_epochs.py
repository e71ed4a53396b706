"""Epochs of many rounds: exact sums with drops, no cross-round leaks, old epochs stay dead."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_helpers import Epoch, node_names

from tessera.core.errors import TesseraError
from tessera.core.secagg import (
    ClientState,
    EpochSessions,
    RoundAborted,
    SecAggClient,
    SecurityParams,
    StageError,
    StaleEpoch,
    shamir,
    sparse_graph,
)
from tessera.core.secagg import messages as m
from tessera.core.secagg.keys import agree, hkdf_pair
from tessera.core.secagg.prg import expand
from tessera.core.secagg.protocol import mask_sign
from tessera.core.secagg.testing import simulate_epoch, wire
from tessera.core.types import Stage

POLICY = SecurityParams(min_participants=3, collusion_tolerance=1)


def _rounds(nodes: list[str], count: int, seed: int, length: int = 9) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {v: rng.integers(0, 2**32, size=length, dtype=np.uint64).astype(np.uint32) for v in nodes}
        for _ in range(count)
    ]


def _sum(vectors: dict[str, np.ndarray], nodes: tuple[str, ...]) -> list[int]:
    length = len(next(iter(vectors.values())))
    return [sum(int(vectors[v][i]) for v in nodes) % 2**32 for i in range(length)]


def test_many_rounds_with_drops_in_the_middle_give_exact_sums() -> None:
    nodes = node_names(7)
    rounds = _rounds(nodes, 7, seed=1)
    drops = {
        12: {"n1": Stage.MASKED_INPUT},  # silent: its mask key is rebuilt, it is out for good
        13: {"n3": Stage.UNMASK},  # its input counts in round 13; no next-round seed, so out after
        14: {"n5": Stage.CONSISTENCY_CHECK},  # counted in round 14 too, then out
    }
    results = simulate_epoch(
        rounds, threshold=4, bits=32, rng=np.random.default_rng(2), drop_at=drops, first_round=10
    )
    expected = [
        ("n0", "n1", "n2", "n3", "n4", "n5", "n6"),
        ("n0", "n1", "n2", "n3", "n4", "n5", "n6"),
        ("n0", "n2", "n3", "n4", "n5", "n6"),
        ("n0", "n2", "n3", "n4", "n5", "n6"),
        ("n0", "n2", "n4", "n5", "n6"),
        ("n0", "n2", "n4", "n6"),
        ("n0", "n2", "n4", "n6"),
    ]
    assert [r.round_no for r in results] == list(range(10, 17))
    assert [r.survivors for r in results] == expected
    assert [r.dropped for r in results] == [(), (), ("n1",), (), (), (), ()]
    for result, vectors in zip(results, rounds, strict=True):
        assert result.total.tolist() == _sum(vectors, result.survivors)


def test_sparse_epoch_over_many_rounds() -> None:
    nodes = node_names(16)
    graph = sparse_graph(nodes, seed=bytes(range(32)), degree=6)  # bears n - t + 1 = 6 with t = 11
    rounds = _rounds(nodes, 4, seed=3)
    results = simulate_epoch(
        rounds,
        threshold=11,
        bits=32,
        rng=np.random.default_rng(4),
        graph=graph,
        drop_at={2: {"n7": Stage.MASKED_INPUT}},
    )
    assert results[1].dropped == ("n7",)
    assert all("n7" not in r.survivors for r in results[1:])
    for result, vectors in zip(results, rounds, strict=True):
        assert result.total.tolist() == _sum(vectors, result.survivors)


def test_the_epoch_stops_when_the_quorum_is_gone() -> None:
    nodes = node_names(5)
    with pytest.raises((RoundAborted, RuntimeError)):
        simulate_epoch(
            _rounds(nodes, 4, seed=5),
            threshold=3,
            bits=32,
            rng=np.random.default_rng(6),
            drop_at={2: {"n0": Stage.MASKED_INPUT}, 3: {"n1": Stage.MASKED_INPUT, "n2": Stage.UNMASK}},
        )


def _unmask_capturing(r: Epoch, request: m.UnmaskRequest) -> tuple[m.RoundOutcome, list[m.UnmaskResponse]]:
    responses = []
    for node in r.server.signers:
        response = wire(r.clients[node].unmask(request))
        responses.append(response)
        r.server.receive_unmask(response, peer=node)
    return r.server.finish(), responses


def _pool(r: Epoch, responses: list[m.UnmaskResponse], owner: str, kind: str) -> bytes:
    shares = {
        r.config.share_id(resp.node_id): share
        for resp in responses
        for o, share in (resp.seed_shares if kind == "seed" else resp.key_shares)
        if o == owner
    }
    return shamir.combine(shares, threshold=r.config.share_threshold)


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-seed", "reused-seed"])
def test_claiming_a_survivor_dropped_in_the_next_round_reveals_nothing(
    monkeypatch: pytest.MonkeyPatch, fresh: bool
) -> None:
    victim, n = "n2", 6
    seeds: list[bytes] = []
    real = SecAggClient._fresh_seed

    def recorded(self: SecAggClient) -> bytes:
        # "reused-seed" removes the defence: the same self-mask seed in every round.
        seed = real(self) if fresh else hashlib.sha256(self.node_id.encode()).digest()
        if self.node_id == victim:
            seeds.append(seed)
        return seed

    monkeypatch.setattr(SecAggClient, "_fresh_seed", recorded)
    r = Epoch(n, threshold=POLICY.min_threshold(n), security=POLICY, length=64, seed=7)
    roster = r.advertise()
    ads = {ad.node_id: ad for ad in roster.advertisements}
    inputs = _rounds(r.nodes, 3, seed=8, length=64)

    # Round 1: the victim survives; the coordinator learns b_victim of round 1.
    forwarded = r.share(roster)
    request = r.sign(r.mask(forwarded, inputs[0]), next_round=True)
    outcome, responses = _unmask_capturing(r, request)
    b1 = _pool(r, responses, victim, "seed")
    assert outcome.result.total.tolist() == _sum(inputs[0], tuple(r.nodes))

    # Round 2: the victim's masked input arrives, but the coordinator claims it dropped.
    forwarded = outcome.forward
    y = r.clients[victim].masked_input(forwarded[victim], inputs[1][victim], 2).vector
    others = [v for v in r.nodes if v != victim]
    request = r.sign(r.mask(forwarded, inputs[1], others), next_round=True)
    outcome, responses = _unmask_capturing(r, request)
    s_victim = X25519PrivateKey.from_private_bytes(_pool(r, responses, victim, "key"))
    # Its best reconstruction: remove every pairwise mask (it knows s_victim) and the old self mask.
    guess = y.astype(np.uint32, copy=True)
    for peer in others:
        seed = hkdf_pair(
            agree(s_victim, ads[peer].mask_public),
            job_id=r.config.job_id,
            epoch=r.config.epoch,
            round_no=2,
            stage=Stage.MASKED_INPUT,
            node_a=victim,
            node_b=peer,
        )
        stream = expand(seed, 64, dtype=np.uint32)
        if mask_sign(victim, peer) > 0:
            guess -= stream
        else:
            guess += stream
    guess -= expand(b1, 64, dtype=np.uint32)
    x2 = inputs[1][victim]
    if not fresh:
        assert guess.tolist() == x2.tolist()  # the attack works when seeds are reused
        return
    assert np.count_nonzero(guess == x2) <= 2
    # What is left on top of x is exactly the PRG output of round 2's fresh seed, never revealed.
    b2 = seeds[1]
    assert b2 != b1
    assert (guess + expand(b1, 64, dtype=np.uint32) - expand(b2, 64, dtype=np.uint32) == x2).all()
    assert all(victim not in {o for o, _ in resp.seed_shares} for resp in responses)

    # Round 3: the victim is out. It cannot go on, and its holders refuse a set naming it.
    assert victim not in outcome.forward
    with pytest.raises(StageError):
        r.clients[victim].masked_input(outcome.forward["n0"], inputs[2][victim], 3)
    forged = dataclasses.replace(
        outcome.forward["n0"], active=tuple(sorted({*outcome.forward["n0"].active, victim}))
    )
    with pytest.raises(TesseraError):
        r.clients["n0"].masked_input(forged, inputs[2]["n0"], 3)
    assert r.clients["n0"].state is ClientState.FAILED
    assert victim in r.clients["n1"].dropped
    # The epoch goes on without the victim (and without n0, which refused the forged set).
    rest = {v: f for v, f in outcome.forward.items() if v != "n0"}
    survivors = tuple(sorted(rest))
    assert len(survivors) >= r.config.threshold
    for v in survivors:
        r.server.receive_masked_input(r.clients[v].masked_input(rest[v], inputs[2][v], 3), peer=v)
    final = r.unmask(r.sign(r.server.close_masked_inputs()))
    assert final.result.survivors == survivors
    assert final.result.total.tolist() == _sum(inputs[2], survivors)


@pytest.mark.parametrize("defended", [True, False], ids=["new-epoch-destroys", "no-registry"])
def test_an_old_epoch_cannot_be_unmasked_after_a_new_one_started(defended: bool) -> None:
    old = Epoch(5, threshold=3, epoch=1, seed=9)
    request = old.sign(old.mask_inputs(old.share(old.advertise())))
    sessions = {v: EpochSessions() for v in old.nodes}
    for v in old.nodes:
        sessions[v].start(old.clients[v])
    new = Epoch(5, threshold=3, epoch=2, seed=10)
    if not defended:  # a node that keeps the old epoch's state would still answer it
        assert old.clients["n0"].unmask(request).seed_shares
        return
    for v in new.nodes:
        sessions[v].start(new.clients[v])
    for v in old.nodes:
        assert old.clients[v].state is ClientState.DESTROYED
        with pytest.raises(StageError):
            old.clients[v].unmask(request)
        with pytest.raises(StaleEpoch):
            sessions[v].get("job-t", 1)
    with pytest.raises(StaleEpoch):  # epochs only move forward
        sessions["n0"].start(Epoch(5, threshold=3, epoch=1, seed=11).clients["n0"])
    outcome = new.unmask(new.sign(new.mask_inputs(new.share(new.advertise()))))
    assert outcome.result.total.tolist() == new.expected_sum(new.nodes)
    assert sessions["n0"].get("job-t", 2) is new.clients["n0"]
