"""The node's egress ledger: every message is recorded, hash-chained, *before* it leaves (DESIGN §6).

Append-only table ``egress_ledger`` plus a one-row ``egress_head``. An append first locks the head
row (an UPDATE: SQLite's write lock, PostgreSQL's row lock), reads the last hash, writes the entry
and moves the head, all in one transaction — concurrent writers queue and never fork the chain.
Pass ``session=`` to append inside a caller's transaction (a budget charge and its egress record
then commit or roll back together). On SQLite, do the caller's writes before reading much, or
start that transaction with a write: a transaction that only read cannot always be upgraded to a
writer while another writer holds the lock and fails with "database is locked" (retry it).

The chain proves order and integrity against edits made without recomputing hashes; a person with
write access to the database can rebuild a whole chain or cut its tail and move the head. So the
node publishes :meth:`EgressLedger.head` with every heartbeat; the coordinator keeps every head it
receives and answers with the latest it holds, which the node stores (:meth:`acknowledge`).
:meth:`verify` then also checks that the chain still holds every acknowledged head: a truncated
ledger ends before one, a re-chained one has another hash at its seq. (An operator who also deletes
the acknowledged heads is caught by the coordinator's copy: ``egress_anchors`` in its store.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.egress._schema import EgressAnchorRow, EgressBase, EgressEntryRow, EgressHeadRow
from tessera.client.egress.records import (
    GENESIS_HASH,
    EgressEntry,
    EgressRecord,
    ReportRow,
    VerifyResult,
    canonical_bytes,
    chain_hash,
)
from tessera.core.errors import InvalidRequest, StoreError

T = TypeVar("T")
Clock = Callable[[], datetime]
_HEAD_ID = 1


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InvalidRequest("ledger times need a time zone")
    return moment.astimezone(UTC)


def _record_of(row: EgressEntryRow) -> EgressRecord:
    return EgressRecord(
        job_id=row.job_id,
        round=row.round,
        stage=row.stage,
        purpose=row.purpose,
        analysis=row.analysis,
        fields=tuple(json.loads(row.fields)),
        shape=tuple(json.loads(row.shape)),
        noise=json.loads(row.noise),
        rho=row.rho,
        epsilon=row.epsilon,
        delta=row.delta,
        policy_hash=row.policy_hash,
        analyst=row.analyst or "",
    )


def _entry_of(row: EgressEntryRow) -> EgressEntry:
    return EgressEntry(
        seq=row.seq,
        time=row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC),
        record=_record_of(row),
        byte_length=row.byte_length,
        payload_sha256=row.payload_sha256,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


class EgressLedger:
    """Append, read, verify and report the egress ledger in the node's database."""

    def __init__(self, engine: sa.Engine, *, clock: Clock = _utcnow) -> None:
        self._engine = engine
        self._clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._ensure_tables()

    def _ensure_tables(self) -> None:
        EgressBase.metadata.create_all(self._engine)
        columns = {c["name"] for c in sa.inspect(self._engine).get_columns("egress_ledger")}
        if "analyst" not in columns:  # a ledger made before the analyst was recorded
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.text(
                            "ALTER TABLE egress_ledger ADD COLUMN analyst VARCHAR(128) NOT NULL DEFAULT ''"
                        )
                    )
            except sa.exc.OperationalError:
                pass  # another process added it first
        try:
            with self._sessions.begin() as session:
                if session.get(EgressHeadRow, _HEAD_ID) is None:
                    session.add(EgressHeadRow(id=_HEAD_ID, seq=0, hash=GENESIS_HASH.hex()))
        except IntegrityError:
            pass  # another process created the head row first: the same row we wanted.

    # -- writing -----------------------------------------------------------------------------------

    def record(self, entry: EgressRecord, payload: bytes, *, session: Session | None = None) -> EgressEntry:
        """Append ``entry`` for ``payload`` (only its length and SHA-256 are kept).

        Without ``session`` the append commits before this returns; with one, it joins the
        caller's transaction and commits with it (the head row stays locked until then).
        """
        if not isinstance(entry, EgressRecord):
            raise TypeError("entry must be an EgressRecord")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError("payload must be bytes")
        if session is not None:
            return self._append(session, entry, bytes(payload))
        with self._sessions.begin() as own:
            return self._append(own, entry, bytes(payload))

    def _append(self, session: Session, record: EgressRecord, payload: bytes) -> EgressEntry:
        head_t = cast(sa.Table, EgressHeadRow.__table__)
        # Take the write/row lock before reading the head, so no other writer reads the same head.
        lock = sa.update(head_t).where(head_t.c.id == _HEAD_ID).values(seq=head_t.c.seq)
        locked = cast(sa.CursorResult[Any], session.execute(lock)).rowcount
        if locked != 1:
            raise StoreError("the egress ledger has no head row; its tables are damaged")
        last_seq, last_hash = session.execute(
            sa.select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == _HEAD_ID)
        ).one()
        seq, now = int(last_seq) + 1, _as_utc(self._clock())
        digest = hashlib.sha256(payload).hexdigest()
        new_hash = chain_hash(
            bytes.fromhex(last_hash), canonical_bytes(seq, now, record, len(payload), digest)
        ).hex()
        session.add(
            EgressEntryRow(
                seq=seq,
                time=now,
                job_id=record.job_id,
                round=record.round,
                stage=record.stage,
                purpose=record.purpose,
                analysis=record.analysis,
                fields=json.dumps(list(record.fields)),
                shape=json.dumps(list(record.shape)),
                noise=json.dumps(dict(record.noise), sort_keys=True, separators=(",", ":")),
                rho=float(record.rho),
                epsilon=float(record.epsilon),
                delta=float(record.delta),
                policy_hash=record.policy_hash,
                analyst=record.analyst,
                byte_length=len(payload),
                payload_sha256=digest,
                prev_hash=last_hash,
                hash=new_hash,
            )
        )
        session.execute(sa.update(head_t).where(head_t.c.id == _HEAD_ID).values(seq=seq, hash=new_hash))
        session.flush()
        return EgressEntry(seq, now, record, len(payload), digest, last_hash, new_hash)

    # -- reading -----------------------------------------------------------------------------------

    def head(self) -> tuple[int, str]:
        """(last seq, its hash in hex); ``(0, "00"*32)`` for an empty ledger. Publish to anchor."""
        with self._sessions.begin() as session:
            row = session.get(EgressHeadRow, _HEAD_ID)
            if row is None:
                raise StoreError("the egress ledger has no head row; its tables are damaged")
            return row.seq, row.hash

    def acknowledge(self, seq: int, hash_hex: str, *, at: datetime | None = None) -> bool:
        """Store a head the coordinator acknowledged (from a heartbeat answer); True if it was new.
        A head the node's own chain does not hold is stored too: ``verify`` reports it."""
        if seq <= 0 or len(hash_hex) != 64:
            return False
        with self._sessions.begin() as session:
            if session.get(EgressAnchorRow, seq) is not None:
                return False
            session.add(EgressAnchorRow(seq=seq, hash=hash_hex, acknowledged_at=_as_utc(at or self._clock())))
            return True

    def anchors(self) -> list[tuple[int, str, datetime]]:
        """The acknowledged heads: (seq, hash, when), by seq."""
        with self._sessions.begin() as session:
            rows = session.scalars(sa.select(EgressAnchorRow).order_by(EgressAnchorRow.seq))
            return [
                (
                    r.seq,
                    r.hash,
                    r.acknowledged_at if r.acknowledged_at.tzinfo else r.acknowledged_at.replace(tzinfo=UTC),
                )
                for r in rows
            ]

    def entries(
        self, since: datetime | None = None, until: datetime | None = None, *, job_id: str | None = None
    ) -> list[EgressEntry]:
        """Entries with ``since <= time < until`` (UTC-aware bounds), optionally of one job, by seq."""
        query = sa.select(EgressEntryRow).order_by(EgressEntryRow.seq)
        if since is not None:
            query = query.where(EgressEntryRow.time >= _as_utc(since))
        if until is not None:
            query = query.where(EgressEntryRow.time < _as_utc(until))
        if job_id is not None:
            query = query.where(EgressEntryRow.job_id == job_id)
        with self._sessions.begin() as session:
            return [_entry_of(row) for row in session.scalars(query)]

    def report(
        self, since: datetime | None = None, until: datetime | None = None, *, job_id: str | None = None
    ) -> list[ReportRow]:
        """Rows for a compliance officer: what left, when, why, at what privacy cost.

        ``ReportRow.as_dict()`` gives JSON-ready dicts; ``records.REPORT_COLUMNS`` the column order.
        """
        return [ReportRow.from_entry(e) for e in self.entries(since, until, job_id=job_id)]

    def verify(self) -> VerifyResult:
        """Recompute the whole chain; names the first ``seq`` that was edited, removed, inserted or
        moved, and any head the coordinator acknowledged that the chain no longer holds (entries cut
        from the tail, or rewritten and re-chained). Reads every entry once (streamed); cost is one
        SHA-256 per entry."""
        anchors = {seq: (h, at) for seq, h, at in self.anchors()}
        with self._sessions.begin() as session:
            head = session.get(EgressHeadRow, _HEAD_ID)
            head_state = None if head is None else (head.seq, head.hash)
            rows = session.scalars(
                sa.select(EgressEntryRow).order_by(EgressEntryRow.seq).execution_options(yield_per=500)
            )
            try:
                return _check_chain(rows, head_state, anchors)
            finally:
                rows.close()  # a server-side cursor (PostgreSQL) must not outlive an early return


