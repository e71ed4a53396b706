"""`tessera policy lint|diff` through typer's CliRunner: exit codes and what the officer reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tessera.cli import policy_cmd

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "policies"

_root = typer.Typer()
_root.add_typer(policy_cmd.app, name="policy")


@_root.callback()
def _main() -> None:
    """Test root so that `policy` stays a sub-command."""


runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(_root, ["policy", *args])
    # Rich may wrap long sentences; compare words, not line breaks.
    return result.exit_code, " ".join(result.output.split())


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _bank_variant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (POLICIES / "bank.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1
    return _write(tmp_path, name, text.replace(old, new))


def test_lint_shipped_files_exit_zero() -> None:
    files = [str(POLICIES / f"{name}.yaml") for name in ("default", "bank", "telco", "retailer")]
    code, out = _run("lint", *files)
    assert code == 0, out
    assert out.count("ok, no problems found") == 4


def test_lint_error_exits_one_with_file_and_line(tmp_path: Path) -> None:
    bad = _bank_variant(tmp_path, "bad.yaml", "min_participants: 3", "min_participants: 2")
    line = bad.read_text().splitlines().index("min_participants: 2") + 1
    code, out = _run("lint", str(POLICIES / "bank.yaml"), str(bad))
    assert code == 1
    assert f'error: {bad}, line {line}: "min_participants" must be at least 3' in out
    assert "has errors" in out


def test_lint_warning_alone_exits_zero_unless_strict(tmp_path: Path) -> None:
    loose = _bank_variant(tmp_path, "loose.yaml", "min_cohort_size: 25", "min_cohort_size: 5")
    code, out = _run("lint", str(loose))
    assert code == 0
    assert "warning:" in out and "easy to single out" in out
    code, _ = _run("lint", "--strict", str(loose))
    assert code == 1


def test_lint_json(tmp_path: Path) -> None:
    bad = _bank_variant(tmp_path, "bad.yaml", "delta: 1.0e-7", "delta: 0.5")
    result = runner.invoke(_root, ["policy", "lint", "--json", str(bad)])
    assert result.exit_code == 1
    [report] = json.loads(result.stdout)
    line = bad.read_text().splitlines().index("  delta: 0.5") + 1
    assert report["ok"] is False and report["errors"][0]["line"] == line
    assert "delta" in report["errors"][0]["message"]


def test_lint_missing_file_is_an_error(tmp_path: Path) -> None:
    code, out = _run("lint", str(tmp_path / "none.yaml"))
    assert code == 1 and "does not exist" in out


def test_diff_groups_changes(tmp_path: Path) -> None:
    old = _bank_variant(tmp_path, "old.yaml", "  - overlap\n", "")
    code, out = _run("diff", str(old), str(POLICIES / "bank.yaml"))
    assert code == 0, out
    assert "looser" in out and "analysis overlap now allowed" in out
    assert "1 change(s): 1 looser, 0 stricter, 0 neutral" in out


def test_diff_json_and_fail_if_looser(tmp_path: Path) -> None:
    new = _bank_variant(tmp_path, "new.yaml", "min_cohort_size: 25", "min_cohort_size: 30")
    result = runner.invoke(_root, ["policy", "diff", "--json", str(POLICIES / "bank.yaml"), str(new)])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["changes"] == [
        {
            "direction": "stricter",
            "key": "min_cohort_size",
            "message": "min_cohort_size raised from 25 to 30: stricter",
        }
    ]
    code, _ = _run("diff", "--fail-if-looser", str(POLICIES / "bank.yaml"), str(new))
    assert code == 0
    code, _ = _run("diff", "--fail-if-looser", str(new), str(POLICIES / "bank.yaml"))
    assert code == policy_cmd.EXIT_LOOSER


def test_diff_same_file_says_no_changes() -> None:
    code, out = _run("diff", str(POLICIES / "telco.yaml"), str(POLICIES / "telco.yaml"))
    assert code == 0 and "no changes" in out


@pytest.mark.parametrize("which", ["old", "new"])
def test_diff_with_a_broken_file_is_one_sentence(tmp_path: Path, which: str) -> None:
    bad = _bank_variant(tmp_path, "bad.yaml", "epsilon_per_job: 0.5", "epsilon_per_job: one")
    args = (
        [str(bad), str(POLICIES / "bank.yaml")] if which == "old" else [str(POLICIES / "bank.yaml"), str(bad)]
    )
    result = runner.invoke(_root, ["policy", "diff", *args])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert message.startswith(f"error: {bad}, line ")
    assert '"epsilon_per_job" must be a number (got the text "one")' in message
