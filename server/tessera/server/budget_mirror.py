"""The coordinator's mirror of the nodes' privacy budgets, for planning and for refusing hopeless
jobs early. Each node's own ledger is the authority and vetoes on its own; this mirror only
reads what the coordinator saw released: the ρ of each DP release, charged to the nodes whose
masked input was in the sum, composed per node over the node's rolling period.

A node has ONE budget for its customers, whatever dataset a release read (DESIGN §4: the unit of
privacy is one customer, joined across datasets by One ID), so the mirror keeps one view per node.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tessera.core import dp
from tessera.server.store import NodeRecord, SqlStore

# Pure functions of two floats, asked again for every node and every job with the same values.
rho_for = functools.lru_cache(maxsize=4096)(lambda epsilon, delta: dp.rho_for(epsilon=epsilon, delta=delta))
_to_epsilon = functools.lru_cache(maxsize=4096)(lambda rho, delta: dp.rho_to_epsilon(rho, delta=delta))


def rho_to_epsilon(rho: float, *, delta: float) -> float:
    return float(_to_epsilon(rho, delta))


# What a node's budget covers, for wire fields that still name a dataset (analyst BudgetView).
NODE_BUDGET = "customers"


@dataclass(frozen=True, slots=True)
class BudgetView:
    """One node's budget as far as the coordinator knows: every release it saw, of any dataset."""

    node_id: str
    period_days: int
    epsilon_limit: float
    epsilon_per_job: float
    delta: float
    rho_spent: float
    releases: int
    oldest_release: datetime | None = None  # the period's oldest charge: budget returns from then
    oldest_rho: float = 0.0

    @property
    def rho_limit(self) -> float:
        return float(rho_for(self.epsilon_limit, self.delta)) if self.epsilon_limit > 0 else 0.0

    @property
    def rho_left(self) -> float:
        return max(0.0, self.rho_limit - self.rho_spent)

    @property
    def next_renewal(self) -> datetime | None:
        """When the oldest release leaves the rolling period and its ρ returns."""
        if self.oldest_release is None:
            return None
        return self.oldest_release + timedelta(days=self.period_days)

    @property
    def epsilon_spent(self) -> float:
        return rho_to_epsilon(self.rho_spent, delta=self.delta) if self.rho_spent > 0 else 0.0

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.epsilon_limit - self.epsilon_spent)

    def admits(self, *, epsilon: float, delta: float) -> bool:
        """Whether a further release at (ε, δ) still fits the period, as far as the mirror knows."""
        if epsilon <= 0 or delta <= 0:
            return True
        rho = self.rho_spent + float(rho_for(epsilon, delta))
        return rho_to_epsilon(rho, delta=self.delta) <= self.epsilon_limit * (1 + 1e-9)


def _period_days(node: NodeRecord) -> int:
    text = node.policy.period.strip().lower()
    return int(text[:-1]) if text.endswith("d") and text[:-1].isdigit() else 30


def node_budgets(store: SqlStore, nodes: Sequence[NodeRecord], *, now: datetime) -> list[BudgetView]:
    """One view per node: the ρ of every release it was charged for in its period, any dataset."""
    longest = max((_period_days(n) for n in nodes), default=30)
    spent: dict[str, list[tuple[datetime, float]]] = {}
    for _dataset, at, rho, charged in store.released_charges(since=now - timedelta(days=longest)):
        for node_id in charged:
            spent.setdefault(node_id, []).append((at, rho))
    views = []
    for node in nodes:
        days = _period_days(node)
        in_period = sorted(
            (at, rho) for at, rho in spent.get(node.node_id, []) if at >= now - timedelta(days=days)
        )
        charges = [rho for _, rho in in_period]
        views.append(
            BudgetView(
                node_id=node.node_id,
                period_days=days,
                epsilon_limit=node.policy.epsilon_per_period,
                epsilon_per_job=node.policy.epsilon_per_job,
                delta=node.policy.delta if node.policy.delta > 0 else 1e-9,
                rho_spent=math.fsum(charges),
                releases=len(charges),
                oldest_release=in_period[0][0] if in_period else None,
                oldest_rho=in_period[0][1] if in_period else 0.0,
            )
        )
    return views
