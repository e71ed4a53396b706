"""One ID as a customer-data platform does it (issue 12, item 1): match rules, no silent loss, a
merge report the quality report agrees with, and ``unmerge`` — on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_vault_ingest import HEADER, POLICY

from tessera.client.egress import EgressLedger
from tessera.client.vault import LocalKek, VaultKeys
from tessera.client.vault._model import Customer, Transaction, create_model
from tessera.client.vault.admin import lookup, merges, unmerge
from tessera.client.vault.ingest import Ingestor
from tessera.client.vault.mapping import load_mapping, mapping_for_columns
from tessera.client.vault.quality import vault_quality
from tessera.client.vault.source import VaultDataSource
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import NodeState
from tessera.core.errors import ConfigError, Conflict
from tessera.core.policy import Policy, parse_policy


@pytest.fixture
def state(engine: sa.Engine, tmp_path: Path) -> NodeState:
    policy: Policy = parse_policy(POLICY, source="policies/test.yaml")
    keys = VaultKeys.create(engine, LocalKek.generate())
    create_model(engine)
    return NodeState(tmp_path, policy, engine, keys, EgressLedger(engine), VaultDataSource(engine, policy))


def _csv(tmp_path: Path, text: str, name: str) -> CsvSource:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return CsvSource(path)


def _ingest(state: NodeState, src: CsvSource, dataset: str = "customers", mapping: Any = None):  # type: ignore[no-untyped-def]
    plan = mapping or mapping_for_columns(state.policy, dataset, src.columns, default_region="GB")
    return Ingestor(state.handle(default_region="GB")).ingest(src, plan)


def _customers(state: NodeState) -> list[int]:
    with state.engine.connect() as conn:
        return list(conn.scalars(sa.select(Customer.id).order_by(Customer.id)))


def test_a_household_phone_never_merges_two_customers(state: NodeState, tmp_path: Path) -> None:
    text = HEADER + "C1,Ada Lovelace,,07700 900123,,,,10,\nC2,Charles Lovelace,,07700 900123,,,,20,\n"
    report = _ingest(state, _csv(tmp_path, text, "household.csv"))
    assert (report.customers_created, report.duplicates_merged, report.rows_conflicted) == (2, 0, 0)
    ada, charles = lookup(state, "customer_id", "C1"), lookup(state, "customer_id", "C2")
    assert (ada.pii["name"], charles.pii["name"]) == ("Ada Lovelace", "Charles Lovelace")
    assert (ada.attributes["monthly_spend"], charles.attributes["monthly_spend"]) == (10.0, 20.0)
    # The shared phone still finds a customer only when it names exactly one.
    with pytest.raises(Conflict, match="2 customers share the given phone"):
        lookup(state, "phone", "07700 900123", default_region="GB")
    assert vault_quality(state.engine, state.policy)["merges"] == 0


def test_phone_and_name_together_merge(state: NodeState, tmp_path: Path) -> None:
    text = "name,phone,monthly_spend\nAda Lovelace,07700 900123,10\nAda Lovelace,+44 7700 900123,\n"
    report = _ingest(state, _csv(tmp_path, text, "p.csv"))
    assert (report.customers_created, report.duplicates_merged) == (1, 1)
    assert report.merges[0]["matched_by"] == "combined"
    # The name is compared case- and space-blind for matching, but a spelling that differs is a
    # value the merge would lose: refused and listed.
    other = "name,phone\nBo  Smith,07700 900999\nbo smith,07700 900999\n"
    refused = _ingest(state, _csv(tmp_path, other, "q.csv"))
    assert refused.rows_conflicted == 2 and refused.conflicts[0]["fields"] == ["name"]


def test_a_merge_whose_records_disagree_is_refused_and_listed(state: NodeState, tmp_path: Path) -> None:
    # Two partner customer ids share one email: merging would lose one of them.
    text = (
        HEADER
        + "C1,Ada,family@example.com,,,,,,\nC2,Bob,family@example.com,,,,,,\nC3,Cy,c@example.com,,,,,,\n"
    )
    report = _ingest(state, _csv(tmp_path, text, "shared.csv"))
    assert (report.customers_created, report.rows_written, report.rows_conflicted) == (1, 1, 2)
    assert report.conflicts == [
        {
            "rows": [1, 2],
            "customers": [],
            "fields": ["customer_id", "name"],
            "reason": "the records to merge hold different values",
        }
    ]
    # A stored customer is never silently overwritten by another one's identifier either.
    again = _ingest(state, _csv(tmp_path, HEADER + "C9,Cy,c@example.com,,,,,,\n", "c9.csv"))
    assert again.rows_conflicted == 1 and again.conflicts[0]["fields"] == ["customer_id"]
    assert lookup(state, "email", "c@example.com").pii["customer_id"] == "C3"


def test_match_rules_come_from_the_mapping(state: NodeState, tmp_path: Path) -> None:
    src = _csv(
        tmp_path, "id,mail,tel\nC1,a@example.com,07700 900123\nC2,b@example.com,07700 900123\n", "m.csv"
    )
    doc = tmp_path / "map.yaml"
    doc.write_text(
        "dataset: customers\ndefault_region: GB\ncolumns:\n  id: {field: customer_id}\n"
        "  mail: {field: email}\n  tel: {field: phone}\nmatch:\n  - [phone]\n",
        encoding="utf-8",
    )
    report = _ingest(state, src, mapping=load_mapping(doc, state.policy))
    # Only the phone merges here: the two rows are one customer, whose ids disagree -> refused.
    assert report.rows_conflicted == 2 and report.conflicts[0]["fields"] == ["customer_id", "email"]
    doc.write_text(doc.read_text().replace("[phone]", "[nickname]"), encoding="utf-8")
    with pytest.raises(ConfigError, match="nickname"):
        load_mapping(doc, state.policy)


def test_merge_report_quality_and_unmerge_agree(state: NodeState, tmp_path: Path) -> None:
    _ingest(
        state, _csv(tmp_path, HEADER + ",Ada,ada@example.com,,,north,,,\nC2,,,07700 900123,,,,5,\n", "a.csv")
    )
    _ingest(
        state,
        _csv(tmp_path, "customer_id,time,amount,category\nC2,2024-03-01,5,food\n", "t.csv"),
        "transactions",
    )
    report = _ingest(state, _csv(tmp_path, HEADER + "C2,,ada@example.com,,,,,,\n", "link.csv"))
    assert report.duplicates_merged == len(report.merges) == 1
    assert vault_quality(state.engine, state.policy)["merges"] == 1
    assert [(m.merge_id, m.kept, m.merged, m.kind) for m in merges(state)] == [(1, 1, 2, "customers")]

    restored = unmerge(state, report.merges[0]["merge"])
    assert restored == 2 and _customers(state) == [1, 2]
    c2, ada = lookup(state, "customer_id", "C2"), lookup(state, "email", "ada@example.com")
    assert (c2.customer_id, c2.pii["phone"], c2.transactions, c2.attributes["monthly_spend"]) == (
        2,
        "+447700900123",
        1,
        5.0,
    )
    assert "phone" not in ada.pii and ada.pii["name"] == "Ada" and ada.transactions == 0
    assert vault_quality(state.engine, state.policy)["merges"] == 0
    with pytest.raises(Conflict, match="already undone"):
        unmerge(state, 1)
    # The operator separated them: the next export that links them again is refused, not merged.
    again = _ingest(state, _csv(tmp_path, HEADER + "C2,,ada@example.com,,,,,,\n\n", "link2.csv"))
    assert again.rows_conflicted == 1 and "unmerge" in again.conflicts[0]["reason"]
    with state.engine.connect() as conn:
        assert sorted(conn.scalars(sa.select(Transaction.customer_id))) == [2]
