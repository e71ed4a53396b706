"""A coordinator that tells each node its own survivor story, and what it can rebuild afterwards.

It drives the real clients directly (no SecAggServer after SHARE_KEYS): every node is told a
survivor set that contains itself, is large enough and connected, so each node's local checks
pass; the stories are chosen so that, if every node revealed what its story asks for, the
coordinator could rebuild the partial sum over a small set ``target``: the self-mask seeds of the
target's members (they "survived") and the mask keys of all their other neighbours ("dropped").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tessera.core.errors import TesseraError
from tessera.core.secagg import messages as m
from tessera.core.secagg import shamir
from tessera.core.secagg.keys import SignedKeys, agree, hkdf_pair
from tessera.core.secagg.prg import add_keystreams
from tessera.core.secagg.protocol import EpochConfig, mask_sign
from tessera.core.secagg.testing import EpochHarness
from tessera.core.types import Stage


def plan_stories(config: EpochConfig, target: Iterable[str]) -> dict[str, frozenset[str]] | None:
    """Per node, the survivor set to tell it; ``None`` if no assignment fits the nodes' checks.

    Each boundary node j of ``target`` needs ``share_threshold`` holders told "j dropped"; each
    node may be told at most ``n - t`` nodes dropped (its story must keep ``t`` survivors).
    """
    nodes, t, tau = set(config.participants), config.threshold, config.share_threshold
    inside = set(target)
    boundary = sorted({j for u in inside for j in config.mask_graph.of(u)} - inside)
    excluded: dict[str, set[str]] = {w: set() for w in nodes}
    for j in boundary:
        revealers = sorted(
            (w for w in config.mask_graph.of(j) if len(excluded[w]) < len(nodes) - t),
            key=lambda w: (len(excluded[w]), w),
        )
        if len(revealers) < tau:
            return None
        for w in revealers[:tau]:
            excluded[w].add(j)
    stories = {w: frozenset(nodes - excluded[w]) for w in nodes}
    if any(not config.mask_graph.is_connected(s) for s in stories.values()):
        return None
    return stories


class Loot:
    """Shares released to the lying coordinator, by owner and share id."""

    def __init__(self) -> None:
        self.seed: dict[str, dict[int, bytes]] = {}
        self.key: dict[str, dict[int, bytes]] = {}
        self.answered: list[str] = []

    def add(self, config: EpochConfig, response: m.UnmaskResponse) -> None:
        share_id = config.share_id(response.node_id)
        for owner, share in response.seed_shares:
            self.seed.setdefault(owner, {})[share_id] = share
        for owner, share in response.key_shares:
            self.key.setdefault(owner, {})[share_id] = share
        self.answered.append(response.node_id)


def tell_stories(
    harness: EpochHarness,
    stories: Mapping[str, frozenset[str]],
    *,
    round_no: int,
    relay: str = "same_story",
) -> Loot:
    """Run CONSISTENCY_CHECK and UNMASK with a story per node; collect what nodes release.

    ``relay``: which signatures each node is shown -- those of the nodes told the same story
    (the best the coordinator can do), or ``"all"`` of them.
    """
    cfg, loot = harness.config, Loot()
    signatures: dict[str, bytes] = {}
    for node, story in stories.items():
        request = m.ConsistencyRequest(cfg.binding(Stage.CONSISTENCY_CHECK, round_no), tuple(sorted(story)))
        try:
            signatures[node] = harness.clients[node].consistency(request).signature
        except TesseraError:
            continue
    for node in signatures:
        same = [w for w in signatures if relay == "all" or stories[w] == stories[node]]
        request = m.UnmaskRequest(
            cfg.binding(Stage.UNMASK, round_no),
            tuple(sorted(stories[node])),
            tuple((w, signatures[w]) for w in sorted(same)),
        )
        try:
            loot.add(cfg, harness.clients[node].unmask(request))
        except TesseraError:
            continue
    return loot


def rebuild_partial_sum(
    config: EpochConfig,
    target: Iterable[str],
    masked: Mapping[str, np.ndarray],
    ads: Mapping[str, SignedKeys],
    loot: Loot,
    *,
    round_no: int,
) -> np.ndarray | None:
    """The coordinator's best reconstruction of sum(x_u, u in target), or ``None`` when a secret
    it needs (a target's self-mask seed, or a mask key on each target edge) cannot be rebuilt."""
    tau = config.share_threshold

    def combine(pool: dict[str, dict[int, bytes]], owner: str) -> bytes | None:
        shares = pool.get(owner, {})
        return shamir.combine(shares, threshold=tau) if len(shares) >= tau else None

    inside = set(target)
    total = np.zeros(config.length, dtype=config.dtype)
    seeds: list[tuple[bytes, int]] = []
    for u in sorted(inside):
        np.add(total, masked[u], out=total)
        b = combine(loot.seed, u)
        if b is None:
            return None
        seeds.append((b, -1))
        for j in sorted(config.mask_graph.of(u) - inside):
            s = combine(loot.key, j) or combine(loot.key, u)
            if s is None:
                return None
            owner, other = (j, u) if combine(loot.key, j) is not None else (u, j)
            secret = agree(X25519PrivateKey.from_private_bytes(s), ads[other].mask_public)
            seed = hkdf_pair(
                secret,
                job_id=config.job_id,
                epoch=config.epoch,
                round_no=round_no,
                stage=Stage.MASKED_INPUT,
                node_a=owner,
                node_b=other,
            )
            seeds.append((seed, -mask_sign(u, j)))
    add_keystreams(total, seeds)
    config.reduce(total)
    return total
