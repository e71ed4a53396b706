"""Sources and mappings: every bad-input path answers with one sentence (row numbers where they apply)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tessera.client.vault.mapping import ColumnMap, Mapping, load_mapping
from tessera.client.vault.normalise import BadValue, parse_value
from tessera.client.vault.sources import CsvSource, SqlSource
from tessera.core.errors import ConfigError
from tessera.core.policy import parse_policy

POLICY = """
version: 1
policy_id: p
partner: bank
datasets:
  customers:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      email: {tier: core_sensitive, type: string}
allowed_analyses: [count]
allowed_purposes: [research]
privacy: {epsilon_per_job: 0.5, epsilon_per_period: 4.0, period_days: 90, delta: 1.0e-7}
min_cohort_size: 25
min_participants: 3
allowed_partners: [telco, retailer]
retention_days: 30
"""


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"a,b,a\n1,2,3\n", "duplicate columns in its header: a"),
        (b"a,,b\n", "column without a name"),
        (b"\xff\xfea,b\n", "not UTF-8"),
    ],
)
def test_bad_csv_headers(tmp_path: Path, data: bytes, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        CsvSource(_write(tmp_path, data))


def test_bad_encoding_and_quotes_name_the_row(tmp_path: Path) -> None:
    src = CsvSource(_write(tmp_path, b"a,b\n1,2\n3,\xe9\n"))
    with pytest.raises(ConfigError, match="not UTF-8 text at line 3"):
        list(src.rows())
    src = CsvSource(_write(tmp_path, b'a,b\n1,2\n3,"x"y\n'))
    with pytest.raises(ConfigError, match="malformed CSV at row 2"):
        list(src.rows())


def test_a_huge_cell_is_named_as_such_not_as_a_quote(tmp_path: Path) -> None:
    src = CsvSource(_write(tmp_path, b"a,b\n1,2\n3," + b"x" * 10_000_000 + b"\n"))
    with pytest.raises(ConfigError, match=r"at row 2 \(a value longer than 131,072 characters\)"):
        list(src.rows())


def test_an_unreachable_source_database_is_not_called_an_unreadable_table() -> None:
    with pytest.raises(ConfigError) as info:  # nothing listens on port 1
        SqlSource("postgresql+psycopg://tessera:hunter2@127.0.0.1:1/shop", table="crm")
    assert "cannot connect to the source database postgresql at 127.0.0.1:1" in info.value.message
    assert "hunter2" not in info.value.message and "crm" not in info.value.message


def test_wrong_field_count_is_a_row_problem(tmp_path: Path) -> None:
    src = CsvSource(_write(tmp_path, "\ufeffa,b\n1,2\n1\n\n3,4\n".encode()))
    assert src.columns == ("a", "b")
    assert list(src.rows()) == [(1, ["1", "2"]), (2, None), (3, ["3", "4"])]
    assert list(src.rows(skip=2)) == [(3, ["3", "4"])]


def test_a_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with path.open("wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: 2 GB on paper, no disk used
    with pytest.raises(ConfigError, match=r"2\.1 GB, above the limit.*--max-bytes"):
        CsvSource(path)
    with pytest.raises(ConfigError, match="does not exist"):
        CsvSource(tmp_path / "nope.csv")


def test_sql_source_reads_a_table_and_a_query(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE crm (customer_id TEXT, email TEXT)")
        conn.exec_driver_sql("INSERT INTO crm VALUES ('C1', 'a@example.com'), ('C2', NULL)")
    engine.dispose()
    src = SqlSource(url, table="crm")
    assert src.columns == ("customer_id", "email")
    assert list(src.rows()) == [(1, ["C1", "a@example.com"]), (2, ["C2", None])]
    assert list(SqlSource(url, query="SELECT customer_id FROM crm").rows(skip=1)) == [(2, ["C2"])]
    assert src.digest() == SqlSource(url, table="crm").digest()
    with pytest.raises(ConfigError, match="has no table 'missing'"):
        SqlSource(url, table="missing")
    with pytest.raises(ConfigError, match="cannot be read from the source database"):
        SqlSource(url, query="SELECT nothing FROM crm")
    with pytest.raises(ConfigError, match="exactly one"):
        SqlSource(url)


def test_mapping_file_errors(tmp_path: Path) -> None:
    policy = parse_policy(POLICY, source="p.yaml")
    path = tmp_path / "m.yaml"
    path.write_text("dataset: customers\ncolumns:\n  a: {field: email, colour: red}\n")
    with pytest.raises(ConfigError, match=r"columns\.a\.colour"):
        load_mapping(path, policy)
    path.write_text("dataset: customers\ncolumns: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(path, policy)
    path.write_text("dataset: customers\ndefault_region: XX\ncolumns:\n  a: {field: email}\n")
    with pytest.raises(ConfigError, match="default_region"):
        load_mapping(path, policy)
    path.write_text("dataset: customers\ncolumns:\n  a: {field: email}\n  b: {field: email}\n")
    with pytest.raises(ConfigError, match="more than one column"):
        load_mapping(path, policy)
    with pytest.raises(ConfigError, match="needs a column that names the customer"):
        Mapping("transactions", (ColumnMap("t", "time", "datetime"),))


@pytest.mark.parametrize(
    ("kind", "raw", "fmt", "expected"),
    [
        ("amount", "€1,234.50", None, "1234.5000"),
        ("amount", "(12.00)", None, "-12.0000"),
        ("int", "1,200", None, 1200.0),
        ("bool", "Yes", None, True),
    ],
)
def test_parse_values(kind: str, raw: str, fmt: str | None, expected: object) -> None:
    from datetime import UTC

    value = parse_value(ColumnMap("c", "f", kind, fmt), raw, zone=UTC, default_region=None)
    assert (str(value) if kind == "amount" else value) == expected


@pytest.mark.parametrize(
    ("col", "raw"),
    [
        (ColumnMap("c", "f", "int"), "1.5"),
        (ColumnMap("c", "f", "float"), "nan"),
        (ColumnMap("c", "f", "date"), "31/02/2024"),
        (ColumnMap("c", "f", "amount"), "ten"),
        (ColumnMap("c", "phone", "string", identifier="phone"), "07700 900123"),  # no region given
        (ColumnMap("c", "email", "string", identifier="email"), "a@b"),
    ],
)
def test_unreadable_values_never_echo_the_value(col: ColumnMap, raw: str) -> None:
    from datetime import UTC

    with pytest.raises(BadValue) as caught:
        parse_value(col, raw, zone=UTC, default_region=None)
    assert raw not in caught.value.reason
