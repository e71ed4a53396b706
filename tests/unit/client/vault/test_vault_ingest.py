"""Ingestion into the canonical model: standardising, idempotency, rejection, PII refusal, One ID,
resume — on SQLite and PostgreSQL (the ``engine`` fixture)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tessera.client.egress import EgressLedger
from tessera.client.vault import BlindIndexer, LocalKek, VaultKeys
from tessera.client.vault._model import DATA_TABLES, Customer, Merge, PiiValue, Transaction, create_model
from tessera.client.vault.admin import lookup
from tessera.client.vault.identity import IdentityIndex
from tessera.client.vault.ingest import Ingestor, IngestRejected, VaultHandle
from tessera.client.vault.mapping import load_mapping, mapping_for_columns
from tessera.client.vault.quality import IngestReport
from tessera.client.vault.source import VaultDataSource
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import NodeState
from tessera.core.errors import ConfigError, PolicyViolation
from tessera.core.policy import Policy, parse_policy

POLICY = """
version: 1
policy_id: test-v1
partner: bank
datasets:
  customers:
    fields:
      customer_id:   {tier: core_sensitive, type: string}
      name:          {tier: core_sensitive, type: string}
      email:         {tier: core_sensitive, type: string}
      phone:         {tier: core_sensitive, type: string}
      national_id:   {tier: core_sensitive, type: string}
      region:        {tier: non_sensitive, type: category}
      signup_date:   {tier: general_sensitive, type: date}
      monthly_spend: {tier: general_sensitive, type: float}
      churned:       {tier: general_sensitive, type: bool}
      note:          {tier: non_sensitive, type: string}
      backup_contact: {tier: general_sensitive, type: string, pii_override: true}
  transactions:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      time:        {tier: general_sensitive, type: date}
      amount:      {tier: general_sensitive, type: float}
      category:    {tier: non_sensitive, type: category}
