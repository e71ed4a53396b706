"""`tessera node init|ingest|quality|rotate-keys|purge|erase|lookup|egress` end to end through the CLI,
and the canary test: distinctive PII goes in, appears nowhere at rest, and `lookup` still finds it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.client.egress import EgressLedger, EgressRecord
from tessera.client.vault.canary import find_canaries

runner = CliRunner()
POLICY = Path(__file__).resolve().parents[2] / "policies" / "bank.yaml"
CANARY_EMAIL = "Zebulon.Quixote-Canary@Example-Canary.test"
CANARY_PHONE = "+44 7700 900987"
CANARY_NAME = "Zebulon Quixotecanary"
CANARIES = [CANARY_EMAIL.lower(), "7700900987", "7700 900987", CANARY_NAME, "XQ123456C"]
_COLUMNS = "customer_id,name,email,phone,national_id,region,channel"
HEADER = f"{_COLUMNS},signup_date,tenure_months,monthly_spend,churned\n"
ROWS = (
    f"C0000001,{CANARY_NAME},{CANARY_EMAIL},{CANARY_PHONE},XQ123456C,north,web,2024-01-05,10,12.5,False\n"
    "C0000002,Ann Other,ann@example.com,07700 900111,AB123456C,south,app,2023-02-01,22,40.1,True\n"
)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["node", *args], env=env)
    return result.exit_code, result.output


def _base(state: Path, db_url: str | None) -> list[str]:
    return ["--state-dir", str(state), "--policy", str(POLICY), *(["--db-url", db_url] if db_url else [])]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


def test_canary_pii_never_rests_in_plaintext(tmp_path: Path, db: str | None) -> None:
    state, data = tmp_path / "state", tmp_path / "customers.csv"
    data.write_text(HEADER + ROWS, encoding="utf-8")
    base = _base(state, db)
    assert run("init", *base)[0] == 0
    assert stat.S_IMODE(os.stat(state / "vault.key").st_mode) == 0o600
    code, out = run("ingest", str(data), "--region", "GB", *base)
    assert code == 0, out
    assert run("quality", "--json", *base)[0] == 0
    engine = sa.create_engine(db or f"sqlite:///{state / 'vault.db'}")
    try:
        assert find_canaries(engine, state, CANARIES) == []
        # The scan can find what it looks for (a test that cannot fail proves nothing).
        (tmp_path / "leak").mkdir()
        (tmp_path / "leak" / "x.log").write_text(f"oops {CANARY_NAME}")
        assert find_canaries(None, tmp_path / "leak", CANARIES)
    finally:
        engine.dispose()
    code, out = run("lookup", "--email", CANARY_EMAIL.upper(), "--json", *base)
    assert code == 0, out
    record = json.loads(out)
    assert record["email"] == CANARY_EMAIL.lower() and record["phone"] == "+447700900987"
    assert record["name"] == CANARY_NAME and record["national_id"] == "XQ123456C"
    audit = (state / "audit.log").read_text()
    assert '"action": "lookup"' in audit and "7700" not in audit and "canary" not in audit.lower()


def test_rotate_erase_purge_and_egress_through_the_cli(tmp_path: Path) -> None:
    state, data = tmp_path / "state", tmp_path / "customers.csv"
    data.write_text(HEADER + ROWS, encoding="utf-8")
    base = _base(state, None)
    run("init", *base)
    assert run("ingest", str(data), "--region", "GB", *base)[0] == 0
    old_key = (state / "vault.key").read_bytes()
    code, out = run("rotate-keys", "--mode", "rewrap", *base)
    assert code == 0 and "re-wrapped 2 keys" in out
    assert (state / "vault.key").read_bytes() != old_key
    code, out = run("rotate-keys", "--mode", "reencrypt", *base)
    assert code == 0 and "re-encrypted 10 values" in out, out
    assert json.loads(run("lookup", "--id", "C0000002", "--json", *base)[1])["email"] == "ann@example.com"
    # A wrong key: one clear sentence, nothing altered.
    (state / "vault.key").write_bytes(old_key)
    code, out = run("lookup", "--id", "C0000002", *base)
    assert code == 1 and "the key does not open this vault" in out
    (state / "vault.key").write_bytes(b"")
    os.remove(state / "vault.key")
    code, out = run("rotate-keys", *base)
    assert code == 1 and "tessera node init" in out
    env = {"TESSERA_VAULT_KEK": "not base64!"}
    assert run("quality", *base, env=env)[0] == 1


def test_erase_purge_egress(tmp_path: Path) -> None:
    state, data = tmp_path / "state", tmp_path / "customers.csv"
    data.write_text(HEADER + ROWS, encoding="utf-8")
    base = _base(state, None)
    run("init", *base)
    run("ingest", str(data), "--region", "GB", *base)
    code, out = run("erase", "--phone", "07700900987", "--region", "GB", *base)
    assert code == 0 and "erased" in out, out
    code, out = run("lookup", "--email", CANARY_EMAIL, *base)
    assert code == 1 and "no customer" in out
    assert run("erase", "--email", "a@b.c", "--phone", "1", *base)[0] == 1
    code, out = run("purge", *base)
    assert code == 0 and "removed 0 customers" in out
    engine = sa.create_engine(f"sqlite:///{state / 'vault.db'}")
    try:
        record = EgressRecord(
            job_id="j1",
            round=1,
            stage="masked_input",
            purpose="research",
            analysis="count",
            fields=("region",),
            shape=(4,),
            noise={"kind": "skellam"},
            rho=0.01,
            epsilon=0.5,
            delta=1e-7,
            policy_hash="ab" * 32,
        )
        EgressLedger(engine).record(record, b"payload")
        code, out = run("egress", "report", "--state-dir", str(state), "--json", "--since", "2020-01-01")
        assert code == 0 and json.loads(out)[0]["job_id"] == "j1"
        assert run("egress", "verify", "--state-dir", str(state))[0] == 0
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE egress_ledger SET epsilon = 0.1")
        code, out = run("egress", "verify", "--state-dir", str(state))
        assert code == 1 and "entry 1" in out
        assert find_canaries(engine, state, CANARIES) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("", "is empty"),
        (HEADER.replace("region", "email"), "duplicate columns"),
        (HEADER + "C1,N,n@example.com,,,north,web,yesterday,1,1,False\n", "row 1, column 'signup_date'"),
        (HEADER.replace("churned", "shoe_size") + "C1,N,,,,,,,,,1\n", '"shoe_size".*bank.yaml'),
    ],
)
def test_bad_input_is_one_sentence_and_changes_nothing(tmp_path: Path, content: str, pattern: str) -> None:
    import re

    state, data = tmp_path / "state", tmp_path / "in.csv"
    data.write_text(content, encoding="utf-8")
    base = _base(state, None)
    run("init", *base)
    before = [p.read_bytes() for p in sorted(state.glob("vault.db*"))]
    code, out = run("ingest", str(data), *base)
    assert code == 1 and "Traceback" not in out
    assert re.search(pattern, " ".join(out.split())), out
    assert [p.read_bytes() for p in sorted(state.glob("vault.db*"))] == before


def test_uninitialised_state_dir_says_to_run_init(tmp_path: Path) -> None:
    code, out = run("quality", *_base(tmp_path / "nothing", None))
    assert code == 1 and "tessera node init" in out
    code, out = run("egress", "verify", "--state-dir", str(tmp_path / "nothing"))
    assert code == 1 and "tessera node init" in out


def test_ingest_from_a_database_table_through_a_mapping(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(source)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE crm (cust TEXT, mail TEXT, joined TEXT, spend_cents INTEGER)")
        conn.exec_driver_sql("INSERT INTO crm VALUES ('K1', 'K1@Example.com', '05/01/2024', 1250)")
    engine.dispose()
    (tmp_path / "map.yaml").write_text(
        "dataset: customers\ncolumns:\n  cust: {field: customer_id}\n  mail: {field: email}\n"
        "  joined: {field: signup_date, format: '%d/%m/%Y'}\n"
        "  spend_cents: {field: monthly_spend, type: amount, minor_units: 2}\n",
        encoding="utf-8",
    )
    state = tmp_path / "state"
    base = _base(state, None)
    run("init", *base)
    args = ["--source-url", source, "--table", "crm", "--mapping", str(tmp_path / "map.yaml"), "--json"]
    code, out = run("ingest", *args, *base)
    assert code == 0, out
    assert json.loads(out)["customers_created"] == 1
    record = json.loads(run("lookup", "--email", "k1@example.com", "--json", *base)[1])
    assert record["monthly_spend"] == 12.5 and record["signup_date"].startswith("2024-01-05")
    code, out = run("ingest", "--source-url", source, *base)
    assert code == 1 and "exactly one of --table or --query" in out
