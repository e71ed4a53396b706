"""Nodes derive and check the security parameters themselves (threshold, graph degree, policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from secagg_helpers import CERTS, node_names

from tessera.core import serde
from tessera.core.errors import InvalidRequest, PolicyError
from tessera.core.policy import parse_policy
from tessera.core.policy.diff import diff_policies
from tessera.core.rounds import RoundSetup
from tessera.core.secagg import EpochConfig, SecAggClient, SecurityParams, UnsafeParameters, sparse_graph

POLICY = (Path(__file__).parents[4] / "policies" / "default.yaml").read_text()


def _client(config: EpochConfig, security: SecurityParams) -> SecAggClient:
    node = config.participants[0]
    certs: dict[str, ec.EllipticCurvePublicKey] = {v: CERTS[v].public_key() for v in config.participants}
    return SecAggClient(config, node_id=node, signing_key=CERTS[node], peer_keys=certs, security=security)


def _setup(n: int, threshold: int, **kwargs: Any) -> RoundSetup:
    return RoundSetup(
        job_id="job-s",
        round_no=1,
        participants=tuple(node_names(n)),
        threshold=threshold,
        bits=32,
        length=4,
        fingerprints=(),
        **kwargs,
    )


@pytest.mark.parametrize(
    ("n", "threshold", "security", "why"),
    [
        # The reported flaw: a policy of min_participants 3 accepted t = 2.
        (3, 2, SecurityParams(min_participants=3, collusion_tolerance=0), "min_participants 3"),
        (6, 4, SecurityParams(min_participants=5, collusion_tolerance=0), "min_participants 5"),
        # A strict majority is not enough once one node may collude: t > (n + c) / 2.
        (5, 3, SecurityParams(min_participants=3, collusion_tolerance=1), "collusion tolerance 1"),
        (10, 7, SecurityParams(min_participants=3, collusion_tolerance=4), "collusion tolerance 4"),
    ],
)
def test_threshold_below_policy_is_refused_at_set_up(
    n: int, threshold: int, security: SecurityParams, why: str
) -> None:
    config = _setup(n, threshold).config(security)
    with pytest.raises(UnsafeParameters, match=why) as info:
        _client(config, security)
    assert info.value.code == "secagg.unsafe_parameters"


def test_threshold_below_majority_is_refused_by_every_party() -> None:
    with pytest.raises(InvalidRequest, match="strict majority"):
        _setup(4, 2).config(SecurityParams(min_participants=2))
    assert SecurityParams(min_participants=2).min_threshold(4) == 3


def test_safe_threshold_is_accepted() -> None:
    security = SecurityParams(min_participants=3, collusion_tolerance=1)
    assert security.min_threshold(5) == 4
    _client(_setup(5, 4).config(security), security)


def test_tiny_max_dropout_does_not_shrink_the_graph() -> None:
    # The coordinator claims nodes never drop (max_dropout ~ 0): on its word the degree was 2.
    security = SecurityParams(min_participants=3, collusion_tolerance=1)
    setup = _setup(40, 21, graph_seed=bytes(range(32)).hex(), max_dropout=1e-9)
    config = setup.config(security)
    degrees = {len(config.mask_graph.of(v)) for v in config.participants}
    assert degrees == {security.min_degree(40, 21)}
    assert security.min_degree(40, 21) >= 28  # liveness at 10 % dropout; 21 = n - t + c + 1 here
    _client(config, security)
    # A larger proposal is taken, a smaller one is not.
    assert not _setup(40, 21, graph_seed="11" * 32, degree=34).config(security).mask_graph.complete
    assert len(_setup(40, 21, graph_seed="11" * 32, degree=34).config(security).mask_graph.of("n0")) == 34
    assert len(_setup(40, 21, graph_seed="11" * 32, degree=4).config(security).mask_graph.of("n0")) == 28


@pytest.mark.parametrize(("n", "threshold"), [(40, 21), (40, 39), (100, 51), (100, 99)])
def test_a_graph_below_the_nodes_minimum_is_refused(n: int, threshold: int) -> None:
    security = SecurityParams(min_participants=3, collusion_tolerance=1)
    nodes = node_names(n)
    small = sparse_graph(nodes, seed=bytes(32), degree=4)
    config = EpochConfig(
        job_id="j",
        epoch=0,
        first_round=1,
        participants=tuple(nodes),
        threshold=threshold,
        bits=32,
        length=2,
        graph=small,
    )
    with pytest.raises(UnsafeParameters, match="neighbours"):
        _client(config, security)


def test_degree_bears_drops_and_colluders_whatever_the_seed() -> None:
    security = SecurityParams(min_participants=3, collusion_tolerance=3, assumed_dropout=0.0)
    for n, t in ((30, 16), (30, 29), (100, 60)):
        k = security.min_degree(n, t)
        assert k >= (n - t) + 3 + 1 and k >= 6 and k % 2 == 0
        # the Shamir threshold of a neighbourhood stays above the colluders
        assert (k + 1) // 2 + 1 > 3


def test_collusion_tolerance_policy_key() -> None:
    strict = parse_policy(
        POLICY.replace("min_participants: 3", "min_participants: 4\ncollusion_tolerance: 2")
    )
    assert strict.collusion_tolerance == 2
    summary = strict.summary()
    assert summary.collusion_tolerance == 2
    assert serde.policy_summary_from_pb(serde.policy_summary_to_pb(summary)) == summary
    assert SecurityParams.from_policy(strict) == SecurityParams(min_participants=4, collusion_tolerance=2)
    default = parse_policy(POLICY)
    assert default.collusion_tolerance == 0 and default.policy_hash != strict.policy_hash
    changes = [c.message for c in diff_policies(default, strict).changes]
    assert "collusion_tolerance raised from 0 to 2: stricter" in changes
    with pytest.raises(PolicyError, match="cannot be negative"):
        parse_policy(POLICY.replace("min_participants: 3", "min_participants: 3\ncollusion_tolerance: -1"))
    with pytest.raises(PolicyError, match="whole quorum"):
        parse_policy(POLICY.replace("min_participants: 3", "min_participants: 3\ncollusion_tolerance: 3"))


def test_nodes_with_different_graph_views_sign_different_digests() -> None:
    # A node whose policy demands a denser graph builds another graph: the parameter digests
    # differ, so the advertisements do not verify (see test_peers_with_other_parameters_are_refused).
    lax = SecurityParams(min_participants=3, collusion_tolerance=0, assumed_dropout=0.0)
    strict = SecurityParams(min_participants=3, collusion_tolerance=20, assumed_dropout=0.0)
    setup = _setup(100, 61, graph_seed="22" * 32)
    assert setup.config(lax).params_digest != setup.config(strict).params_digest
