"""Shared pieces of the churn tests: a synthetic population with a known true model, its schemas,
the job spec and an in-memory run."""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera.core.analyses import churn_model
from tessera.core.analyses.churn_simulate import Trace, run
from tessera.core.types import FieldSchema, JobSpec, ParamValue, Tier

FIELDS = {
    "tenure": FieldSchema("tenure", "float", Tier.GENERAL_SENSITIVE),
    "spend": FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE),
    "region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "churned": FieldSchema("churned", "bool", Tier.GENERAL_SENSITIVE),
    "email": FieldSchema("email", "string", Tier.CORE_SENSITIVE),
}
REGIONS = ("north", "south", "east", "west", "isle")
EFFECT = {"north": 0.0, "south": 0.5, "east": -0.5, "west": 1.0, "isle": 0.3}
TRUE = {"intercept": -1.0, "tenure": 0.8, "spend": -0.6}


def population(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    """``n`` customers, one row each; churn drawn from a known logistic model ("isle" is rare)."""
    rng = np.random.default_rng(seed)
    tenure = rng.normal(24, 10, n)
    spend = rng.gamma(2.0, 10.0, n)
    region = rng.choice(REGIONS, n, p=[0.4, 0.3, 0.2, 0.099, 0.001])
    logit = (
        TRUE["intercept"]
        + TRUE["tenure"] * (tenure - 24) / 10
        + TRUE["spend"] * (np.log1p(spend) - 2.8) / 0.6
        + np.array([EFFECT[r] for r in region])
    )
    churned = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return {
        "tenure": tenure,
        "spend": spend,
        "region": region.astype(object),
        "churned": churned,
        "email": np.array([f"c{i}@example.com" for i in range(n)], dtype=object),
    }


def nodes_of(data: dict[str, np.ndarray], k: int) -> list[dict[str, np.ndarray]]:
    return [{name: col[i::k] for name, col in data.items() if name != "email"} for i in range(k)]


def params(**extra: ParamValue) -> dict[str, ParamValue]:
    return {
        "label": "churned",
        "features": ("tenure", "spend", "region"),
        "lower": (-20.0, 0.0),
        "upper": (80.0, 300.0),
        "log_features": ("spend",),
        "categories": tuple(f"region={r}" for r in REGIONS),
        **extra,
    }


def spec(epsilon: float = 1.0, **extra: ParamValue) -> JobSpec:
    return JobSpec(
        analysis="churn_model", dataset="customers", epsilon=epsilon, delta=1e-6, params=params(**extra)
    )


def train(job: JobSpec, nodes: list[dict[str, Any]], *, noise: bool, seed: int = 0) -> Trace:
    return run(churn_model, job, FIELDS, nodes, noise=noise, rng=np.random.default_rng(seed))
