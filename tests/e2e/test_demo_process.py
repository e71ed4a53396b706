"""`tessera demo` as a user runs it: real processes, real mTLS, a clean stop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from processes import port_is_free, processes_mentioning

pytestmark = pytest.mark.slow


def test_demo_runs_a_federation_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "demo", "--nodes", "3", "--out", str(out), "--rows", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["ok"] is True
    (inventory,) = [j for j in results["jobs"] if j["analysis"] == "inventory"]
    assert inventory["status"] == "succeeded"
    assert sorted(inventory["result"]["nodes"]) == ["bank", "retailer", "telco"]
    assert processes_mentioning(str(out)) == []
    assert port_is_free(int((out / "coordinator" / "port").read_text()))


def test_demo_refuses_too_few_nodes_and_a_foreign_folder(tmp_path: Path) -> None:
    few = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "demo", "--nodes", "2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert few.returncode != 0 and "at least 3" in few.stderr and "Traceback" not in few.stderr
    (tmp_path / "precious.txt").write_text("keep me")
    foreign = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "demo", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert foreign.returncode != 0 and "not empty" in foreign.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
