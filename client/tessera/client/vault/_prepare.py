"""The pure, parallelisable part of ingestion: parse, standardise and blind-index a chunk of rows.

``prepare_chunk`` takes raw rows and returns typed records, their identifier indexes, row errors and
per-column counts. It touches no database, so chunks can run in worker processes (the blind-index
key is passed with each chunk and lives only in that process's memory). Parsing phone numbers
dominates ingestion cost, which is why this is the part that runs on every core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TypeVar
from zoneinfo import ZoneInfo

from tessera.client.vault.identity import IdentityIndex
from tessera.client.vault.mapping import Mapping
from tessera.client.vault.normalise import BadValue, Value, parse_value
from tessera.client.vault.quality import RowError

RawRow = tuple[int, list[str | None] | None]
SAMPLE = 500
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Prepared:
    """One chunk's outcome; ``records``/``keyed`` hold only rows without errors."""

    records: list[tuple[int, dict[str, Value]]] = field(default_factory=list)
    keyed: list[list[tuple[str, str]]] = field(default_factory=list)  # (kind, index hex) per record
    errors: list[RowError] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)  # per column: present, missing, invalid
    rows: int = 0
    samples: dict[int, list[str]] = field(default_factory=dict)  # raw non-empty values per column


def prepare_chunk(
    mapping: Mapping, width: int, rows: list[RawRow], index_key: bytes | None, sample: tuple[int, ...] = ()
) -> Prepared:
    """Parse ``rows`` (values already in mapping order); index identifiers when ``index_key`` is
    given; keep up to ``SAMPLE`` raw values of the ``sample`` columns (for the PII check, which must
    see the text as written: a phone number in an int column parses as a plain number)."""
    zone = ZoneInfo(mapping.timezone)
    identity = IdentityIndex(index_key) if index_key is not None else None
    out = Prepared(counts=[[0, 0, 0] for _ in mapping.columns])
    identifiers = [(c.field, c.identifier) for c in mapping.columns if c.identifier]
    out.samples = {i: [] for i in sample}
    for number, values in rows:
        out.rows += 1
        if values is not None:
            for i, kept in out.samples.items():
                raw = values[i]
                if raw and raw.strip() and len(kept) < SAMPLE:
                    kept.append(raw)
        if values is None:
            out.errors.append(
                RowError(number, None, f"has a different number of fields than the {width} in the header")
            )
            continue
        record: dict[str, Value] = {}
        bad = False
        for position, col in enumerate(mapping.columns):
            try:
                value = parse_value(col, values[position], zone=zone, default_region=mapping.default_region)
            except BadValue as problem:
                if col.on_invalid == "missing":
                    out.counts[position][2] += 1
                else:
                    out.errors.append(RowError(number, col.source, problem.reason))
                    bad = True
                continue
            out.counts[position][0 if value is not None else 1] += 1
            record[col.field] = value
        keys = [(kind, str(record[f])) for f, kind in identifiers if record.get(f) is not None]
        if not keys:
            out.errors.append(
                RowError(number, None, "no identifier (customer_id, email, phone or national id) is given")
            )
            bad = True
        if bad:
            continue
        out.records.append((number, record))
        if identity is not None:
            out.keyed.append([(kind, identity.index(kind, text)) for kind, text in keys])
    return out


def bounded_map(
    executor: Executor | None, fn: Callable[..., R], chunks: Iterable[tuple[object, ...]], *, window: int
) -> Iterator[R]:
    """``fn(*chunk)`` for each chunk, results in order, at most ``window`` chunks in flight (memory
    stays bounded for large files). Without an executor, runs in this process."""
    if executor is None:
        for args in chunks:
            yield fn(*args)
        return
    pending: list[Future[R]] = []
    for args in chunks:
        pending.append(executor.submit(fn, *args))
        if len(pending) >= window:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()
