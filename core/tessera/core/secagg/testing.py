"""An in-memory driver that runs every node and the coordinator of one round (tests, benchmarks).

Every message goes through :func:`~tessera.core.secagg.codec.encode` and ``decode`` on its way,
as a real transport would carry it. Not for production: it makes throw-away certificate keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.secagg import codec
from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.graph import NeighbourGraph
from tessera.core.secagg.messages import AggregateResult, Message
from tessera.core.secagg.protocol import RoundConfig
from tessera.core.secagg.server import SecAggServer
from tessera.core.types import Stage

_ORDER = (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK)


M = TypeVar("M", bound=Message)


def _wire(message: M) -> M:
    """The message as the receiver sees it after encoding and decoding."""
    decoded = codec.decode(codec.encode(message))
    if type(decoded) is not type(message):
        raise TypeError("the codec changed the kind of a message")
    return decoded  # type: ignore[return-value]


def simulate_round(
    vectors: Mapping[str, np.ndarray],
    *,
    threshold: int,
    bits: int,
    drop_at: Mapping[str, Stage] | None = None,
    graph: NeighbourGraph | None = None,
    rng: np.random.Generator,
    job_id: str = "job-sim",
    round_no: int = 1,
) -> AggregateResult:
    """Run one round over ``vectors`` (node id -> input) and return the coordinator's result.

    ``drop_at[node] = stage`` makes ``node`` fall silent from ``stage`` on: it sends nothing in
    that stage or later. Raises whatever the protocol raises (e.g. ``RoundAborted``).
    """
    drops = dict(drop_at or {})
    lengths = {v.shape[0] for v in vectors.values()}
    if len(lengths) != 1:
        raise ValueError("all vectors need the same length")
    config = RoundConfig(
        job_id=job_id,
        round_no=round_no,
        participants=tuple(vectors),
        threshold=threshold,
        bits=bits,
        length=lengths.pop(),
        graph=graph,
    )
    signing = {node: ec.generate_private_key(ec.SECP256R1()) for node in config.participants}
    certs = {node: key.public_key() for node, key in signing.items()}
    clients = {
        node: SecAggClient(config, node_id=node, signing_key=signing[node], peer_keys=certs, rng=rng.bytes)
        for node in config.participants
    }
    server = SecAggServer(config)

    def live(stage: Stage) -> list[str]:
        return [
            n for n in config.participants if n not in drops or _ORDER.index(drops[n]) > _ORDER.index(stage)
        ]

    for node in live(Stage.ADVERTISE_KEYS):
        server.receive_advertisement(_wire(clients[node].advertise()), peer=node)
    roster = _wire(server.close_advertisements())
    in_round = {ad.node_id for ad in roster.advertisements}
    for node in live(Stage.SHARE_KEYS):
        if node in in_round:
            server.receive_shares(_wire(clients[node].share_keys(roster)), peer=node)
    forwarded = server.close_shares()
    for node in live(Stage.MASKED_INPUT):
        if node in forwarded:
            fwd = _wire(forwarded[node])
            masked = clients[node].masked_input(fwd, vectors[node])
            server.receive_masked_input(_wire(masked), peer=node)
    request = _wire(server.close_masked_inputs())
    for node in live(Stage.UNMASK):
        if node in request.survivors:
            server.receive_unmask(_wire(clients[node].unmask(request)), peer=node)
    return server.finish()
