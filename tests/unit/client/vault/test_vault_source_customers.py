"""The vault's schemas carry the unit of privacy: transactions and events have a customer key that
reads as the vault's internal customer ids; customers needs none (One ID)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from test_vault_ingest import CUSTOMERS, POLICY, _csv, _ingest

from tessera.client.datasource import read_for_plan
from tessera.client.egress import EgressLedger
from tessera.client.vault import LocalKek, VaultKeys
from tessera.client.vault._model import create_model
from tessera.client.vault.source import VaultDataSource
from tessera.client.vault.state import NodeState
from tessera.core.analyses import contribution, count, histogram
from tessera.core.errors import PolicyViolation
from tessera.core.policy import parse_policy
from tessera.core.types import JobSpec, Tier

EVENTS = """
  events:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      time:        {tier: general_sensitive, type: date}
      event_type:  {tier: non_sensitive, type: category}
"""


def _state(engine: sa.Engine, tmp_path: Path, text: str) -> NodeState:
    policy = parse_policy(text, source="policies/test.yaml")
    keys = VaultKeys.create(engine, LocalKek.generate())
    create_model(engine)
    return NodeState(tmp_path, policy, engine, keys, EgressLedger(engine), VaultDataSource(engine, policy))


def _with_events(text: str) -> str:
    return text.replace("allowed_analyses:", EVENTS.lstrip("\n") + "allowed_analyses:", 1)


@pytest.fixture
def state(engine: sa.Engine, tmp_path: Path) -> NodeState:
    state = _state(engine, tmp_path, _with_events(POLICY))
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    rows = "".join(f"C1,2024-03-01,{i},a\n" for i in range(100)) + "C2,2024-03-02,5,b\n"
    _ingest(state, _csv(tmp_path, "customer_id,time,amount,category\n" + rows, "t.csv"), "transactions")
    events = "".join(f"C3,2024-03-01T10:{i:02d}:00Z,view\n" for i in range(30)) + "C1,2024-03-01,buy\n"
    _ingest(state, _csv(tmp_path, "customer_id,time,event_type\n" + events, "e.csv"), "events")
    return state


def _fields(state: NodeState, dataset: str) -> dict[str, object]:
    return {f.name: f for f in next(d for d in state.data_source.schemas() if d.name == dataset).fields}


def test_fact_schemas_carry_a_customer_key_and_customers_none(state: NodeState) -> None:
    key = _fields(state, "transactions")["customer"]
    assert (key.type, key.tier) == ("customer_key", Tier.CORE_SENSITIVE)  # type: ignore[attr-defined]
    assert "customer" in _fields(state, "events")
    assert all(f.type != "customer_key" for f in _fields(state, "customers").values())  # type: ignore[attr-defined]
    ids = state.data_source.read("transactions", ["customer"])["customer"]
    assert ids.dtype == np.int64 and len(set(ids.tolist())) == 2 and len(ids) == 101


def test_counts_over_transactions_and_events_are_per_customer(state: NodeState) -> None:
    def run(dataset: str, **params: object) -> list[int]:
        spec = JobSpec(analysis="x", dataset=dataset, params=params, epsilon=0.5, delta=1e-7)  # type: ignore[arg-type]
        module = histogram if "field" in params or "per_customer" in params else count
        plan = module.plan(spec, _fields(state, dataset), survivors_t=2, n_nodes=3)  # type: ignore[arg-type]
        data = read_for_plan(state.data_source, dataset, plan.fields)
        assert contribution.customers_in(plan, data) == len(set(data["customer"].tolist()))
        return module.local_vector(plan, data, rng=np.random.default_rng(0)).tolist()  # type: ignore[no-any-return]

    assert run("transactions") == [2]  # C1's 100 rows count once
    assert run("transactions", max_rows_per_customer=10) == [11]
    # Per-customer event counts: C3 has 30 events, C1 one.
    assert run("events", per_customer="count", lower=0.0, upper=40.0, bins=4) == [1, 0, 0, 1]


def test_a_policy_key_names_the_vault_key_too(engine: sa.Engine, tmp_path: Path) -> None:
    text = POLICY.replace("  transactions:\n", "  transactions:\n    customer_key: customer_id\n")
    state = _state(engine, tmp_path, text)
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    _ingest(
        state,
        _csv(tmp_path, "customer_id,time,amount,category\nC1,2024-03-01,1,a\n", "t.csv"),
        "transactions",
    )
    fields = _fields(state, "transactions")
    assert fields["customer_id"].type == "customer_key" and "customer" not in fields  # type: ignore[attr-defined]
    assert state.data_source.read("transactions", ["customer_id", "amount"])["customer_id"].tolist() == [1]
    # Still never a value: an analysis asking for it as a field is vetoed.
    spec = JobSpec(
        analysis="histogram",
        dataset="transactions",
        params={"field": "customer_id", "categories": ("x",)},
        epsilon=0.5,
        delta=1e-7,
    )
    with pytest.raises(PolicyViolation) as caught:
        histogram.plan(spec, fields, survivors_t=2, n_nodes=3)  # type: ignore[arg-type]
    assert caught.value.code == "policy.customer_key_field"
