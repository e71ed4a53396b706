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
    code, out = _run("issue", "--dir", d, "--kind", "coordinator", "--name", "co", "--host", "c.example")
    assert code == 0 and "valid for c.example only" in out
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


def test_request_and_sign_keep_the_key_on_the_node(tmp_path: Path) -> None:
    ca, node = str(tmp_path / "ca"), tmp_path / "node"
    assert _run("init", "--dir", ca, "--consortium", "acme")[0] == 0
    code, out = _run("request", "--dir", str(node), "--kind", "node", "--name", "bank")
    assert code == 0 and "stays on this machine" in out, out
    key, csr = node / "nodes" / "bank.key", node / "nodes" / "bank.csr"
    assert key.stat().st_mode & 0o077 == 0 and csr.exists()
    code, out = _run("sign", "--dir", ca, "--csr", str(csr), "--out", str(node / "nodes" / "bank.pem"))
    assert code == 0, out
    assert not (tmp_path / "ca" / "nodes" / "bank.key").exists()  # the CA never saw a key
    (node / "ca.pem").write_bytes((tmp_path / "ca" / "ca.pem").read_bytes())
    loaded = pki.load_tls(pki.TlsFiles.for_identity(node, "node", "bank"))
    assert (loaded.identity.kind, loaded.identity.name) == ("node", "bank")
    # The CA lists it and can revoke it like any other.
    assert _run("revoke", "--dir", ca, "--kind", "node", "--name", "bank")[0] == 0
    # A request signed twice, a tampered request, --host on a node: one sentence each.
    assert "already issued" in _run("sign", "--dir", ca, "--csr", str(csr))[1]
    assert (
        "coordinator certificates only"
        in _run("sign", "--dir", ca, "--csr", str(csr), "--force", "--host", "x")[1]
    )
    text = csr.read_text().splitlines()
    text[3] = text[3][:10] + ("A" if text[3][10] != "A" else "B") + text[3][11:]
    csr.write_text("\n".join(text) + "\n")
    code, out = _run("sign", "--dir", ca, "--csr", str(csr), "--force")
    assert code == 1 and ("not signed by its own key" in out or "not a PEM" in out), out
    # An analyst request keeps its role.
    _run("request", "--dir", str(node), "--kind", "analyst", "--name", "ann", "--role", "auditor")
    code, out = _run("sign", "--dir", ca, "--csr", str(node / "analysts" / "ann.csr"))
    assert code == 0 and "analyst certificate" in out
