"""An in-memory driver that runs every node and the coordinator of an epoch (tests, benchmarks).

Every message goes through :func:`~tessera.core.secagg.codec.encode` and ``decode`` on its way,
as a real transport would carry it. Not for production: it makes throw-away certificate keys and
its default :data:`LENIENT` security parameters accept any graph the caller passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.secagg import codec
from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.graph import NeighbourGraph
from tessera.core.secagg.messages import (
    AggregateResult,
    ConsistencyRequest,
    ForwardedShares,
    KeyRoster,
    Message,
    RoundOutcome,
    UnmaskRequest,
)
from tessera.core.secagg.protocol import EpochConfig
from tessera.core.secagg.security import SecurityParams
from tessera.core.secagg.server import SecAggServer
from tessera.core.types import Stage

_ORDER = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASK)

# Accepts any strict-majority threshold and (with no assumed dropout) graphs of degree >= n - t + 1.
LENIENT = SecurityParams(min_participants=2, collusion_tolerance=0, assumed_dropout=0.0)

M = TypeVar("M", bound=Message)


def wire(message: M) -> M:
    """The message as the receiver sees it after encoding and decoding."""
    decoded = codec.decode(codec.encode(message))
    if type(decoded) is not type(message):
        raise TypeError("the codec changed the kind of a message")
    return decoded  # type: ignore[return-value]


def certificate_keys(nodes: Iterable[str]) -> dict[str, ec.EllipticCurvePrivateKey]:
    """Throw-away ECDSA P-256 certificate keys, one per node."""
    return {node: ec.generate_private_key(ec.SECP256R1()) for node in nodes}


class EpochHarness:
    """Real clients and a real server for one epoch, driven stage by stage (seeded ``rng``).

    Each stage method takes the coordinator's message(s) of the stage and the nodes that answer
    (default: everyone addressed), and returns what the coordinator sends next.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        threshold: int,
        rng: np.random.Generator,
        bits: int = 32,
        length: int = 6,
        graph: NeighbourGraph | None = None,
        security: SecurityParams = LENIENT,
        job_id: str = "job-t",
        epoch: int = 1,
        first_round: int = 1,
        signing: Mapping[str, ec.EllipticCurvePrivateKey] | None = None,
        server_verifies: bool = True,
    ) -> None:
        self.config = EpochConfig(
            job_id=job_id,
            epoch=epoch,
            first_round=first_round,
            participants=tuple(nodes),
            threshold=threshold,
            bits=bits,
            length=length,
            graph=graph,
        )
        self.nodes = list(self.config.participants)
        self.rng = rng
        self.signing = dict(signing) if signing is not None else certificate_keys(self.nodes)
        self.certs = {node: self.signing[node].public_key() for node in self.nodes}
        self.clients = {
            node: SecAggClient(
                self.config,
                node_id=node,
                signing_key=self.signing[node],
                peer_keys=self.certs,
                security=security,
                rng=rng.bytes,
            )
            for node in self.nodes
        }
        self.server = SecAggServer(self.config, peer_keys=self.certs if server_verifies else None)

    def vectors(self) -> dict[str, np.ndarray]:
        """Random inputs below 2^bits for every node."""
        bits, dtype = self.config.bits, self.config.dtype
        return {
            node: self.rng.integers(0, 2**bits, size=self.config.length, dtype=np.uint64).astype(dtype)
            for node in self.nodes
        }

    def expected(self, vectors: Mapping[str, np.ndarray], nodes: Iterable[str]) -> list[int]:
        """The exact sum of ``vectors`` over ``nodes`` modulo 2^bits."""
        mod = 2**self.config.bits
        return [sum(int(vectors[v][i]) for v in nodes) % mod for i in range(self.config.length)]

    def advertise(self, nodes: Iterable[str] | None = None) -> KeyRoster:
        for node in self.nodes if nodes is None else nodes:
            self.server.receive_advertisement(wire(self.clients[node].advertise()), peer=node)
        return wire(self.server.close_advertisements())

    def share(self, roster: KeyRoster, nodes: Iterable[str] | None = None) -> dict[str, ForwardedShares]:
        listed = [ad.node_id for ad in roster.advertisements]
        for node in listed if nodes is None else nodes:
            self.server.receive_shares(wire(self.clients[node].share_keys(roster)), peer=node)
        return {node: wire(fwd) for node, fwd in self.server.close_shares().items()}

    def mask(
        self,
        forwarded: Mapping[str, ForwardedShares],
        vectors: Mapping[str, np.ndarray],
        nodes: Iterable[str] | None = None,
    ) -> ConsistencyRequest:
        round_no = self.server.round_no
        for node in sorted(forwarded) if nodes is None else nodes:
            masked = self.clients[node].masked_input(forwarded[node], vectors[node], round_no)
            self.server.receive_masked_input(wire(masked), peer=node)
        return wire(self.server.close_masked_inputs())

    def sign(
        self, request: ConsistencyRequest, nodes: Iterable[str] | None = None, *, next_round: bool = False
    ) -> UnmaskRequest:
        for node in request.survivors if nodes is None else nodes:
            self.server.receive_consistency(wire(self.clients[node].consistency(request)), peer=node)
        return wire(self.server.close_consistency(next_round=next_round))

    def unmask(self, request: UnmaskRequest, nodes: Iterable[str] | None = None) -> RoundOutcome:
        for node in self.server.signers if nodes is None else nodes:
            self.server.receive_unmask(wire(self.clients[node].unmask(request)), peer=node)
        return self.server.finish()

    def run_round(
        self,
        forwarded: Mapping[str, ForwardedShares],
        vectors: Mapping[str, np.ndarray],
        *,
        drop_at: Mapping[str, Stage] | None = None,
        next_round: bool = False,
    ) -> RoundOutcome:
        """MASKED_INPUT -> CONSISTENCY_CHECK -> UNMASK of one round; ``drop_at[node] = stage``
        makes ``node`` silent from ``stage`` on (in this round)."""
        live = _live(drop_at or {})
        request = self.mask(forwarded, vectors, live(Stage.MASKED_INPUT, forwarded))
        unmask = self.sign(request, live(Stage.CONSISTENCY_CHECK, request.survivors), next_round=next_round)
        return self.unmask(unmask, live(Stage.UNMASK, self.server.signers))


