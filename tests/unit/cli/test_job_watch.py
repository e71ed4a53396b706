"""`tessera job submit --watch`: exits non-zero when the job did not succeed, and its progress bar
ends full on success (the coordinator's last event carries no count)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
from typer.testing import CliRunner

from tessera.cli import job_cmd
from tessera.cli.main import app
from tessera.core.types import JobSpec
from tessera.v1 import analyst_pb2, common_pb2


def _event(state: int, message: str, done: int = 0, expected: int = 0) -> analyst_pb2.JobEvent:
    event = analyst_pb2.JobEvent(job_id="j1", state=state, message=message, done=done, expected=expected)
    event.at.GetCurrentTime()
    return event


class _FakeClient:
    def __init__(self, final: int) -> None:
        self.final = final

    def __enter__(self) -> _FakeClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def submit(self, spec: JobSpec) -> str:
        return "j1"

    def watch(self, job_id: str) -> Iterator[analyst_pb2.JobEvent]:
        running = common_pb2.JOB_STATE_RUNNING
        yield _event(running, "round 1: asked 3 node(s)", 0, 3)
        yield _event(running, "2 of 3 node(s) answered", 2, 3)
        yield _event(self.final, "the end")


def _submit(monkeypatch: pytest.MonkeyPatch, pki_dir: Path, final: int) -> tuple[int, str]:
    monkeypatch.setattr(job_cmd, "_client", lambda *args: _FakeClient(final))
    args = ["job", "submit", "--pki", str(pki_dir), "--analysis", "inventory", "--watch"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    return result.exit_code, result.output


def test_a_failed_job_makes_submit_exit_non_zero(monkeypatch: pytest.MonkeyPatch, pki_dir: Path) -> None:
    code, out = _submit(monkeypatch, pki_dir, common_pb2.JOB_STATE_FAILED)
    assert code == 1 and "job j1 failed" in out


def test_a_succeeded_job_ends_with_a_full_bar(monkeypatch: pytest.MonkeyPatch, pki_dir: Path) -> None:
    code, out = _submit(monkeypatch, pki_dir, common_pb2.JOB_STATE_SUCCEEDED)
    assert code == 0 and "job j1 succeeded" in out
    assert "3/3" in out and "2/3" not in out.splitlines()[-2]
