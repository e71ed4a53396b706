"""`tessera node merges|unmerge|erase` and the ingest's merge report through the CLI (issue 12, items
1 and 2): the household of the issue stays two people, the report and `node quality` agree, a merge
is undone, and an erased customer stays erased."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tessera.cli.main import app

runner = CliRunner()
POLICY = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
HEADER = "customer_id,name,email,phone,region\n"


def node(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["node", *args])
    return result.exit_code, result.output


def _ingest(base: list[str], path: Path, text: str) -> dict:  # type: ignore[type-arg]
    path.write_text(text, encoding="utf-8")
    code, out = node("ingest", str(path), "--region", "GB", "--json", *base)
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_merge_report_quality_unmerge_and_erasure(tmp_path: Path) -> None:
    base = ["--state-dir", str(tmp_path / "state"), "--policy", str(POLICY)]
    assert node("init", *base)[0] == 0
    first = _ingest(
        base,
        tmp_path / "a.csv",
        HEADER + "C1,Ann Lee,ann@example.com,07700 900123,north\n"
        "C2,Bo Lee,,07700 900123,north\n,Cy Day,cy@example.com,,east\n",
    )
    assert (first["customers_created"], first["duplicates_merged"]) == (3, 0)
    linked = _ingest(base, tmp_path / "b.csv", HEADER + "C3,,cy@example.com,,\n")
    assert linked["duplicates_merged"] == 1 and linked["merges"][0]["kept"] == 3
    code, out = node("quality", "--json", *base)
    assert json.loads(out)["merges"] == 1  # the quality report agrees with the merge report
    code, out = node("merges", "--json", *base)
    assert [m["merge"] for m in json.loads(out)] == [linked["merges"][0]["merge"]]
    code, out = node("unmerge", "--merge", str(linked["merges"][0]["merge"]), *base)
    assert code == 0 and "undone" in out, out
    assert json.loads(node("quality", "--json", *base)[1])["merges"] == 0

    code, out = node("erase", "--email", "ann@example.com", *base)
    assert code == 0, out
    back = _ingest(
        base,
        tmp_path / "c.csv",
        HEADER + "C1,Ann Lee,ann@example.com,07700 900123,north\nC4,Di,d@example.com,,\n",
    )
    assert (back["rows_erased"], back["erased_rows"], back["customers_created"]) == (1, [1], 1)
    code, out = node("lookup", "--id", "C1", *base)
    assert code == 1 and "no customer" in out
    code, out = node("ingest", str(tmp_path / "c.csv"), "--region", "GB", *base)
    assert "of erased customers" in out


def test_node_quality_flags_formulas_of_the_last_ingest(tmp_path: Path) -> None:
    base = ["--state-dir", str(tmp_path / "state"), "--policy", str(POLICY)]
    assert node("init", *base)[0] == 0
    _ingest(base, tmp_path / "a.csv", HEADER + 'C1,"=HYPERLINK(""http://x.example"")",a@example.com,,north\n')
    result = runner.invoke(app, ["node", "quality", *base], terminal_width=200)
    assert "flagged (accepted as written; check the source): name: 1 spreadsheet formula(s)" in result.output
    assert "HYPERLINK" not in result.output
