"""Shared schemas, specs and seeded synthetic customers for the DP analysis tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

FIELDS = {
    "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "segment": FieldSchema("segment", "category", Tier.GENERAL_SENSITIVE),
    "spend": FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE),
    "visits": FieldSchema("visits", "int", Tier.NON_SENSITIVE),
    "email": FieldSchema("email", "string", Tier.CORE_SENSITIVE),
    "income": FieldSchema("income", "float", Tier.CORE_SENSITIVE),
}
GROUPS = ("north", "south")
REGIONS = np.array(["north", "south", "east", None], dtype=object)


def spec(
    analysis: str, params: dict[str, ParamValue], *, epsilon: float = 1.0, delta: float = 1e-6
) -> JobSpec:
    return JobSpec(analysis=analysis, dataset="customers", params=params, epsilon=epsilon, delta=delta)


def customers(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """``n`` synthetic customers: a region (some missing / unlisted) and a spend (10% missing)."""
    spend = rng.gamma(2.0, 50.0, n)
    spend[rng.random(n) < 0.1] = np.nan
    return {
        "region": REGIONS[rng.integers(0, REGIONS.size, n)],
        "spend": spend,
        "visits": rng.integers(0, 20, n).astype(np.float64),
        "segment": np.array(rng.choice(["a", "b", "c"], n), dtype=object),
    }
