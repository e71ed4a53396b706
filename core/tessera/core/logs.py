"""Log setup for the long-running processes: one line per event, UTC, key=value or JSON.

Callers log identifiers (job ids, node names, codes, counts) — never values, PII or key material.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's type only: a message could carry a value.
            doc["exc"] = record.exc_info[0].__name__
        return json.dumps(doc, sort_keys=True)


class _OneLineForLibraries(logging.Filter):
    """gRPC logs every malformed request with a full traceback (``Exception deserializing request!``):
    one line with the exception's type is enough, and a traceback could quote request bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("grpc") and record.exc_info and record.exc_info[0] is not None:
            message = record.getMessage()
            record.msg = f"{message} ({record.exc_info[0].__name__})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(*, level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        stream: TextIO = sys.stderr
        handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(_OneLineForLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic announces every migration step at INFO; keep the coordinator log about the coordinator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