def _check_chain(
    rows: Iterable[EgressEntryRow],
    head: tuple[int, str] | None,
    anchors: dict[int, tuple[str, datetime]] | None = None,
) -> VerifyResult:
    anchors = anchors or {}
    prev, expected, checked = GENESIS_HASH, 1, 0
    for row in rows:
        if row.seq != expected:
            bad = min(row.seq, expected)
            return VerifyResult(False, checked, bad, f"entry {bad} is missing or out of place")
        try:
            entry = _entry_of(row)
        except (InvalidRequest, ValueError, TypeError):
            return VerifyResult(False, checked, row.seq, f"entry {row.seq} holds malformed fields")
        recomputed = chain_hash(prev, entry.canonical())
        if row.prev_hash != prev.hex() or row.hash != recomputed.hex():
            return VerifyResult(False, checked, row.seq, f"entry {row.seq} does not match the chain")
        prev, expected, checked = recomputed, expected + 1, checked + 1
        anchored = anchors.get(row.seq)
        if anchored is not None and anchored[0] != row.hash:
            return VerifyResult(
                False,
                checked,
                row.seq,
                f"entry {row.seq} differs from the head the coordinator acknowledged on "
                f"{anchored[1]:%Y-%m-%d %H:%M} UTC: the ledger was rewritten and re-chained",
            )
    beyond = sorted(seq for seq in anchors if seq > checked)
    if beyond:
        seq = beyond[-1]
        return VerifyResult(
            False,
            checked,
            checked + 1,
            f"the coordinator acknowledged entry {seq} on {anchors[seq][1]:%Y-%m-%d %H:%M} UTC but the "
            f"ledger ends at entry {checked}: entries from {checked + 1} on were removed",
        )
    if head is None:
        return VerifyResult(False, checked, expected, "the ledger head is missing")
    if head != (checked, prev.hex()):
        bad = min(head[0], checked) + 1
        return VerifyResult(False, checked, bad, f"entries from {bad} on are missing or were added")
    return VerifyResult(True, checked, None, "", prev.hex())


def send_through_ledger(
    ledger: EgressLedger, record: EgressRecord, payload: bytes, send: Callable[[bytes], T]
) -> T:
    """Record ``payload`` (committed), then call ``send(payload)`` and return its result.

    If recording fails nothing is sent. If ``send`` fails the entry stays: the ledger errs on the
    side of listing a message that may have left rather than missing one that did.
    """
    ledger.record(record, payload)
    return send(payload)
