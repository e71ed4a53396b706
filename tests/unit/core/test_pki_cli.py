"""The `tessera pki` commands: happy path, and one-sentence errors with exit code 1."""

from __future__ import annotations

import warnings
from pathlib import Path

from tessera.core import pki

# typer 0.20.1 touches click.utils names that click 8.5 deprecates; the warning fires at import
# and would fail collection under filterwarnings=error (reported to the lead).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="typer")
    warnings.filterwarnings("ignore", message=".*click.*deprecated", category=DeprecationWarning)
    import typer
    from typer.testing import CliRunner

    from tessera.cli import pki_cmd

runner = CliRunner()
root = typer.Typer()
root.add_typer(pki_cmd.app, name="pki")


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(root, ["pki", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.output


def test_init_issue_revoke_list(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    assert _run("init", "--dir", d, "--consortium", "acme")[0] == 0
    assert _run("issue", "--dir", d, "--kind", "node", "--name", "bank-1")[0] == 0
    code, _ = _run("issue", "--dir", d, "--kind", "coordinator", "--name", "co", "--host", "c.example")
    assert code == 0
    assert _run("issue", "--dir", d, "--kind", "analyst", "--name", "ann", "--role", "auditor")[0] == 0
    assert _run("revoke", "--dir", d, "--kind", "node", "--name", "bank-1")[0] == 0
    code, out = _run("list", "--dir", d)
    assert code == 0
    assert "revoked" in out and "auditor" in out and "coordinator" in out
    assert {i.name: i.revoked for i in pki.list_certs(Path(d))} == {"co": False, "bank-1": True, "ann": False}


def test_errors_are_one_sentence_exit_1(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    _run("init", "--dir", d)
    cases = [
        (("init", "--dir", d), "already exists"),
        (("issue", "--dir", d, "--kind", "node", "--name", "a b"), "letters, digits"),
        (("issue", "--dir", d, "--kind", "node", "--name", "n", "--role", "admin"), "carry a role"),
        (("issue", "--dir", d, "--kind", "node", "--name", "n", "--host", "h"), "coordinator"),
        (("revoke", "--dir", d, "--kind", "node", "--name", "ghost"), "no node certificate"),
        (("list", "--dir", str(tmp_path / "none")), "no CA"),
    ]
    for args, fragment in cases:
        code, out = _run(*args)
        assert code == 1, args
        assert fragment in " ".join(out.split()), args
        assert "Traceback" not in out
