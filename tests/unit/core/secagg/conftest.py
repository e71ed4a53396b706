"""A hand-driven round for the protocol tests: real clients, a real server, seeded randomness."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.secagg.client import SecAggClient
from tessera.core.secagg.graph import NeighbourGraph
from tessera.core.secagg.messages import AggregateResult, ForwardedShares, KeyRoster, UnmaskRequest
from tessera.core.secagg.protocol import RoundConfig
from tessera.core.secagg.server import SecAggServer

# Certificate keys are slow-ish to make; one set serves every test (signatures do not affect sums).
_CERTS = {f"n{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(12)}


class Round:
    def __init__(
        self,
        n: int,
        *,
        threshold: int,
        bits: int = 32,
        length: int = 6,
        round_no: int = 1,
        graph: NeighbourGraph | None = None,
        seed: int = 0,
    ) -> None:
        self.nodes = [f"n{i}" for i in range(n)]
        self.rng = np.random.default_rng(seed)
        self.config = RoundConfig(
            job_id="job-t",
            round_no=round_no,
            participants=tuple(self.nodes),
            threshold=threshold,
            bits=bits,
            length=length,
            graph=graph,
        )
        certs = {node: _CERTS[node].public_key() for node in self.nodes}
        self.clients = {
            node: SecAggClient(
                self.config, node_id=node, signing_key=_CERTS[node], peer_keys=certs, rng=self.rng.bytes
            )
            for node in self.nodes
        }
        self.server = SecAggServer(self.config)
        dtype = self.config.dtype
        self.inputs = {
            node: self.rng.integers(0, 2**bits, size=length, dtype=np.uint64).astype(dtype)
            for node in self.nodes
        }

    def expected(self, survivors: tuple[str, ...]) -> np.ndarray:
        total = sum((self.inputs[s].astype(object) for s in survivors), np.zeros(self.config.length, object))
        return np.array([int(v) % 2**self.config.bits for v in total], dtype=np.uint64)

    def advertise(self, nodes: list[str] | None = None) -> KeyRoster:
        for node in self.nodes if nodes is None else nodes:
            self.server.receive_advertisement(self.clients[node].advertise(), peer=node)
        return self.server.close_advertisements()

    def share(self, roster: KeyRoster, nodes: list[str] | None = None) -> dict[str, ForwardedShares]:
        for node in self.nodes if nodes is None else nodes:
            self.server.receive_shares(self.clients[node].share_keys(roster), peer=node)
        return self.server.close_shares()

    def mask(self, forwarded: dict[str, ForwardedShares], nodes: list[str] | None = None) -> UnmaskRequest:
        for node in self.nodes if nodes is None else nodes:
            masked = self.clients[node].masked_input(forwarded[node], self.inputs[node])
            self.server.receive_masked_input(masked, peer=node)
        return self.server.close_masked_inputs()

    def unmask(self, request: UnmaskRequest, nodes: list[str] | None = None) -> AggregateResult:
        for node in request.survivors if nodes is None else nodes:
            self.server.receive_unmask(self.clients[node].unmask(request), peer=node)
        return self.server.finish()


@pytest.fixture
def make_round() -> Callable[..., Round]:
    return Round
