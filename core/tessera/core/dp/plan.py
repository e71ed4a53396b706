"""What noise a round adds, as data: a frozen ``NoisePlan`` that can be priced before it runs.

``sigma_total`` (discrete Gaussian, Skellam) and ``scale`` (Pólya) describe the noise carried by
the sum of ``survivors_t`` shares, the smallest quorum the round can finish with; every node adds
``1/t`` of it. ``n_nodes`` is how many nodes start the round, the most shares the sum can hold.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from tessera.core.dp.errors import DpParameterError


class Mechanism(enum.StrEnum):
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    SKELLAM = "skellam"
    POLYA = "polya"  # Pólya shares summing to the discrete Laplace (pure ε-DP)


@dataclass(frozen=True, slots=True)
class NoisePlan:
    mechanism: Mechanism
    survivors_t: int
    n_nodes: int
    sigma_total: float = 0.0  # integer units; Skellam: sqrt of the variance
    scale: float = 0.0  # Pólya: discrete Laplace scale b, integer units

    def __post_init__(self) -> None:
        object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
        for name in ("survivors_t", "n_nodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DpParameterError(f"{name} must be an integer")
        if not 1 <= self.survivors_t <= self.n_nodes:
            raise DpParameterError("survivors_t must be between 1 and n_nodes")
        if self.mechanism is Mechanism.POLYA:
            if not math.isfinite(self.scale) or self.scale <= 0:
                raise DpParameterError("a Pólya plan needs a positive finite scale")
        elif not math.isfinite(self.sigma_total) or self.sigma_total <= 0:
            raise DpParameterError("a Gaussian or Skellam plan needs a positive finite sigma_total")

    @property
    def per_node_variance(self) -> float:
        """Variance of one node's share (an upper bound for the discrete Gaussian)."""
        if self.mechanism is Mechanism.POLYA:
            alpha = math.exp(-1.0 / self.scale)
            return 2 * alpha / (1 - alpha) ** 2 / self.survivors_t
        return self.sigma_total**2 / self.survivors_t

    def variance_of_sum(self, summands: int | None = None) -> float:
        """Variance of the noise in a sum of ``summands`` shares (default: all ``n_nodes``)."""
        count = self.n_nodes if summands is None else summands
        if not self.survivors_t <= count <= self.n_nodes:
            raise DpParameterError("summands must be between survivors_t and n_nodes")
        return count * self.per_node_variance

    def as_params(self, summands: int | None = None) -> dict[str, float]:
        """Plain numbers for a ledger row, an egress record or ``interval95``."""
        params: dict[str, float] = {
            "survivors_t": float(self.survivors_t),
            "n_nodes": float(self.n_nodes),
            "summands": float(self.n_nodes if summands is None else summands),
        }
        if self.mechanism is Mechanism.POLYA:
            params["scale"] = self.scale
        else:
            params["sigma_total"] = self.sigma_total
        return params

    @classmethod
    def from_params(cls, mechanism: Mechanism | str, params: dict[str, float]) -> NoisePlan:
        try:
            return cls(
                mechanism=Mechanism(mechanism),
                survivors_t=int(params["survivors_t"]),
                n_nodes=int(params["n_nodes"]),
                sigma_total=float(params.get("sigma_total", 0.0)),
                scale=float(params.get("scale", 0.0)),
            )
        except (KeyError, ValueError) as exc:
            raise DpParameterError("noise parameters are incomplete or of the wrong kind") from exc
