"""In-memory runs of programs of rounds (plan -> local vectors -> noise -> sum -> release -> step)
and the real CDNOW purchases as vault-like transactions, for the segment analyses' tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from tessera.core.analyses.program import Step
from tessera.core.analyses.registry import get_program
from tessera.core.analyses.vector import add_noise
from tessera.core.types import FieldSchema, JobSpec, Tier

CDNOW = Path("/work/shared/data/cdnow")
TRANSACTIONS = {
    "customer": FieldSchema("customer", "customer_key", Tier.CORE_SENSITIVE),
    "time": FieldSchema("time", "date", Tier.GENERAL_SENSITIVE),
    "amount": FieldSchema("amount", "float", Tier.GENERAL_SENSITIVE),
    "channel": FieldSchema("channel", "category", Tier.NON_SENSITIVE),
    "customers.customer_id": FieldSchema("customer_id", "customer_key", Tier.CORE_SENSITIVE),
    "customers.churned": FieldSchema("churned", "bool", Tier.GENERAL_SENSITIVE),
    "customers.region": FieldSchema("region", "category", Tier.NON_SENSITIVE),
    "customers.tenure_months": FieldSchema("tenure_months", "int", Tier.GENERAL_SENSITIVE),
    "customers.email": FieldSchema("email", "string", Tier.CORE_SENSITIVE),
    "customers.loyalty": FieldSchema("loyalty", "category", Tier.GENERAL_SENSITIVE),
}


def run(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    nodes: Sequence[Mapping[str, Any]],
    *,
    rng: np.random.Generator,
    noise: bool = True,
    min_cohort_size: int = 10,
) -> tuple[list[Step], list[dict[str, Any]], float]:
    """Run ``spec`` over simulated nodes; returns the steps, the public inputs and the ρ spent."""
    program = get_program(spec.analysis)
    public = program.start(spec)
    steps: list[Step] = []
    publics: list[dict[str, Any]] = []
    spent = 0.0
    n = len(nodes)
    for round_no in range(1, program.max_rounds(spec) + 1):
        publics.append(dict(public))
        plan = program.plan(spec, fields, survivors_t=n, n_nodes=n, round_no=round_no, public=public)
        spent += plan.rho
        vectors = [program.local_vector(plan, data, rng=rng) for data in nodes]
        if noise:
            vectors = [add_noise(plan, x, rng=rng) for x in vectors]
        total = np.sum(vectors, axis=0).astype(np.int64)
        released = program.release(plan, total, summands=n, min_cohort_size=min_cohort_size)
        step = program.step(spec, round_no=round_no, public=public, released=released)
        steps.append(step)
        if step.done:
            break
        assert step.next_public is not None
        public = step.next_public
    return steps, publics, spent


def _days(yyyymmdd: np.ndarray) -> np.ndarray:
    epoch = date(1970, 1, 1)
    lookup = {d: float((date(d // 10000, d // 100 % 100, d % 100) - epoch).days) for d in np.unique(yyyymmdd)}
    return np.array([lookup[d] for d in yyyymmdd.tolist()])


def cdnow(sample: bool = True) -> dict[str, np.ndarray]:
    """CDNOW purchases: ``customer`` (its id), ``time`` (days since 1970) and ``amount`` (USD)."""
    if sample:
        raw = np.loadtxt(CDNOW / "CDNOW_sample.txt")
        cid, day, amount = raw[:, 0], raw[:, 2], raw[:, 4]
    else:
        raw = np.loadtxt(CDNOW / "CDNOW_master.txt", skiprows=1)
        cid, day, amount = raw[:, 0], raw[:, 1], raw[:, 3]
    return {"customer": cid.astype(np.int64), "time": _days(day.astype(np.int64)), "amount": amount}


def split(data: Mapping[str, np.ndarray], nodes: int, key: str = "customer") -> list[dict[str, np.ndarray]]:
    """Each customer (all of its rows) on one node, by id modulo ``nodes``."""
    home = np.asarray(data[key]) % nodes
    return [{name: np.asarray(col)[home == k] for name, col in data.items()} for k in range(nodes)]