allowed_analyses: [count]
allowed_purposes: [research]
privacy: {epsilon_per_job: 0.5, epsilon_per_period: 4.0, period_days: 90, delta: 1.0e-7}
min_cohort_size: 25
min_participants: 3
allowed_partners: [telco, retailer]
retention_days: 30
"""
HEADER = "customer_id,name,email,phone,national_id,region,signup_date,monthly_spend,churned\n"
CUSTOMERS = HEADER + (
    "C1,Ada,Ada@Example.COM ,07700 900123,,north,2024-01-05,12.5,false\n"
    "C2,Bob,bob@example.com,+86 138 0013 8000,11010519491231002X,south,2024-02-01,,true\n"
    "C3,Cy,cy@example.com,,,east,2024-03-01T23:30:00-02:00,3,no\n"
)


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, source="policies/test.yaml")


@pytest.fixture
def state(engine: sa.Engine, policy: Policy, tmp_path: Path) -> NodeState:
    keys = VaultKeys.create(engine, LocalKek.generate())
    create_model(engine)
    return NodeState(tmp_path, policy, engine, keys, EgressLedger(engine), VaultDataSource(engine, policy))


def _handle(state: NodeState) -> VaultHandle:
    return state.handle(default_region="GB")


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> CsvSource:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return CsvSource(path)


def _ingest(state: NodeState, src: CsvSource, dataset: str = "customers", **kw: Any):  # type: ignore[no-untyped-def]
    mapping = mapping_for_columns(state.policy, dataset, src.columns, default_region="GB")
    return Ingestor(_handle(state), **kw).ingest(src, mapping)


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with engine.connect() as conn:
        for model in DATA_TABLES:
            table = model.__table__
            cols = [c for c in table.columns if c.name not in ("last_seen_at", "seen_at")]
            out[table.name] = sorted(tuple(r) for r in conn.execute(sa.select(*cols)))
    return out


def test_a_re_ingest_reports_what_it_did_not_what_the_first_ingest_did(
    state: NodeState, tmp_path: Path
) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    again = _ingest(state, _csv(tmp_path, CUSTOMERS))
    assert again.status == "already_ingested"
    assert (again.rows_written, again.customers_created, again.rows_unchanged) == (0, 0, 3)
    # The next export changes one customer: one row written (an update), two unchanged.
    changed = _ingest(state, _csv(tmp_path, CUSTOMERS.replace(",12.5,", ",13.5,"), "next.csv"))
    assert (changed.status, changed.rows_written, changed.rows_unchanged) == ("done", 1, 2)
    assert (changed.customers_created, changed.customers_updated) == (0, 1)


def test_formulas_and_future_dates_are_flagged_in_the_quality_report(
    state: NodeState, tmp_path: Path
) -> None:
    text = HEADER + (
        'C1,"=HYPERLINK(""http://x.example"",""hi"")",a@example.com,,,north,2024-01-05,1,no\n'
        "C2,+SUM(A1:A9),b@example.com,+44 7700 900123,,south,2999-01-01,-2.5,no\n"
        "C3,Cy,c@example.com,,,east,2024-03-01,3,no\n"
    )
    report = _ingest(state, _csv(tmp_path, text))
    assert report.status == "done" and report.customers_created == 3  # accepted, but flagged
    fields = {f.field: f for f in report.fields}
    assert (fields["name"].formulas, fields["signup_date"].future_dates) == (2, 1)
    # A phone with its "+" and a negative amount are not formulas.
    assert fields["phone"].formulas == 0 and fields["monthly_spend"].formulas == 0
    flags = [(w.row, w.column, w.reason) for w in report.warnings]
    assert flags == [
        (1, "name", "looks like a spreadsheet formula"),
        (2, "name", "looks like a spreadsheet formula"),
        (2, "signup_date", "is a date in the future"),
    ]
    assert "HYPERLINK" not in str(report.as_dict())  # the report names rows, never values
    assert IngestReport.from_dict(report.as_dict()).warnings == report.warnings


def test_standardises_and_encrypts(state: NodeState, tmp_path: Path) -> None:
    report = _ingest(state, _csv(tmp_path, CUSTOMERS))
    assert (report.status, report.customers_created, report.rows_written) == ("done", 3, 3)
    ada = lookup(state, "email", "ada@example.com", default_region="GB")
    assert ada.pii["email"] == "ada@example.com"
    assert ada.pii["phone"] == "+447700900123"
    bob = lookup(state, "phone", "13800138000", default_region="CN")
    assert bob.pii["national_id"] == "11010519491231002X" and bob.attributes["churned"] is True
    cols = state.data_source.read("customers", ["region", "signup_date", "monthly_spend", "churned"])
    assert list(cols["region"]) == ["north", "south", "east"]
    # 23:30 at UTC-2 is 01:30 the next day in UTC: the date moves.
    assert (
        cols["signup_date"][2] == (datetime(2024, 3, 2, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
    )
    assert cols["monthly_spend"][1] != cols["monthly_spend"][1]  # NaN = missing
    assert list(cols["churned"]) == [0.0, 1.0, 0.0]
    with state.engine.connect() as conn:
        tokens = conn.execute(sa.select(PiiValue.token)).scalars().all()
    assert tokens and all(b"example" not in bytes(t) for t in tokens)


def test_same_file_twice_changes_nothing(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    before = _snapshot(state.engine)
    assert _ingest(state, _csv(tmp_path, CUSTOMERS)).status == "already_ingested"
    # The same rows in another order are another file: a full pass, still no change.
    lines = CUSTOMERS.splitlines(keepends=True)
    again = _ingest(state, _csv(tmp_path, lines[0] + "".join(reversed(lines[1:])), "other.csv"))
    assert again.status == "done" and again.rows_unchanged == 3 and again.customers_updated == 0
    assert _snapshot(state.engine) == before


def test_worker_processes_give_the_same_result(state: NodeState, tmp_path: Path) -> None:
    # Seven customers, each delivered several times with the same values: 23 duplicates merged.
    rows = "".join(
        f"C{i % 7},N{i % 7},u{i % 7}@example.com,,,north,2024-01-01,{i % 7},false\n" for i in range(30)
    )
    report = _ingest(state, _csv(tmp_path, HEADER + rows), batch_size=4, workers=2)
    assert (report.customers_created, report.rows_unchanged, report.rows_read) == (7, 23, 30)
    bad = _csv(tmp_path, HEADER + rows + "C99,x,x@example.com,,,north,never,1,false\n", "bad.csv")
    with pytest.raises(IngestRejected, match="row 31"):
        _ingest(state, bad, batch_size=4, workers=2)


def test_changed_value_updates_only_that_customer(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    report = _ingest(state, _csv(tmp_path, HEADER + "C1,Ada,ada@example.com,,,west,,,\n", "delta.csv"))
    assert (report.customers_updated, report.customers_created) == (1, 0)
    assert state.data_source.read("customers", ["region"])["region"][0] == "west"


def test_bad_rows_reject_the_batch_and_leave_the_vault_unchanged(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    before = _snapshot(state.engine)
    bad = HEADER + (
        "C7,Eve,eve@example.com,,,north,2024-01-05,1,true\n"
        "C8,Fay,fay@example.com,,,north,05/01/2024,1,true\n"
        "C9,Gus,not-an-email,,,north,2024-01-05,lots,true\n"
        "C10,Hal\n"
    )
    with pytest.raises(IngestRejected) as caught:
        _ingest(state, _csv(tmp_path, bad, "bad.csv"), batch_size=1)
    message = caught.value.message
    assert "row 2" in message and "signup_date" in message and "row 3" in message and "row 4" in message
    assert "not-an-email" not in message and "05/01/2024" not in message
    assert caught.value.report.rows_rejected == 3
    assert _snapshot(state.engine) == before


def test_on_invalid_missing_counts_instead_of_rejecting(
    state: NodeState, tmp_path: Path, policy: Policy
) -> None:
    (tmp_path / "m.yaml").write_text(
        "dataset: customers\ndefault_region: GB\ncolumns:\n  id: {field: customer_id}\n"
        "  joined: {field: signup_date, format: '%d/%m/%Y', on_invalid: missing}\n"
        "  spend_cents: {field: monthly_spend, type: amount, minor_units: 2}\n",
        encoding="utf-8",
    )
    src = _csv(tmp_path, 'id,joined,spend_cents\nA,05/01/2024,1250\nB,2024-01-05,"1,000"\n')
    report = Ingestor(_handle(state)).ingest(src, load_mapping(tmp_path / "m.yaml", policy))
    joined = next(f for f in report.fields if f.field == "signup_date")
    assert (joined.present, joined.invalid) == (1, 1)
    cols = state.data_source.read("customers", ["monthly_spend", "signup_date"])
    assert list(cols["monthly_spend"]) == [12.5, 10.0]


def test_unclassified_and_unknown_columns_are_refused(
    state: NodeState, tmp_path: Path, policy: Policy
) -> None:
    src = _csv(tmp_path, "customer_id,shoe_size\nC1,42\n")
    with pytest.raises(PolicyViolation, match=r'"shoe_size".*policies/test\.yaml') as caught:
        mapping_for_columns(policy, "customers", src.columns)
    assert caught.value.code == "policy.unclassified_field"
    (tmp_path / "m.yaml").write_text("dataset: customers\ncolumns:\n  customer_id: {field: customer_id}\n")
    with pytest.raises(ConfigError, match=r"shoe_size.*does not name"):
        Ingestor(_handle(state)).ingest(src, load_mapping(tmp_path / "m.yaml", policy))
    (tmp_path / "m2.yaml").write_text("dataset: customers\ncolumns:\n  cid: {field: customer_id}\n")
    with pytest.raises(ConfigError, match=r"names column.*cid"):
        Ingestor(_handle(state)).ingest(src, load_mapping(tmp_path / "m2.yaml", policy))


@pytest.mark.parametrize(
    "values",
    [
        ["someone@example.org", "other@example.net"],  # emails
        ["13800138000", "+86 139 0013 9000"],  # mainland-China mobiles
        ["11010519491231002X", "110105194912310029"],  # PRC resident ids (the 2nd has a wrong check digit)
        ["4111 1111 1111 1111", "5500-0000-0000-0004"],  # card numbers (Luhn)
    ],
)
def test_pii_in_a_low_tier_column_is_refused(state: NodeState, tmp_path: Path, values: list[str]) -> None:
    rows = "".join(f"C{i},{v}\n" for i, v in enumerate([*values, values[0]]))
    with pytest.raises(
        PolicyViolation, match=r"note.*core_sensitive.*pii_override.*policies/test\.yaml"
    ) as caught:
        _ingest(state, _csv(tmp_path, "customer_id,note\n" + rows))
    assert caught.value.code == "policy.pii_in_low_tier"
    assert values[0] not in caught.value.message
    with state.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Customer)) == 0


def test_pii_is_judged_on_the_text_as_written(state: NodeState, tmp_path: Path) -> None:
    # monthly_spend is a float field: mainland-China mobiles would parse as plain numbers.
    rows = "".join(f"C{i},1380013800{i}\n" for i in range(5))
    with pytest.raises(PolicyViolation, match="phone"):
        _ingest(state, _csv(tmp_path, "customer_id,monthly_spend\n" + rows))


def test_pii_override_lets_a_column_through(state: NodeState, tmp_path: Path) -> None:
    report = _ingest(
        state, _csv(tmp_path, "customer_id,backup_contact\nC1,a@example.org\nC2,b@example.org\n")
    )
    assert report.customers_created == 2


def test_one_id_merges_customers_and_records_it(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, HEADER + ",Ada,ada@example.com,,,north,,,\nC2,,,07700 900123,,,,5,\n"))
    _ingest(
        state,
        _csv(tmp_path, "customer_id,time,amount,category\nC2,2024-03-01,5,food\n", "t.csv"),
        "transactions",
    )
    # A row that carries customer 1's email and C2's customer id proves they are one person.
    report = _ingest(state, _csv(tmp_path, HEADER + "C2,,ada@example.com,,,,,,\n", "link.csv"))
    assert report.duplicates_merged == 1 and [m["kept"] for m in report.merges] == [1]
    assert report.merges[0]["merged"] == 2 and report.merges[0]["kind"] == "customers"
    with state.engine.connect() as conn:
        assert conn.scalars(sa.select(Customer.id)).all() == [1]
        assert conn.execute(sa.select(Merge.kept_id, Merge.merged_id)).all() == [(1, 2)]
        assert conn.scalars(sa.select(Transaction.customer_id)).all() == [1]
    merged = lookup(state, "customer_id", "C2")
    assert merged.customer_id == 1 and merged.pii["phone"] == "+447700900123" and merged.transactions == 1
    assert merged.attributes["monthly_spend"] == 5.0 and merged.attributes["region"] == "north"
    assert merged.pii["name"] == "Ada"


def test_duplicates_within_a_file_become_one_customer(state: NodeState, tmp_path: Path) -> None:
    report = _ingest(state, _csv(tmp_path, HEADER + "C1,A,a@example.com,,,,,,\n,A,A@EXAMPLE.COM,,,,,,\n"))
    assert (report.customers_created, report.duplicates_merged) == (1, 1)


class _Interrupt(Exception):
    pass


def test_interrupted_ingest_resumes_after_the_last_batch(state: NodeState, tmp_path: Path) -> None:
    rows = "".join(f"C{i},N{i},u{i}@example.com,,,north,2024-01-01,{i},false\n" for i in range(10))
    src = _csv(tmp_path, HEADER + rows)

    def stop(done: int) -> None:
        if done >= 4:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _ingest(state, src, batch_size=4, on_progress=stop)
    with state.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Customer)) == 4
    seen: list[int] = []
    report = _ingest(state, src, batch_size=4, on_progress=seen.append)
    assert seen == [8, 10] and report.customers_created == 10 and report.status == "done"
    with state.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Customer)) == 10


def test_transactions_need_a_known_customer_and_are_idempotent(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    bad = _csv(
        tmp_path, "customer_id,time,amount,category\nC1,2024-03-01,1,a\nC404,2024-03-01,2,b\n", "t.csv"
    )
    with pytest.raises(IngestRejected, match=r"row 2.*no customer"):
        _ingest(state, bad, "transactions")
    text = 'customer_id,time,amount,category\nC1,2024-03-01T10:00:00+01:00,"1,234.50",a\nC2,2024-03-02,2,b\n'
    assert _ingest(state, _csv(tmp_path, text, "t1.csv"), "transactions").rows_written == 2
    again = _ingest(state, _csv(tmp_path, text + "\n", "t2.csv"), "transactions")
    assert (again.rows_written, again.rows_unchanged) == (0, 2)
    cols = state.data_source.read("transactions", ["time", "amount", "category"])
    assert list(cols["amount"]) == [1234.5, 2.0] and list(cols["customer"]) == [1, 2]
    assert cols["time"][0] == pytest.approx(19783 + 9 / 24)


def test_transactions_keep_their_customers_when_the_reference_cache_fills(
    state: NodeState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.client.vault import ingest as ingest_module

    _ingest(state, _csv(tmp_path, CUSTOMERS))
    monkeypatch.setattr(ingest_module, "_REF_CACHE", 2)  # smaller than one chunk's customers
    # Chunk 1 names C1 and C2 (cached); chunk 2 names C2 (cached) and C3 (not): the cache overflows.
    rows = "".join(f"C{c},2024-03-{i + 1:02d},{i + 1},a\n" for i, c in enumerate([1, 2, 1, 2, 2, 3, 2, 3]))
    report = _ingest(
        state,
        _csv(tmp_path, "customer_id,time,amount,category\n" + rows, "t.csv"),
        "transactions",
        batch_size=4,
    )
    assert report.rows_written == 8


def test_datasource_refuses_core_sensitive_fields(state: NodeState, tmp_path: Path) -> None:
    _ingest(state, _csv(tmp_path, CUSTOMERS))
    with pytest.raises(PolicyViolation) as caught:
        state.data_source.read("customers", ["region", "email"])
    assert caught.value.code == "policy.core_sensitive_field"
    with pytest.raises(PolicyViolation, match="no dataset"):
        state.data_source.read("events", ["time"])
    assert [d.name for d in state.data_source.schemas()] == ["customers", "transactions"]
    assert list(state.data_source.read("customers", ["note"])["note"]) == [None, None, None]


def test_identity_index_separates_kinds() -> None:
    identity = IdentityIndex(bytes(range(32)))
    # Same values as the BlindIndexer that a later PSI job uses, for standardised input.
    indexer = BlindIndexer(bytes(range(32)))
    assert identity.index("email", "a@example.com") == indexer.index_hex("email", "a@example.com")
    assert identity.index("phone", "+447700900123") == indexer.index_hex("phone", "+447700900123")
    assert identity.index("customer_id", "X1") != identity.index("national_id", "X1")
    assert identity.index("customer_id", " X1 ") == identity.index("customer_id", "X1")
