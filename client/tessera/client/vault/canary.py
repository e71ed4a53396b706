"""Canary scans: prove that distinctive PII values appear nowhere in a node's state at rest.

``find_canaries`` looks for each canary (as UTF-8 and as UTF-16-LE bytes, case-insensitive for
ASCII) in every file under a directory and in every text or binary column of every table of a
database. It returns where each was found — locations only, never the canary itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa


def _needles(canaries: Iterable[str]) -> list[bytes]:
    out: list[bytes] = []
    for canary in canaries:
        out.extend({canary.lower().encode("utf-8"), canary.encode("utf-16-le").lower()})
    return [n for n in out if n]


def scan_files(root: Path, canaries: Iterable[str]) -> list[str]:
    needles = _needles(canaries)
    hits: list[str] = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            data = path.read_bytes().lower()
            hits.extend(f"file {path} (canary {i})" for i, n in enumerate(needles) if n in data)
    return hits


def scan_database(engine: sa.Engine, canaries: Iterable[str]) -> list[str]:
    needles = _needles(canaries)
    if not needles:
        return []
    # One alternation, searched once per cell: linear in the data, not in data times canaries.
    pattern = re.compile(b"|".join(re.escape(n) for n in sorted(set(needles), key=len, reverse=True)))
    hits: set[str] = set()
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for column, value in zip(table.columns, row, strict=True):
                    where = f"{table.name}.{column.name}"
                    if where in hits:
                        continue
                    data = value if isinstance(value, bytes | memoryview) else str(value).encode("utf-8")
                    if pattern.search(bytes(data).lower()):
                        hits.add(where)
    return sorted(hits)


def find_canaries(engine: sa.Engine | None, root: Path | None, canaries: Iterable[str]) -> list[str]:
    """Every place (file or table.column) holding any canary; empty when the state is clean."""
    values = list(canaries)
    hits = scan_files(root, values) if root is not None else []
    return hits + (scan_database(engine, values) if engine is not None else [])
