"""Log lines (issue 12, item 15): a malformed request costs one line, not a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core.logs import configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_library_traceback_becomes_one_line(tmp_path: Path, fmt: str, restore_root: None) -> None:
    log = tmp_path / "coordinator.log"
    configure_logging(fmt=fmt, file=log)
    try:
        b"\xff\xfe".decode("utf-8")
    except UnicodeDecodeError:
        # What grpc._common does with a request it cannot deserialize.
        logging.getLogger("grpc._common").exception("Exception deserializing request!")
        logging.getLogger("tessera.coordinator").exception("our own failure")
    lines = log.read_text().splitlines()
    grpc_lines = [line for line in lines if "deserializing" in line]
    assert len(grpc_lines) == 1 and "UnicodeDecodeError" in grpc_lines[0]
    assert "Traceback" not in log.read_text().split("our own failure")[0]
