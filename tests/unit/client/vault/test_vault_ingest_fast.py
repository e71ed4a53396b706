"""The fast ingest path keeps every guarantee: first-pass rows reused or parsed again give the same
vault, batched encryption gives ordinary tokens, grouping follows One ID, the SQLite write-pass
tuning is undone — on SQLite and PostgreSQL (the ``engine`` fixture) where a database is involved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tessera.client.egress import EgressLedger
from tessera.client.vault import LocalKek, VaultKeys
from tessera.client.vault._bulk import WAL_CHECKPOINT_PAGES, bulk_load
from tessera.client.vault._model import DATA_TABLES, create_model
from tessera.client.vault._prepare import Prepared
from tessera.client.vault._writer import _group
from tessera.client.vault.crypto import DataKey, FieldCipher, FieldContext, Keyring
from tessera.client.vault.ingest import Ingestor
from tessera.client.vault.mapping import mapping_for_columns
from tessera.client.vault.source import VaultDataSource
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import NodeState
from tessera.core.errors import CryptoError
from tessera.core.policy import parse_policy

POLICY = """
version: 1
policy_id: fast-v1
partner: bank
datasets:
  customers:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      email:       {tier: core_sensitive, type: string}
      phone:       {tier: core_sensitive, type: string}
      region:      {tier: non_sensitive, type: category}
      spend:       {tier: general_sensitive, type: float}
  transactions:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      time:        {tier: general_sensitive, type: date}
      amount:      {tier: general_sensitive, type: float}
allowed_analyses: [count]
allowed_purposes: [research]
privacy: {epsilon_per_job: 0.5, epsilon_per_period: 4.0, period_days: 90, delta: 1.0e-7}
min_cohort_size: 25
min_participants: 3
allowed_partners: [telco, retailer]
retention_days: 30
"""
# Row 5 carries customer 4's email and a customer id of its own: One ID must merge across batches and
# the kept/re-read boundary alike. Row 6 shares C3's phone but no name: a phone alone never merges.
CUSTOMERS = (
    "customer_id,email,phone,region,spend\n"
    + "".join(f"C{i},u{i}@example.com,07700 9001{i:02d},north,{i}.5\n" for i in range(1, 4))
    + ",u4@example.com,07700 900104,north,4.5\n"
    + "C5,U4@example.com,,,\nC6,,07700 900103,east,\nC7,u7@example.com,07700 900107,west,1\n"
)
TRANSACTIONS = "customer_id,time,amount\n" + "".join(
    f"C{(1, 2, 3, 5, 6, 7)[i % 6]},2024-03-{i % 28 + 1:02d},{i}.25\n" for i in range(11)
)


def _state(engine: sa.Engine, tmp_path: Path) -> NodeState:
    policy = parse_policy(POLICY, source="policies/fast.yaml")
    keys = VaultKeys.create(engine, LocalKek.generate())
    create_model(engine)
    return NodeState(tmp_path, policy, engine, keys, EgressLedger(engine), VaultDataSource(engine, policy))


def _run(state: NodeState, tmp_path: Path, dataset: str, text: str, **kw: Any):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{dataset}.csv"
    path.write_text(text, encoding="utf-8")
    src = CsvSource(path)
    mapping = mapping_for_columns(state.policy, dataset, src.columns, default_region="GB")
    return Ingestor(state.handle(default_region="GB"), **kw).ingest(src, mapping)


def _content(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Everything but times and tokens (fresh nonces differ); tokens are checked by decryption."""
    out = {}
    with engine.connect() as conn:
        for model in DATA_TABLES:
            table = model.__table__
            skip = ("last_seen_at", "seen_at", "created_at", "updated_at", "time", "token")
            cols = [c for c in table.columns if c.name not in skip]
            out[table.name] = sorted(tuple(r) for r in conn.execute(sa.select(*cols)))
    return out


def _ingest_all(engine: sa.Engine, tmp_path: Path, **kw: Any) -> tuple[dict[str, Any], list[Any]]:
    state = _state(engine, tmp_path)
    reports = [
        _run(state, tmp_path, "customers", CUSTOMERS, **kw),
        _run(state, tmp_path, "transactions", TRANSACTIONS, **kw),
    ]
    return _content(engine), [(r.customers_created, r.duplicates_merged, r.rows_written) for r in reports]


