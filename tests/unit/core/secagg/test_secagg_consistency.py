"""A coordinator that lies about who dropped, telling nodes different survivor sets.

Each attack runs twice: defended (the real client) and with the consistency verification
switched off (monkeypatched to accept anything), which must let the same attack succeed -- so
the tests prove the defence is what stops it.
"""

from __future__ import annotations

import numpy as np
import pytest
from lying_coordinator import Loot, plan_stories, rebuild_partial_sum, tell_stories
from secagg_helpers import Epoch, node_names

from tessera.core.errors import CryptoError
from tessera.core.secagg import ClientState, SecurityParams, consistency, shamir

POLICY = SecurityParams(min_participants=3, collusion_tolerance=1)


def _undefended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consistency, "verify_quorum", lambda *args, **kwargs: frozenset())


def _masked(r: Epoch) -> tuple[dict[str, np.ndarray], dict]:  # type: ignore[type-arg]
    roster = r.advertise()
    forwarded = r.share(roster)
    masked = {v: r.clients[v].masked_input(forwarded[v], r.inputs[v], 1).vector for v in r.nodes}
    return masked, {ad.node_id: ad for ad in roster.advertisements}


def _attack(r: Epoch, target: list[str], relay: str) -> tuple[np.ndarray | None, Loot]:
    masked, ads = _masked(r)
    stories = plan_stories(r.config, target)
    assert stories is not None, "every node's own checks pass for these stories"
    assert all(v in s for v, s in stories.items()) and min(map(len, stories.values())) >= r.config.threshold
    loot = tell_stories(r, stories, round_no=1, relay=relay)
    return rebuild_partial_sum(r.config, target, masked, ads, loot, round_no=1), loot


@pytest.mark.parametrize("defended", [True, False], ids=["defended", "no-check"])
@pytest.mark.parametrize("relay", ["same_story", "all"])
def test_different_survivor_lists_on_the_complete_graph(
    monkeypatch: pytest.MonkeyPatch, defended: bool, relay: str
) -> None:
    # n = 5, t = 3 (a strict majority, policy with no colluders): the reported two-node partial sum.
    if not defended:
        _undefended(monkeypatch)
    r = Epoch(5, threshold=3, security=SecurityParams(min_participants=3, collusion_tolerance=0), seed=11)
    rebuilt, loot = _attack(r, ["n0", "n1"], relay)
    if defended:
        assert rebuilt is None
        assert loot.answered == []  # every honest node aborted before revealing any share
        assert all(c.state is ClientState.FAILED for c in r.clients.values())
    else:
        assert rebuilt is not None and rebuilt.tolist() == r.expected_sum(["n0", "n1"])


@pytest.mark.parametrize("defended", [True, False], ids=["defended", "no-check"])
@pytest.mark.parametrize(("n", "target_size"), [(20, 4), (40, 1), (100, 1)])
def test_mixed_seed_and_key_shares_on_secagg_plus(
    monkeypatch: pytest.MonkeyPatch, defended: bool, n: int, target_size: int
) -> None:
    # The lowest threshold the node's policy accepts and the node's own graph (complete at 20,
    # degree 28 at 40, 52 at 100): the victim's seed shares come from some nodes, the mask keys of
    # all its neighbours from others -- each node sees a story that passes its local checks.
    if not defended:
        _undefended(monkeypatch)
    t = POLICY.min_threshold(n)
    nodes = node_names(n)
    graph = POLICY.graph(nodes, threshold=t, seed=bytes(range(32)))
    r = Epoch(n, threshold=t, graph=graph, security=POLICY, length=3, seed=n)
    target = nodes[:target_size]
    rebuilt, loot = _attack(r, target, "same_story")
    if defended:
        assert rebuilt is None and loot.answered == []
        assert all(c.state is ClientState.FAILED for c in r.clients.values())
    else:
        assert rebuilt is not None and rebuilt.tolist() == r.expected_sum(target)


@pytest.mark.parametrize("told_survived", [5, 20, 21, 30])
def test_two_stories_about_one_victim_never_release_both_secrets(told_survived: int) -> None:
    # SecAgg+ at n = 40: some nodes hear "the victim survived", the others "the victim dropped".
    # At most one story gathers t signatures; its nodes reveal one kind of share, the rest abort.
    n, t = 40, POLICY.min_threshold(40)
    nodes = node_names(n)
    r = Epoch(
        n, threshold=t, graph=POLICY.graph(nodes, threshold=t, seed=bytes(32)), security=POLICY, length=3
    )
    _masked(r)
    victim = nodes[0]
    everyone, without = frozenset(nodes), frozenset(nodes) - {victim}
    stories = {v: everyone if i < told_survived or v == victim else without for i, v in enumerate(nodes)}
    loot = tell_stories(r, stories, round_no=1)
    tau = r.config.share_threshold
    seed_ok = len(loot.seed.get(victim, {})) >= tau
    key_ok = len(loot.key.get(victim, {})) >= tau
    assert not (seed_ok and key_ok)
    for v in nodes:
        group = sum(1 for w in nodes if stories[w] == stories[v])
        assert (v in loot.answered) == (group >= t)
        if group < t:
            assert r.clients[v].state is ClientState.FAILED
    if seed_ok:
        shamir.combine(loot.seed[victim], threshold=tau)  # only ever one of the two


def test_a_node_aborts_when_its_set_lacks_t_signatures() -> None:
    r = Epoch(5, threshold=3, security=SecurityParams(min_participants=3, collusion_tolerance=0))
    forwarded = r.share(r.advertise())
    request = r.mask_inputs(forwarded)
    for node in ("n0", "n1", "n2"):
        r.server.receive_consistency(r.clients[node].consistency(request), peer=node)
    unmask = r.server.close_consistency()
    short = type(unmask)(unmask.binding, unmask.survivors, unmask.signatures[:2])
    with pytest.raises(CryptoError, match="threshold"):
        r.clients["n0"].unmask(short)
    assert r.clients["n0"].state is ClientState.FAILED
    forged = type(unmask)(
        unmask.binding, unmask.survivors, (*unmask.signatures[:2], ("n3", unmask.signatures[2][1]))
    )
    with pytest.raises(CryptoError, match="does not match"):
        r.clients["n1"].unmask(forged)
    assert r.clients["n1"].state is ClientState.FAILED
    # The untouched request still works for the others.
    assert r.clients["n2"].unmask(unmask).seed_shares
