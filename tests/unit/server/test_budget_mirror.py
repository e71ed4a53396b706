"""The coordinator's budget mirror keeps ONE budget per node: every release it saw, any dataset."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tessera.core.dp import rho_for, rho_to_epsilon
from tessera.core.types import DatasetSchema, FieldSchema, JobSpec, JobState, PolicySummary, Stage, Tier
from tessera.server.budget_mirror import node_budgets
from tessera.server.store import SqlStore, open_store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DELTA = 1e-6
POLICY = PolicySummary(
    policy_id="p",
    policy_hash="ab" * 32,
    epsilon_per_job=0.5,
    epsilon_per_period=1.0,
    period="30d",
    delta=DELTA,
)
FIELD = (FieldSchema("spend", "float", Tier.GENERAL_SENSITIVE),)
CUSTOMERS, TRANSACTIONS = DatasetSchema("customers", FIELD), DatasetSchema("transactions", FIELD)
RHO = rho_for(epsilon=0.5, delta=DELTA)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = open_store(url)
    s.upsert_node("bank", node_version="1", policy=POLICY, datasets=[CUSTOMERS, TRANSACTIONS], now=T0)
    s.upsert_node("telco", node_version="1", policy=POLICY, datasets=[CUSTOMERS], now=T0)
    yield s
    s.close()


def _released(
    store: SqlStore, dataset: str, nodes: tuple[str, ...], at: datetime, *, sent: bool = True
) -> None:
    """A one-round job whose ``nodes`` sent their masked input (``sent``) or dropped before."""
    job = store.create_job(
        JobSpec(analysis="count", dataset=dataset, epsilon=0.5, delta=DELTA), submitted_by="a", now=at
    )
    store.start_round(job.job_id, round=1, rho=RHO, now=at)
    tasks = store.add_tasks(
        job.job_id, round=1, stage=Stage.MASKED_INPUT, node_ids=nodes, now=at, deadline=None, epoch=1
    )
    for task in tasks:
        if sent:
            store.answer_task(task.task_id, answer=b"")
    store.update_job(job.job_id, now=at, state=JobState.SUCCEEDED if sent else JobState.FAILED)


def test_releases_of_every_dataset_share_the_node_budget(store: SqlStore) -> None:
    _released(store, "customers", ("bank", "telco"), T0)
    _released(store, "transactions", ("bank",), T0 + timedelta(days=1))
    _released(store, "customers", ("bank", "telco"), T0 + timedelta(days=2), sent=False)  # nothing sent
    now = T0 + timedelta(days=3)
    views = {v.node_id: v for v in node_budgets(store, store.list_nodes(), now=now)}
    assert sorted(views) == ["bank", "telco"]  # one view per node, not per dataset
    bank, telco = views["bank"], views["telco"]
    assert bank.releases == 2 and bank.rho_spent == pytest.approx(2 * RHO, rel=1e-12)
    assert bank.epsilon_spent == pytest.approx(rho_to_epsilon(2 * RHO, delta=DELTA))
    assert telco.releases == 1 and telco.rho_spent == pytest.approx(RHO)
    # Two ε = 0.5 releases leave room for a third on the node's budget, not a fourth.
    assert bank.admits(epsilon=0.5, delta=DELTA)
    _released(store, "transactions", ("bank",), now)
    bank = next(v for v in node_budgets(store, store.list_nodes(), now=now) if v.node_id == "bank")
    assert not bank.admits(epsilon=0.5, delta=DELTA)


def test_releases_leave_the_mirror_with_the_period(store: SqlStore) -> None:
    _released(store, "customers", ("bank",), T0)
    _released(store, "transactions", ("bank",), T0 + timedelta(days=20))
    views = {v.node_id: v for v in node_budgets(store, store.list_nodes(), now=T0 + timedelta(days=31))}
    assert views["bank"].releases == 1 and views["telco"].releases == 0 and views["telco"].epsilon_spent == 0
    # The rolling period gives the oldest release's ρ back 30 days after it.
    assert views["bank"].next_renewal == T0 + timedelta(days=50)
    assert views["bank"].oldest_rho == pytest.approx(RHO)
    assert views["bank"].rho_left == pytest.approx(rho_for(epsilon=1.0, delta=DELTA) - RHO)
    assert views["telco"].next_renewal is None
