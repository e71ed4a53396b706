"""The pure, parallelisable part of ingestion: parse, standardise and blind-index a chunk of rows.

``prepare_chunk`` takes raw rows and returns typed records, their identifier indexes, row errors and
per-column counts; for transactions and events also each row's storable fields and content
fingerprint. It touches no database, so chunks can run in worker processes (the blind-index key is
passed with each chunk and lives only in that process's memory). Parsing phone numbers dominates
ingestion cost, which is why this is the part that runs on every core.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from tessera.client.vault.identity import IdentityIndex, fold_text
from tessera.client.vault.mapping import Mapping, MatchRule
from tessera.client.vault.normalise import BadValue, Value, parse_value, text_of
from tessera.client.vault.quality import RowError

RawRow = tuple[int, list[str | None] | None]
SAMPLE = 500
# Counted per column, in this order (FieldQuality has the same fields).
PRESENT, MISSING, INVALID, FORMULAS, FUTURE = range(5)
# A value a spreadsheet would run as a formula when an export of the vault is opened: "=…", "@…",
# or "+"/"-" followed by a function call ("+HYPERLINK(…)"); plain signed numbers and phones pass.
_FORMULA = re.compile(r"^\s*(?:[=@]|[+-]\s*[A-Za-z_][\w.]*\s*\()")
FUTURE_SLACK = timedelta(days=1)  # time zones and clocks a little ahead are not "the future"
T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Prepared:
    """One chunk's outcome; ``records``/``keyed`` hold only rows without errors. With an index key,
    a fact's record is empty and its ``keyed`` entry names only its customer reference."""

    records: list[tuple[int, dict[str, Value]]] = field(default_factory=list)
    # (kind, index hex) per record: for customers its One ID match keys, for facts its reference.
    keyed: list[list[tuple[str, str]]] = field(default_factory=list)
    # Customers: indexes of identifiers outside every one-field match rule (lookup only, never merge).
    lookups: list[list[tuple[str, str]]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    # Accepted but flagged in the quality report (formulas, dates in the future): row, column, why.
    warnings: list[RowError] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)  # per column: PRESENT … FUTURE
    rows: int = 0
    samples: dict[int, list[str]] = field(default_factory=dict)  # raw non-empty values per column
    # Facts only (with an index key): (fingerprint, storable fields) per record; the customer
    # reference is ``keyed[i][0][1]``.
    facts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def after(self, row: int) -> Prepared:
        """The part of this chunk after source row ``row`` (a resumed ingest skips committed rows)."""
        if not self.records or self.records[0][0] > row:
            return self
        keep = [i for i, (number, _) in enumerate(self.records) if number > row]
        return Prepared(
            records=[self.records[i] for i in keep],
            keyed=[self.keyed[i] for i in keep] if self.keyed else [],
            lookups=[self.lookups[i] for i in keep] if self.lookups else [],
            errors=self.errors,
            warnings=self.warnings,
            counts=self.counts,
            rows=len(keep),
            samples=self.samples,
            facts=[self.facts[i] for i in keep] if self.facts else [],
        )

    def forget_samples(self) -> None:
        self.samples = {}


def fingerprint(parts: Iterable[object]) -> str:
    """Content key of a fact row: 128 bits of SHA-256 over length-prefixed parts (``None`` = 0x00)."""
    hasher = hashlib.sha256(b"tessera.vault.fact.v1")
    for part in parts:
        data = text_of(part).encode("utf-8") if part is not None else b"\x00"  # type: ignore[arg-type]
        hasher.update(len(data).to_bytes(4, "big") + data)
    return hasher.hexdigest()[:32]  # collisions are out of reach, the index stays small


def fact_row(dataset: str, ref: str, values: dict[str, Value]) -> tuple[str, dict[str, Any]]:
    """(fingerprint, columns) of a transaction or event whose customer reference index is ``ref``."""
    record: dict[str, Any]
    if dataset == "transactions":
        amount = values.get("amount")
        record = {
            "time": values.get("time"),
            "channel": values.get("channel"),
            "category": values.get("category"),
            "amount_e4": None if amount is None else int(Decimal(str(amount)).scaleb(4)),
        }
        return fingerprint([ref, values.get("transaction_id"), *record.values()]), record
    record = {"time": values.get("time"), "event_type": values.get("event_type")}
    return fingerprint([ref, values.get("event_id"), *record.values()]), record


def prepare_chunk(
    mapping: Mapping, width: int, rows: list[RawRow], index_key: bytes | None, sample: tuple[int, ...] = ()
) -> Prepared:
    """Parse ``rows`` (values already in mapping order); index identifiers when ``index_key`` is
    given; keep up to ``SAMPLE`` raw values of the ``sample`` columns (for the PII check, which must
    see the text as written: a phone number in an int column parses as a plain number)."""
    zone = ZoneInfo(mapping.timezone)
    identity = IdentityIndex(index_key) if index_key is not None else None
    out = Prepared(counts=[[0, 0, 0, 0, 0] for _ in mapping.columns])
    horizon = datetime.now(UTC) + FUTURE_SLACK
    identifiers = [(c.field, c.identifier) for c in mapping.columns if c.identifier]
    rules = mapping.rules()
    alone = {r.kind for r in rules if r.kind != "combined"}
    kinds = dict(identifiers)
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
            counts = out.counts[position]
            counts[PRESENT if value is not None else MISSING] += 1
            record[col.field] = value
            if value is None:
                continue
            raw = values[position] or ""
            if raw[:1] in "=@+- \t" and _FORMULA.match(raw):
                counts[FORMULAS] += 1
                out.warnings.append(RowError(number, col.source, "looks like a spreadsheet formula"))
            elif isinstance(value, datetime) and value > horizon:
                counts[FUTURE] += 1
                out.warnings.append(RowError(number, col.source, "is a date in the future"))
        keys = [(kind, str(record[f])) for f, kind in identifiers if record.get(f) is not None]
        if not keys:
            out.errors.append(
                RowError(number, None, "no identifier (customer_id, email, phone or national id) is given")
            )
            bad = True
        complete = [r for r in rules if all(record.get(f) is not None for f in r.fields)]
        if keys and rules and not complete:
            out.errors.append(
                RowError(
                    number,
                    None,
                    "no One ID match rule is complete ("
                    + "; ".join(r.label for r in rules)
                    + "): the row cannot be told apart from other customers",
                )
            )
            bad = True
        if bad:
            continue
        if identity is None:
            out.records.append((number, record))
            continue
        if mapping.dataset == "customers":
            out.records.append((number, record))
            out.keyed.append([_match_key(identity, rule, record, kinds) for rule in complete])
            out.lookups.append(
                [(kind, identity.index(kind, text)) for kind, text in keys if kind not in alone]
            )
            continue
        indexes = [(kind, identity.index(kind, text)) for kind, text in keys]
        # A fact needs only its reference and storable columns from here on: the values stay
        # behind so the chunk costs less to send back from a worker and to keep in memory.
        out.records.append((number, {}))
        out.keyed.append(indexes[:1])
        out.facts.append(fact_row(mapping.dataset, indexes[0][1], record))
    return out


def _match_key(
    identity: IdentityIndex, rule: MatchRule, record: dict[str, Value], kinds: dict[str, str]
) -> tuple[str, str]:
    """(kind, index) of one complete match rule; identifiers are already standardised."""
    if rule.kind != "combined":
        return rule.kind, identity.index(rule.kind, str(record[rule.fields[0]]))
    texts = [str(record[f]) if f in kinds else fold_text(text_of(record[f])) for f in rule.fields]
    return "combined", identity.combined(rule.fields, texts)


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
