"""Where overlap reads identifiers: the vault decrypts and they come back normalised, one each;
a filter selects by label; a core_sensitive filter or an unclassified one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.cli.demo import ingest_raw
from tessera.client.overlap_source import CsvIdentifiers, VaultIdentifiers
from tessera.client.vault.state import open_node_state
from tessera.core.analyses.overlap import Label
from tessera.core.errors import PolicyViolation
from tessera.core.policy import load_policy

REPO = Path(__file__).resolve().parents[3]
ROWS = [
    # customer_id, email, phone, region
    ("c1", " Ann@Example.com ", "+44 7700 900123", "north"),
    ("c2", "bob@example.com", "07700 900456", "south"),
    ("c3", "cat@example.com", "", "north"),
]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "customers.csv"
    lines = ["customer_id,email,phone,region"] + [",".join(r) for r in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vault_identifiers_are_decrypted_normalised_and_filtered(tmp_path: Path, raw: Path) -> None:
    policy = load_policy(REPO / "policies" / "bank.yaml")
    ingest_raw(tmp_path / "state", policy, {"customers": raw})
    state = open_node_state(tmp_path / "state", policy)
    try:
        source = VaultIdentifiers(state.engine, state.keys.cipher(), policy)
        assert source.identifiers("email", label=None) == [
            "ann@example.com",
            "bob@example.com",
            "cat@example.com",
        ]
        assert source.identifiers("phone", label=None) == ["+447700900123", "+447700900456"]
        assert source.identifiers("email", label=Label("region", "north")) == [
            "ann@example.com",
            "cat@example.com",
        ]
        with pytest.raises(PolicyViolation):
            source.identifiers("email", label=Label("name", "x"))  # core_sensitive
        with pytest.raises(PolicyViolation):
            source.identifiers("email", label=Label("shoe_size", "9"))  # not classified
    finally:
        state.close()


def test_csv_identifiers_match_the_vaults(raw: Path) -> None:
    policy = load_policy(REPO / "policies" / "bank.yaml")
    source = CsvIdentifiers({"customers": raw}, policy, default_region="GB")
    assert source.identifiers("phone", label=None) == ["+447700900123", "+447700900456"]
    assert source.identifiers("email", label=Label("region", "south")) == ["bob@example.com"]