@pytest.mark.parametrize("keep_rows", [0, 3])
def test_reparsed_rows_give_the_same_vault_as_kept_ones(
    engine: sa.Engine, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, keep_rows: int
) -> None:
    kept, kept_counts = _ingest_all(engine, tmp_path, batch_size=2)
    other = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('other') / 'v.db'}")
    try:
        again, again_counts = _ingest_all(other, tmp_path, batch_size=2, keep_rows=keep_rows)
    finally:
        other.dispose()
    assert kept_counts == again_counts == [(6, 1, 7), (0, 0, 11)]
    assert len(kept["vault_customer"]) == 6 and len(kept["vault_merge"]) == 1
    # Blind indexes and fingerprints are keyed per vault: compare what does not depend on the keys.
    for name in ("vault_customer", "vault_attribute", "vault_merge"):
        assert kept[name] == again[name], name
    assert [r[1:] for r in kept["vault_pii"]] == [r[1:] for r in again["vault_pii"]]
    assert len(kept["vault_transaction"]) == len(again["vault_transaction"]) == 11


class _Stop(Exception):
    pass


def test_resume_mixes_kept_and_reparsed_chunks(engine: sa.Engine, tmp_path: Path) -> None:
    state = _state(engine, tmp_path)

    def stop(done: int) -> None:
        if done >= 4:
            raise _Stop

    with pytest.raises(_Stop):
        _run(state, tmp_path, "customers", CUSTOMERS, batch_size=2, on_progress=stop)
    seen: list[int] = []
    report = _run(state, tmp_path, "customers", CUSTOMERS, batch_size=2, keep_rows=2, on_progress=seen.append)
    assert seen == [6, 7] and report.status == "done"
    assert (report.customers_created, report.duplicates_merged) == (6, 1)
    assert _run(state, tmp_path, "customers", CUSTOMERS).status == "already_ingested"


def test_batched_tokens_are_ordinary_tokens_bound_to_their_row() -> None:
    key = DataKey.generate()
    cipher = FieldCipher(Keyring([key], active=key.key_id))
    tokens = cipher.encrypt_texts("vault_pii", "token", [("1:email", "a@b.io"), ("2:email", "a@b.io")])
    assert tokens[0] != tokens[1] and tokens[0][1:9] == key.key_id
    assert cipher.decrypt_text(tokens[0], context=FieldContext("vault_pii", "token", "1:email")) == "a@b.io"
    with pytest.raises(CryptoError):
        cipher.decrypt_text(tokens[0], context=FieldContext("vault_pii", "token", "2:email"))
    with pytest.raises(ValueError, match="row key"):
        cipher.encrypt_texts("vault_pii", "token", [("", "x")])


def test_groups_follow_shared_indexes_and_stored_customers() -> None:
    keyed = [
        [("email", "a")],
        [("phone", "b")],
        [("email", "a"), ("phone", "b")],
        [("email", "c")],
        [("x", "d")],
    ]
    groups, owners = _group(keyed, {"c": 9, "d": 9})
    assert groups == {0: [0, 1, 2], 3: [3, 4]}
    assert owners == {3: {9}}


def test_a_chunk_after_a_row_keeps_only_later_records() -> None:
    chunk = Prepared(
        records=[(3, {"a": "x"}), (4, {"a": "y"}), (5, {"a": "z"})],
        keyed=[[("email", "1")], [("email", "2")], [("email", "3")]],
        rows=3,
    )
    part = chunk.after(4)
    assert part.rows == 1 and part.records == [(5, {"a": "z"})] and part.keyed == [[("email", "3")]]
    assert chunk.after(2) is chunk


def test_sqlite_write_pass_tuning_is_restored(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            with bulk_load(conn):
                assert not conn.in_transaction()  # batches begin and commit their own
                assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_CHECKPOINT_PAGES
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    finally:
        engine.dispose()
