"""Bad input to any command: one plain sentence on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.core import pki

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    # friendly_errors turns expected failures into typer.Exit: anything else is a bug.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in output
    return result.exit_code, output


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_unreachable_coordinator(pki_dir: Path) -> None:
    code, out = _run("nodes", "--pki", str(pki_dir), "--user", "analyst", "--coordinator", "127.0.0.1:1")
    assert code == 1 and "cannot reach the coordinator" in out


def test_missing_certificate(tmp_path: Path) -> None:
    code, out = _run("job", "list", "--pki", str(tmp_path), "--user", "nobody")
    assert code == 1 and "error:" in out


def test_certificate_from_another_ca_is_refused_before_dialling(pki_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    mixed = tmp_path / "mixed"
    (mixed / "analysts").mkdir(parents=True)
    (mixed / "ca.pem").write_bytes((pki_dir / "ca.pem").read_bytes())
    pki.issue(tmp_path / "other", kind="analyst", name="eve", role="analyst")
    for suffix in ("pem", "key"):
        src = tmp_path / "other" / "analysts" / f"eve.{suffix}"
        (mixed / "analysts" / f"eve.{suffix}").write_bytes(src.read_bytes())
    code, out = _run("nodes", "--pki", str(mixed), "--user", "eve", "--coordinator", "127.0.0.1:1")
    assert code == 1 and "not issued by this consortium" in out


def test_port_in_use(pki_dir: Path, tmp_path: Path, busy_port: int) -> None:
    code, out = _run(
        "coordinator",
        "serve",
        "--pki",
        str(pki_dir),
        "--listen",
        f"127.0.0.1:{busy_port}",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert code == 1 and "port is in use" in out


def test_bad_policy_yaml_and_missing_policy(pki_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npolicy_id: [unclosed\n")
    code, out = _run(
        "node",
        "serve",
        "--pki",
        str(pki_dir),
        "--name",
        "bank",
        "--policy",
        str(bad),
        "--state-dir",
        str(tmp_path / "state"),
        "--data",
        f"customers={tmp_path / 'c.csv'}",
    )
    assert code == 1 and "bad.yaml" in out
    code, out = _run(
        "node",
        "serve",
        "--pki",
        str(pki_dir),
        "--name",
        "bank",
        "--policy",
        str(tmp_path / "missing.yaml"),
        "--state-dir",
        str(tmp_path / "state"),
        "--data",
        f"customers={tmp_path / 'c.csv'}",
    )
    assert code == 1 and "missing.yaml" in out


def test_unclassified_column_stops_the_node(pki_dir: Path, tmp_path: Path) -> None:
    policy = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
    csv = tmp_path / "customers.csv"
    csv.write_text("customer_id,email,favourite_colour\n1,a@example.com,blue\n")
    code, out = _run(
        "node",
        "serve",
        "--pki",
        str(pki_dir),
        "--name",
        "bank",
        "--policy",
        str(policy),
        "--state-dir",
        str(tmp_path / "state"),
        "--data",
        f"customers={csv}",
    )
    assert code == 1 and "favourite_colour" in out and "bank.yaml" in out


def test_bad_data_option(pki_dir: Path, tmp_path: Path) -> None:
    policy = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
    code, out = _run(
        "node",
        "serve",
        "--pki",
        str(pki_dir),
        "--name",
        "bank",
        "--policy",
        str(policy),
        "--state-dir",
        str(tmp_path / "state"),
        "--data",
        "customers",
    )
    assert code == 1 and "NAME=PATH" in out


def test_a_node_refuses_to_serve_another_partners_policy(pki_dir: Path, tmp_path: Path) -> None:
    code, out = _run(
        "node",
        "serve",
        "--pki",
        str(pki_dir),
        "--name",
        "telco",
        "--policy",
        "policies/bank.yaml",
        "--state-dir",
        str(tmp_path),
    )
    assert code == 1 and "is for partner 'bank' but this node's certificate names 'telco'" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("coordinator", "serve", "--listen", "127.0.0.1:99999"),
            "--listen: port 99999 is out of range (0 to 65535)",
        ),
        (("coordinator", "serve", "--listen", "localhost"), "--listen expects HOST:PORT"),
        (
            ("nodes", "--coordinator", "127.0.0.1:70000"),
            "--coordinator: port 70000 is out of range (1 to 65535)",
        ),
    ],
)
def test_an_address_out_of_range_is_refused_not_served_elsewhere(
    pki_dir: Path, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    code, out = _run(*args, "--pki", str(pki_dir))
    assert code == 1 and expected in out


@pytest.mark.parametrize("grace", ["0", "-1", "601"])
def test_a_stream_grace_out_of_range_is_refused(pki_dir: Path, grace: str) -> None:
    code, out = _run("coordinator", "serve", "--stream-grace", grace, "--pki", str(pki_dir))
    assert code == 1 and "--stream-grace is in seconds, above 0 and at most 600" in out