def _live(drops: Mapping[str, Stage]) -> Callable[[Stage, Iterable[str]], list[str]]:
    def live(stage: Stage, nodes: Iterable[str]) -> list[str]:
        return [n for n in sorted(nodes) if n not in drops or _ORDER.index(drops[n]) > _ORDER.index(stage)]

    return live


def simulate_epoch(
    rounds: Sequence[Mapping[str, np.ndarray]],
    *,
    threshold: int,
    bits: int,
    rng: np.random.Generator,
    drop_at: Mapping[int, Mapping[str, Stage]] | None = None,
    graph: NeighbourGraph | None = None,
    security: SecurityParams = LENIENT,
    job_id: str = "job-sim",
    epoch: int = 1,
    first_round: int = 1,
) -> list[AggregateResult]:
    """Run one epoch of ``len(rounds)`` rounds (``rounds[i]``: node id -> input of round
    ``first_round + i``) and return each round's result.

    ``drop_at[round_no][node] = stage`` makes ``node`` fall silent from ``stage`` of that round
    on (for the rest of the epoch). Raises whatever the protocol raises (e.g. ``RoundAborted``),
    and ``RuntimeError`` when the epoch cannot go on for lack of nodes.
    """
    nodes = sorted(rounds[0])
    lengths = {v.shape[0] for vectors in rounds for v in vectors.values()}
    if len(lengths) != 1:
        raise ValueError("all vectors need the same length")
    harness = EpochHarness(
        nodes,
        threshold=threshold,
        rng=rng,
        bits=bits,
        length=lengths.pop(),
        graph=graph,
        security=security,
        job_id=job_id,
        epoch=epoch,
        first_round=first_round,
    )
    drops = {r: dict(d) for r, d in (drop_at or {}).items()}
    gone: set[str] = set()  # silent from an earlier round on

    def first_drops(stage: Stage) -> list[str]:
        d = drops.get(first_round, {})
        return [n for n in nodes if n not in d or _ORDER.index(d[n]) > _ORDER.index(stage)]

    roster = harness.advertise(first_drops(Stage.ADVERTISE_KEYS))
    listed = {ad.node_id for ad in roster.advertisements}
    forwarded = harness.share(roster, [n for n in first_drops(Stage.SHARE_KEYS) if n in listed])
    results = []
    for i, vectors in enumerate(rounds):
        round_no = first_round + i
        this = {**dict.fromkeys(gone, Stage.MASKED_INPUT), **drops.get(round_no, {})}
        outcome = harness.run_round(forwarded, vectors, drop_at=this, next_round=i + 1 < len(rounds))
        results.append(outcome.result)
        gone |= set(this)
        if i + 1 < len(rounds):
            if not outcome.forward:
                raise RuntimeError("too few nodes remain in the epoch for another round")
            forwarded = {n: wire(f) for n, f in outcome.forward.items() if n not in gone}
    return results


def simulate_round(
    vectors: Mapping[str, np.ndarray],
    *,
    threshold: int,
    bits: int,
    rng: np.random.Generator,
    drop_at: Mapping[str, Stage] | None = None,
    graph: NeighbourGraph | None = None,
    security: SecurityParams = LENIENT,
    job_id: str = "job-sim",
    round_no: int = 1,
) -> AggregateResult:
    """One epoch of one round over ``vectors``; ``drop_at[node] = stage`` makes ``node`` silent
    from ``stage`` on. Raises whatever the protocol raises (e.g. ``RoundAborted``)."""
    return simulate_epoch(
        [vectors],
        threshold=threshold,
        bits=bits,
        rng=rng,
        drop_at={round_no: drop_at or {}},
        graph=graph,
        security=security,
        job_id=job_id,
        first_round=round_no,
    )[0]
