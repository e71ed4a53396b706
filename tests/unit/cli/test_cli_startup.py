"""The CLI starts without the heavy libraries: `tessera --help` and the help of the analyst and node
commands import no gRPC, SQLAlchemy, numpy or cryptography (each costs a large part of a second);
the commands that use them import them when they run. Timed in scripts/bench_cli_startup.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

HEAVY = ("grpc", "sqlalchemy", "numpy", "cryptography", "google.protobuf", "yaml", "pydantic")


def _imported_after(code: str) -> list[str]:
    report = f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    probe = f"import sys\n{code}\nimport json\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "module",
    ["tessera.cli.main", "tessera.cli.job_cmd", "tessera.cli.node_cmd", "tessera.cli.coordinator_cmd"],
)
def test_importing_the_cli_pulls_in_no_heavy_library(module: str) -> None:
    assert _imported_after(f"import {module}") == []


@pytest.mark.parametrize("args", [["--help"], ["job", "list", "--help"], ["node", "--help"]])
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    code = (
        "from typer.testing import CliRunner\nfrom tessera.cli.main import app\n"
        f"result = CliRunner().invoke(app, {args!r})\nassert result.exit_code == 0, result.output"
    )
    assert _imported_after(code) == []


def test_every_listed_command_loads_and_has_help() -> None:
    from tessera.cli.main import app

    out = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    for name in (
        "pki",
        "policy",
        "coordinator",
        "node",
        "job",
        "nodes",
        "audit",
        "budget",
        "analyses",
        "demo",
    ):
        assert f" {name} " in out
        result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0 and "Usage: " in result.output, (name, result.output)
    for name in ("init", "ingest", "quality", "egress", "budget", "merges", "serve", "clv", "segments"):
        result = CliRunner().invoke(app, ["node", name, "--help"], terminal_width=200)
        assert result.exit_code == 0 and f"tessera node {name}" in result.output, (name, result.output)
