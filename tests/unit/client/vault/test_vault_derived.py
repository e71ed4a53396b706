"""Derived per-customer values (segments, scores, CLV) stay home, typed, under the policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from test_vault_ingest import CUSTOMERS, POLICY, _csv, _ingest

from tessera.client.egress import EgressLedger
from tessera.client.vault import LocalKek, VaultKeys
from tessera.client.vault._model import Customer, create_model
from tessera.client.vault.derived import read_derived, store_derived
from tessera.client.vault.source import VaultDataSource
from tessera.client.vault.state import NodeState
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.policy import parse_policy

DERIVED = POLICY.replace(
    "      note:          {tier: non_sensitive, type: string}\n",
    "      note:          {tier: non_sensitive, type: string}\n"
    "      segment:       {tier: general_sensitive, type: category}\n"
    "      clv:           {tier: general_sensitive, type: float}\n",
)


@pytest.fixture
def state(engine: sa.Engine, tmp_path: Path) -> NodeState:
    policy = parse_policy(DERIVED, source="policies/test.yaml")
    keys = VaultKeys.create(engine, LocalKek.generate())
    create_model(engine)
    state = NodeState(tmp_path, policy, engine, keys, EgressLedger(engine), VaultDataSource(engine, policy))
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    return state


def _ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.select(Customer.id).order_by(Customer.id)))


def test_values_are_stored_replaced_whole_and_read_back_by_analyses(state: NodeState) -> None:
    a, b, c = _ids(state.engine)
    assert store_derived(state.engine, state.policy, field="segment", values={a: "Champions", b: "Lost"}) == 2
    assert store_derived(state.engine, state.policy, field="segment", values={c: "New", a: None}) == 1
    assert read_derived(state.engine, field="segment") == {c: "New"}  # no mix of two runs
    store_derived(state.engine, state.policy, field="clv", values={a: 12.5, b: float("nan")})
    assert read_derived(state.engine, field="clv") == {a: 12.5}
    column = state.data_source.read("customers", ["segment"])["segment"]
    assert list(column) == [None, None, "New"]


def test_unclassified_core_and_mistyped_fields_are_refused(state: NodeState) -> None:
    (a, *_) = _ids(state.engine)
    with pytest.raises(PolicyViolation, match="not classified"):
        store_derived(state.engine, state.policy, field="score", values={a: 1.0})
    with pytest.raises(PolicyViolation, match="core_sensitive"):
        store_derived(state.engine, state.policy, field="email", values={a: "x"})
    with pytest.raises(InvalidRequest, match="text"):
        store_derived(state.engine, state.policy, field="segment", values={a: 3.0})
    with pytest.raises(InvalidRequest, match="finite"):
        store_derived(state.engine, state.policy, field="clv", values={a: float("inf")})
    with pytest.raises(InvalidRequest, match="not in the vault"):
        store_derived(state.engine, state.policy, field="clv", values={999_999: 1.0})
    assert read_derived(state.engine, field="clv") == {}
