"""Ingestion: source rows -> mapping -> standardised values -> the vault (DESIGN §2, issue items 2-6).

Two passes over the source. The first parses and standardises every row without writing; any bad
row rejects the whole ingest (:class:`IngestRejected`, every bad row listed with its number and
reason, never its value) and a column classified below ``core_sensitive`` whose values look like
PII is refused (:class:`PolicyViolation`) unless the policy sets ``pii_override`` for it. The second
pass writes batches of ``batch_size`` rows; each batch commits together with a checkpoint in
``vault_ingest_run`` keyed by (source digest, mapping), so an interrupted ingest resumes after the
last committed batch, and a finished one is not repeated.

Costs: one read for the digest and one parse per row: the first pass keeps its standardised,
blind-indexed (and, for facts, fingerprinted) chunks for the second while they fit ``keep_rows``
rows (about 2 KB each); rows beyond that budget are parsed again. Per customer one AES-GCM
encryption per core-sensitive value and one HMAC per identifier. With ``workers > 1`` the parsing,
indexing and fingerprinting of chunks runs in that many processes while this process encrypts and
writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.vault import _bulk, _writer
from tessera.client.vault._model import IngestRun
from tessera.client.vault._prepare import Prepared, RawRow, bounded_map, fact_row, prepare_chunk
from tessera.client.vault.crypto import FieldCipher
from tessera.client.vault.identity import IdentityIndex
from tessera.client.vault.mapping import Mapping
from tessera.client.vault.normalise import Value
from tessera.client.vault.pii import looks_like_pii
from tessera.client.vault.quality import MAX_LISTED, FieldQuality, IngestReport, RowError
from tessera.client.vault.sources import Source
from tessera.core.errors import ConfigError, InvalidRequest, PolicyViolation
from tessera.core.policy import Policy
from tessera.core.types import Tier

PII_SAMPLE = 500
KEEP_ROWS = 250_000  # default memory budget of kept first-pass rows (~0.5 GB at the widest)
_REF_CACHE = 500_000  # customer references remembered per ingest (facts name the same customers often)
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class IngestRejected(InvalidRequest):
    """The batch had bad rows; nothing was written. ``report`` lists the rows and reasons."""

    code = "ingest.rejected"

    def __init__(self, message: str, report: IngestReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True, slots=True)
class VaultHandle:
    """What ingestion needs from an open vault (``index_key`` is the blind-index key)."""

    engine: sa.Engine
    cipher: FieldCipher
    identity: IdentityIndex
    policy: Policy
    index_key: bytes = b""


def _layout(policy: Policy, mapping: Mapping) -> _writer.Layout:
    tiers = {c.field: policy.tier_of(mapping.dataset, c.field) for c in mapping.columns}
    pii = frozenset(f for f, t in tiers.items() if t is Tier.CORE_SENSITIVE)
    columns: set[str] = set()
    attributes: dict[str, str] = {}
    if mapping.dataset == "customers":
        for col in mapping.columns:
            if col.field in pii:
                continue
            if col.type in _writer.CUSTOMER_COLUMNS.get(col.field, ()):
                columns.add(col.field)
            else:
                attributes[col.field] = _writer.attribute_kind(col.type)
    identifiers = tuple((c.field, c.identifier) for c in mapping.columns if c.identifier)
    return _writer.Layout(pii, identifiers, frozenset(columns), attributes)


def check_columns(source: Source, mapping: Mapping) -> None:
    missing = [c for c in mapping.sources if c not in source.columns]
    if missing:
        raise ConfigError(
            f"the mapping names column(s) {', '.join(missing)} that {source.label} does not have"
        )
    unknown = [c for c in source.columns if c not in mapping.sources]
    if unknown:
        raise ConfigError(
            f"{source.label} has column(s) {', '.join(unknown)} that the mapping does not name; "
            "add them to the mapping (and classify them in the policy) or remove them"
        )


class Ingestor:
    """Runs ingests into one vault.

    ``on_start(rows)`` is called once validation passed, ``on_progress(rows_done)`` after each
    committed batch; ``workers`` processes parse and index chunks (1 = all in this process).
    """

    def __init__(
        self,
        vault: VaultHandle,
        *,
        clock: Clock = _utcnow,
        batch_size: int = 2000,
        workers: int = 1,
        on_progress: Callable[[int], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        keep_rows: int = KEEP_ROWS,
    ) -> None:
        if batch_size < 1 or workers < 1 or keep_rows < 0:
            raise ValueError("batch_size and workers must be at least 1, keep_rows at least 0")
        self.keep_rows = keep_rows
        self.vault = vault
        self.clock = clock
        self.batch_size = batch_size
        self.workers = workers
        self.on_progress = on_progress
        self.on_start = on_start
        self._sessions = sessionmaker(vault.engine, expire_on_commit=False)
        self._refs: dict[str, int] = {}

    def ingest(self, source: Source, mapping: Mapping) -> IngestReport:
        check_columns(source, mapping)
        layout = _layout(self.vault.policy, mapping)
        # The policy hash is part of the key: re-ingesting under changed tiers is a new run.
        digest = f"{mapping.dataset}\0{source.digest()}\0{mapping.digest()}\0{self.vault.policy.policy_hash}"
        run_id = hashlib.sha256(digest.encode()).hexdigest()
        with self._sessions.begin() as session:
            run = session.get(IngestRun, run_id)
            if run is not None and run.status == "done":
                return _already_ingested(IngestReport.from_dict(json.loads(run.report or "{}")))
            skip = run.rows_done if run is not None else 0
        self._refs = {}
        executor: Executor | None = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            report, kept = self._validate(source, mapping, executor)
            if self.on_start is not None:
                self.on_start(report.rows_read)
            self._write(source, mapping, layout, executor, kept, run_id=run_id, skip=skip, report=report)
        finally:
            if executor is not None:
                executor.shutdown(cancel_futures=True)
        return report

    # -- shared ------------------------------------------------------------------------------------

    def _chunks(
        self, source: Source, mapping: Mapping, skip: int, *, sample: tuple[int, ...] = ()
    ) -> Iterator[tuple[object, ...]]:
        order = [source.columns.index(c) for c in mapping.sources]
        width = len(source.columns)
        key = self.vault.index_key or None
        rows = source.rows(skip)
        while True:
            raw = list(islice(rows, self.batch_size))
            if not raw:
                return
            batch: list[RawRow] = [(n, None if v is None else [v[i] for i in order]) for n, v in raw]
            yield (mapping, width, batch, key, sample)

    def _prepared(
        self,
        source: Source,
        mapping: Mapping,
        executor: Executor | None,
        skip: int = 0,
        *,
        sample: tuple[int, ...] = (),
    ) -> Iterator[Prepared]:
        chunks = self._chunks(source, mapping, skip, sample=sample)
        return bounded_map(executor, prepare_chunk, chunks, window=2 * self.workers)

    # -- pass 1 ------------------------------------------------------------------------------------

    def _validate(
        self, source: Source, mapping: Mapping, executor: Executor | None
    ) -> tuple[IngestReport, list[Prepared]]:
        """Pass 1: the report, and the leading chunks kept for pass 2 (within ``keep_rows``)."""
        policy = self.vault.policy
        report = IngestReport(dataset=mapping.dataset, source=source.label)
        report.fields = [
            FieldQuality(c.field, policy.tier_of(mapping.dataset, c.field).value) for c in mapping.columns
        ]
        checked = [
            i
            for i, c in enumerate(mapping.columns)
            if policy.tier_of(mapping.dataset, c.field) is not Tier.CORE_SENSITIVE
            and not getattr(policy.dataset(mapping.dataset).field(c.field), "pii_override", False)
        ]
        samples: dict[int, list[str]] = {i: [] for i in checked}
        errors: list[RowError] = []
        kept: list[Prepared] = []
        room, keeping = self.keep_rows, True
        for chunk in self._prepared(source, mapping, executor, sample=tuple(checked)):
            report.rows_read += chunk.rows
            errors.extend(chunk.errors)
            for quality, (present, missing, invalid, formulas, future) in zip(
                report.fields, chunk.counts, strict=True
            ):
                quality.present += present
                quality.missing += missing
                quality.invalid += invalid
                quality.formulas += formulas
                quality.future_dates += future
            report.warnings.extend(chunk.warnings[: MAX_LISTED - len(report.warnings)])
            for i, sample in samples.items():
                sample.extend(chunk.samples.get(i, [])[: PII_SAMPLE - len(sample)])
            if mapping.dataset != "customers" and chunk.records:
                self._resolve(mapping, chunk, errors)
            # Kept only while every earlier chunk was: pass 2 reads the source again after them.
            keeping = keeping and not errors and chunk.rows <= room
            if keeping:
                chunk.forget_samples()
                kept.append(chunk)
                room -= chunk.rows
        report.errors = sorted(errors, key=lambda e: e.row)
        report.rows_rejected = len({e.row for e in errors})
        if report.rows_read == 0:
            raise ConfigError(f"{source.label} has a header but no rows")
        if errors:
            report.status = "rejected"
            listed = "; ".join(e.render() for e in report.errors[:5])
            more = f" (and {len(errors) - 5} more problems)" if len(errors) > 5 else ""
            raise IngestRejected(
                f"{source.label} was rejected and nothing was written: {listed}{more}", report
            )
        self._refuse_pii(mapping, samples)
        return report, kept

    def _refuse_pii(self, mapping: Mapping, samples: dict[int, list[str]]) -> None:
        policy = self.vault.policy
        for i, sample in samples.items():
            kinds = looks_like_pii(sample, default_region=mapping.default_region)
            if kinds:
                col = mapping.columns[i]
                tier = policy.tier_of(mapping.dataset, col.field).value
                where = policy.source or "the node policy"
                raise PolicyViolation(
                    f"column {col.source!r} (field {col.field}, tier {tier}) holds values that look like "
                    f"{' and '.join(sorted(kinds))}; classify {col.field} as core_sensitive, or have a "
                    f"compliance officer set pii_override: true for it, in {where}",
                    code="policy.pii_in_low_tier",
                )

    def _resolve(
        self,
        mapping: Mapping,
        chunk: Prepared,
        errors: list[RowError],
        session: Session | None = None,
        *,
        erased: list[int] | None = None,
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """Find each fact row's customer by the blind index (or a lookup-only identifier that names
        one customer); an unknown customer is a row error, one who was erased is listed in
        ``erased`` (when given) and left out. Returns (customer id, fingerprint, columns) per row."""
        records = chunk.records
        if chunk.keyed:  # indexed in the worker: the first identifier given names the customer
            refs = [indexes[0][1] for indexes in chunk.keyed]
            facts = chunk.facts
        else:
            refs = [self._reference(mapping, record) for _, record in records]
            facts = [fact_row(mapping.dataset, ref, r) for ref, (_, r) in zip(refs, records, strict=True)]
        missing = {r for r in refs if r not in self._refs}
        if missing:
            if len(self._refs) + len(missing) > _REF_CACHE:
                # Evict before fetching, and fetch every reference of this chunk: clearing after
                # the fetch dropped the chunk's already-cached customers and rejected their rows
                # (seen at 1M customers: valid transactions refused from row 690,002 on).
                self._refs.clear()
                missing = set(refs)
            if session is not None:
                found = _find_refs(session, missing)
            else:
                with self._sessions() as own:
                    found = _find_refs(own, missing)
            self._refs.update(found)
        unknown = {r for r in refs if r not in self._refs}
        gone: set[str] = set()
        if unknown:
            tomb = {self.vault.identity.tombstone(r): r for r in unknown}
            if session is not None:
                hit = _writer._erased(session, set(tomb))
            else:
                with self._sessions() as own:
                    hit = _writer._erased(own, set(tomb))
            gone = {tomb[d] for d in hit}
        out = []
        for (number, _), ref, (key, columns) in zip(records, refs, facts, strict=True):
            cid = self._refs.get(ref)
            if cid is None and ref in gone:
                if erased is not None:
                    erased.append(number)
            elif cid is None:
                errors.append(
                    RowError(number, None, "no customer in the vault matches this row's identifier")
                )
            else:
                out.append((cid, key, columns))
        return out

    def _reference(self, mapping: Mapping, record: dict[str, Value]) -> str:
        for col in mapping.columns:
            if col.identifier and record.get(col.field) is not None:
                return self.vault.identity.index(col.identifier, str(record[col.field]))
        raise InvalidRequest("a row names no customer")

    # -- pass 2 ------------------------------------------------------------------------------------

    def _write(
        self,
        source: Source,
        mapping: Mapping,
        layout: _writer.Layout,
        executor: Executor | None,
        kept: list[Prepared],
        *,
        run_id: str,
        skip: int,
        report: IngestReport,
    ) -> None:
        # One connection for the whole pass, tuned for bulk writes (see ``_bulk.bulk_load``).
        with self.vault.engine.connect() as connection, _bulk.bulk_load(connection):
            sessions = sessionmaker(connection, expire_on_commit=False)
            self._write_batches(
                sessions,
                source,
                mapping,
                layout,
                executor,
                kept=kept,
                run_id=run_id,
                skip=skip,
                report=report,
            )

    def _write_batches(
        self,
        sessions: sessionmaker[Session],
        source: Source,
        mapping: Mapping,
        layout: _writer.Layout,
        executor: Executor | None,
        *,
        kept: list[Prepared],
        run_id: str,
        skip: int,
        report: IngestReport,
    ) -> None:
        now = self.clock()
        with sessions.begin() as session:
            run = session.get(IngestRun, run_id)
            if run is None:
                session.add(
                    IngestRun(
                        id=run_id,
                        dataset=mapping.dataset,
                        status="running",
                        rows_done=0,
                        started_at=now,
                        finished_at=None,
                        report=None,
                    )
                )
            elif run.report:
                _add_counts(report, json.loads(run.report))
        changed = ConfigError(f"{source.label} changed while it was being ingested; run the ingest again")
        for chunk in self._pass2(source, mapping, executor, kept, skip):
            if chunk.errors or not chunk.rows:
                raise changed
            errors: list[RowError] = []
            with sessions.begin() as session:
                if mapping.dataset == "customers":
                    counts = _writer.write_customers(
                        session,
                        [r for _, r in chunk.records],
                        chunk.keyed,
                        layout=layout,
                        cipher=self.vault.cipher,
                        now=now,
                        run_id=run_id,
                        numbers=[n for n, _ in chunk.records],
                        lookups=chunk.lookups,
                        tombstone=self.vault.identity.tombstone,
                    )
                else:
                    erased: list[int] = []
                    resolved = self._resolve(mapping, chunk, errors, session, erased=erased)
                    if errors:
                        raise changed
                    counts = _writer.write_facts(session, mapping.dataset, resolved, now=now)
                    counts.erased, counts.erased_rows = len(erased), erased
                report.rows_erased += counts.erased
                report.erased_rows.extend(counts.erased_rows[: MAX_LISTED - len(report.erased_rows)])
                report.merges.extend(counts.merges[: MAX_LISTED - len(report.merges)])
                report.conflicts.extend(counts.conflicts[: MAX_LISTED - len(report.conflicts)])
                report.rows_conflicted += sum(len(c["rows"]) for c in counts.conflicts)
                report.customers_created += counts.created
                report.customers_updated += counts.updated
                report.duplicates_merged += counts.merged
                report.rows_unchanged += counts.unchanged
                report.rows_written += counts.written
                done = chunk.records[-1][0]
                session.execute(
                    sa.update(IngestRun)
                    .where(IngestRun.id == run_id)
                    .values(rows_done=done, report=json.dumps(report.as_dict()))
                )
            if self.on_progress is not None:
                self.on_progress(done)
        with sessions.begin() as session:
            session.execute(
                sa.update(IngestRun)
                .where(IngestRun.id == run_id)
                .values(status="done", finished_at=self.clock(), report=json.dumps(report.as_dict()))
            )

    def _pass2(
        self, source: Source, mapping: Mapping, executor: Executor | None, kept: list[Prepared], skip: int
    ) -> Iterator[Prepared]:
        """The chunks to write after row ``skip``: kept ones first, then the rest parsed again."""
        done = skip
        while kept:
            chunk = kept.pop(0)  # released as it is written: memory falls while pass 2 runs
            done = max(done, chunk.records[-1][0])
            part = chunk.after(skip)
            if part.rows:
                yield part
        yield from self._prepared(source, mapping, executor, done)


def _find_refs(session: Session, refs: set[str]) -> dict[str, int]:
    found = _writer.lookup_indexes(session, refs)
    rest = refs - set(found)
    if rest:
        found.update(_writer.lookup_unique(session, rest))
    return found


def _already_ingested(earlier: IngestReport) -> IngestReport:
    """What ingesting the same content again does: nothing. The counts are this run's (no row
    written, every row the first run kept unchanged), never the first run's repeated."""
    held = earlier.rows_read - earlier.rows_rejected - earlier.rows_erased - earlier.rows_conflicted
    return replace(
        earlier,
        status="already_ingested",
        rows_written=0,
        rows_unchanged=held,
        customers_created=0,
        customers_updated=0,
        duplicates_merged=0,
        merges=[],
        conflicts=[],
    )


def _add_counts(report: IngestReport, previous: dict[str, Any]) -> None:
    """A resumed run keeps the counts of the batches committed before the interruption."""
    for name in (
        "customers_created",
        "customers_updated",
        "duplicates_merged",
        "rows_unchanged",
        "rows_written",
        "rows_erased",
        "rows_conflicted",
    ):
        setattr(report, name, getattr(report, name) + int(previous.get(name, 0)))
    for name in ("merges", "conflicts", "erased_rows"):
        getattr(report, name)[:0] = list(previous.get(name, []))
