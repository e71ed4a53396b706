"""Node state directories: init/open, key sources, an interrupted re-wrap, retention purge, erasure."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tessera.client.vault import LocalKek
from tessera.client.vault._model import Customer, Identifier, PiiValue, Tombstone
from tessera.client.vault.admin import erase, purge
from tessera.client.vault.ingest import Ingestor
from tessera.client.vault.mapping import mapping_for_columns
from tessera.client.vault.sources import CsvSource
from tessera.client.vault.state import KEY_FILE, NEXT_KEY_FILE, init_node_state, open_node_state
from tessera.core.errors import ConfigError, CryptoError, NotFound
from tessera.core.policy import Policy, load_policy

POLICY = Path(__file__).resolve().parents[4] / "policies" / "telco.yaml"


@pytest.fixture
def policy() -> Policy:
    return load_policy(POLICY)


def _fill(state_dir: Path, policy: Policy, *, when: datetime) -> None:
    state = open_node_state(state_dir, policy)
    try:
        path = state_dir.parent / "c.csv"
        path.write_text(
            "customer_id,name,email,phone,region,channel,plan,signup_date,tenure_months,monthly_spend,churned\n"
            "T1,Ann,ann@example.com,+447700900111,north,web,basic,2024-01-01,3,9.5,false\n"
            "T2,Bo,bo@example.com,+447700900222,south,app,plus,2024-01-01,5,19.5,true\n",
            encoding="utf-8",
        )
        src = CsvSource(path)
        Ingestor(state.handle(), clock=lambda: when).ingest(
            src, mapping_for_columns(policy, "customers", src.columns)
        )
    finally:
        state.close()


def test_open_needs_init_and_init_refuses_twice(tmp_path: Path, policy: Policy) -> None:
    with pytest.raises(ConfigError, match="tessera node init"):
        open_node_state(tmp_path / "none", policy)
    init_node_state(tmp_path / "s", policy).close()
    assert oct(os.stat(tmp_path / "s").st_mode & 0o777) == "0o700"
    with pytest.raises(ConfigError, match="already holds"):
        init_node_state(tmp_path / "s", policy)
    os.chmod(tmp_path / "s" / KEY_FILE, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        open_node_state(tmp_path / "s", policy)


def test_ledger_commits_reach_the_disk_before_they_return(tmp_path: Path, policy: Policy) -> None:
    """The budget and egress ledgers share the vault's SQLite file: a round's charge must survive a
    power cut once its masked input has left, so every commit is synced (WAL + FULL, not NORMAL)."""
    state = init_node_state(tmp_path / "s", policy)
    try:
        with state.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        state.close()


def test_key_from_environment(tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_VAULT_KEK", base64.b64encode(bytes(32)).decode())
    init_node_state(tmp_path / "s", policy).close()
    assert not (tmp_path / "s" / KEY_FILE).exists()
    open_node_state(tmp_path / "s", policy).close()
    monkeypatch.setenv("TESSERA_VAULT_KEK", base64.b64encode(bytes([1]) * 32).decode())
    with pytest.raises(CryptoError, match="does not open"):
        open_node_state(tmp_path / "s", policy)


def test_interrupted_rewrap_is_finished_on_open(tmp_path: Path, policy: Policy) -> None:
    state = init_node_state(tmp_path / "s", policy)
    from tessera.client.vault.kek import create_key_file

    create_key_file(tmp_path / "s" / NEXT_KEY_FILE)
    state.keys.rewrap(LocalKek.from_file(tmp_path / "s" / NEXT_KEY_FILE))  # then "crash" before the rename
    state.close()
    new_key = (tmp_path / "s" / NEXT_KEY_FILE).read_bytes()
    open_node_state(tmp_path / "s", policy).close()
    assert (tmp_path / "s" / KEY_FILE).read_bytes() == new_key and not (
        tmp_path / "s" / NEXT_KEY_FILE
    ).exists()


def test_purge_applies_retention(tmp_path: Path, policy: Policy) -> None:
    init_node_state(tmp_path / "s", policy).close()
    long_ago = datetime.now(UTC) - timedelta(days=policy.retention_days + 5)
    _fill(tmp_path / "s", policy, when=long_ago)
    state = open_node_state(tmp_path / "s", policy)
    try:
        assert purge(state, now=long_ago + timedelta(days=1)).customers == 0
        result = purge(state)
        assert result.customers == 2
        with state.engine.connect() as conn:
            for model in (Customer, PiiValue, Identifier):
                assert conn.scalar(sa.select(sa.func.count()).select_from(model)) == 0
            assert conn.scalars(sa.select(Tombstone.reason)).all() == ["retention", "retention"]
        assert json.loads((tmp_path / "s" / "audit.log").read_text().splitlines()[-1])["customers"] == 2
    finally:
        state.close()


def test_erase_leaves_a_tombstone_without_pii(tmp_path: Path, policy: Policy) -> None:
    init_node_state(tmp_path / "s", policy).close()
    _fill(tmp_path / "s", policy, when=datetime.now(UTC))
    state = open_node_state(tmp_path / "s", policy)
    try:
        assert erase(state, "email", "  ANN@example.com") > 0
        with pytest.raises(NotFound):
            erase(state, "email", "ann@example.com")
        with state.engine.connect() as conn:
            assert conn.scalars(sa.select(Customer.id)).all() == [2]
            stone = conn.execute(
                sa.select(Tombstone.customer_id, Tombstone.reason, Tombstone.matched_by)
            ).one()
        assert tuple(stone) == (1, "erasure", "email")
        assert len(state.data_source.read("customers", ["plan"])["plan"]) == 1
    finally:
        state.close()
