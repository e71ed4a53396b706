"""Helpers for the secure-aggregation tests: shared certificate keys and a seeded epoch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.secagg.messages import ConsistencyRequest, ForwardedShares
from tessera.core.secagg.testing import EpochHarness

# Certificate keys are slow-ish to make; one set serves every test (signatures do not affect sums).
CERTS = {f"n{i:02d}" if i >= 10 else f"n{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(100)}


def node_names(n: int) -> list[str]:
    return [f"n{i:02d}" if i >= 10 else f"n{i}" for i in range(n)]


class Epoch(EpochHarness):
    """An :class:`EpochHarness` over nodes n0, n1, ... with one random input per node."""

    def __init__(self, n: int, *, threshold: int, seed: int = 0, **kwargs: Any) -> None:
        nodes = node_names(n)
        super().__init__(
            nodes,
            threshold=threshold,
            rng=np.random.default_rng(seed),
            signing={v: CERTS[v] for v in nodes},
            **kwargs,
        )
        self.inputs = self.vectors()

    def expected_sum(self, survivors: Iterable[str]) -> list[int]:
        return self.expected(self.inputs, survivors)

    def mask_inputs(
        self, forwarded: dict[str, ForwardedShares], nodes: Iterable[str] | None = None
    ) -> ConsistencyRequest:
        return self.mask(forwarded, self.inputs, nodes)
