"""Egress ledger: chain, tamper detection, transactions, send-after-record, concurrent writers."""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tessera.client.egress import (
    REPORT_COLUMNS,
    EgressLedger,
    EgressRecord,
    send_through_ledger,
)
from tessera.client.egress.records import GENESIS_HASH, canonical_bytes, chain_hash
from tessera.core.errors import InvalidRequest

T0 = datetime(2026, 11, 23, 1, 0, 0, 123456, tzinfo=UTC)


def _record(job: str = "job-1", round_: int = 0, **overrides: object) -> EgressRecord:
    values: dict[str, object] = {
        "job_id": job,
        "round": round_,
        "stage": "masked_input",
        "purpose": "marketing_analytics",
        "analysis": "histogram",
        "fields": ("spend", "region"),
        "shape": (4, 8),
        "noise": {"mechanism": "skellam", "mu": 12.5, "quorum": 3},
        "rho": 0.125,
        "epsilon": 1.0,
        "delta": 1e-6,
        "policy_hash": "ab" * 32,
    }
    values.update(overrides)
    return EgressRecord(**values)  # type: ignore[arg-type]


def _ticking(start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> Callable[[], datetime]:
    times: Iterator[int] = iter(range(10**6))
    return lambda: start + step * next(times)


@pytest.fixture
def ledger(engine: sa.Engine) -> EgressLedger:
    return EgressLedger(engine, clock=_ticking())


def _fill(ledger: EgressLedger, n: int) -> None:
    for i in range(n):
        ledger.record(_record(round_=i), f"payload-{i}".encode())


def _sql(engine: sa.Engine, statement: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def test_chain_known_answer() -> None:
    # The documented rule, recomputed with json/hashlib only.
    record = _record()
    payload = b"\x00\x01masked vector"
    body = (
        '{"analysis":"histogram","byte_length":15,"delta":1e-06,"epsilon":1.0,'
        '"fields":["spend","region"],"job_id":"job-1",'
        '"noise":{"mechanism":"skellam","mu":12.5,"quorum":3},'
        f'"payload_sha256":"{hashlib.sha256(payload).hexdigest()}","policy_hash":"{"ab" * 32}",'
        '"purpose":"marketing_analytics","rho":0.125,"round":0,"seq":1,"shape":[4,8],'
        '"stage":"masked_input","time":"2026-11-23T01:00:00.123456Z","v":1}'
    ).encode()
    canonical = canonical_bytes(1, T0, record, len(payload), hashlib.sha256(payload).hexdigest())
    assert canonical == body
    expected = hashlib.sha256(b"tessera.egress.v1\x00" + bytes(32) + body).digest()
    assert chain_hash(GENESIS_HASH, canonical) == expected


def test_record_entries_and_verify(ledger: EgressLedger, engine: sa.Engine) -> None:
    assert ledger.verify().ok and ledger.verify().entries_checked == 0
    payload = b"SECRET-VECTOR-BYTES" * 3
    first = ledger.record(_record(), payload)
    assert first.seq == 1 and first.prev_hash == "00" * 32
    assert first.byte_length == len(payload) and first.payload_sha256 == hashlib.sha256(payload).hexdigest()
    _fill(ledger, 4)
    entries = ledger.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert entries[0] == first
    result = ledger.verify()
    assert result.ok and result.entries_checked == 5 and result.first_bad_seq is None
    assert ledger.head() == (5, entries[-1].hash) and result.head_hash == entries[-1].hash
    with engine.connect() as conn:  # the payload itself is never stored
        dump = repr(conn.execute(sa.text("SELECT * FROM egress_ledger")).all())
    assert "SECRET-VECTOR" not in dump


@pytest.mark.parametrize(
    ("statement", "bad_seq"),
    [
        ("UPDATE egress_ledger SET epsilon = 0.5 WHERE seq = 3", 3),
        ("UPDATE egress_ledger SET fields = '[\"spend\"]' WHERE seq = 2", 2),
        ("UPDATE egress_ledger SET byte_length = byte_length + 1 WHERE seq = 5", 5),
        ("UPDATE egress_ledger SET epsilon = -1 WHERE seq = 4", 4),
        ("DELETE FROM egress_ledger WHERE seq = 3", 3),
        ("DELETE FROM egress_ledger WHERE seq = 1", 1),
        ("DELETE FROM egress_ledger WHERE seq = 6", 6),  # tail: caught by the head row
    ],
)
def test_verify_names_first_bad_seq(
    ledger: EgressLedger, engine: sa.Engine, statement: str, bad_seq: int
) -> None:
    _fill(ledger, 6)
    _sql(engine, statement)
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == bad_seq
    assert result.reason and "payload" not in result.reason


def test_verify_detects_reorder(ledger: EgressLedger, engine: sa.Engine) -> None:
    _fill(ledger, 5)
    _sql(engine, "UPDATE egress_ledger SET seq = 100 WHERE seq = 2")
    _sql(engine, "UPDATE egress_ledger SET seq = 2 WHERE seq = 3")
    _sql(engine, "UPDATE egress_ledger SET seq = 3 WHERE seq = 100")
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 2


def test_verify_detects_insertions(ledger: EgressLedger, engine: sa.Engine) -> None:
    _fill(ledger, 3)
    # A well-formed entry appended behind the ledger's back (head not moved).
    last = ledger.entries()[-1]
    canonical = canonical_bytes(4, T0, _record(), 1, hashlib.sha256(b"x").hexdigest())
    forged = chain_hash(bytes.fromhex(last.hash), canonical).hex()
    _sql(
        engine,
        "INSERT INTO egress_ledger (seq, time, job_id, round, stage, purpose, analysis, fields, shape,"
        " noise, rho, epsilon, delta, policy_hash, byte_length, payload_sha256, prev_hash, hash)"
        " SELECT 4, time, job_id, round, stage, purpose, analysis, fields, shape, noise, rho, epsilon,"
        " delta, policy_hash, 1, :sha, :prev, :hash FROM egress_ledger WHERE seq = 1",
        sha=hashlib.sha256(b"x").hexdigest(),
        prev=last.hash,
        hash=forged,
    )
    assert ledger.verify().first_bad_seq == 4
    # An entry slipped into the middle (seq shifted up) breaks the chain where it sits.
    _sql(engine, "DELETE FROM egress_ledger WHERE seq = 4")
    assert ledger.verify().ok
    for seq in (3, 2):
        _sql(engine, "UPDATE egress_ledger SET seq = :n WHERE seq = :o", n=seq + 1, o=seq)
    _sql(
        engine,
        "INSERT INTO egress_ledger SELECT 2, time, job_id, round, stage, purpose, analysis, fields, shape,"
        " noise, rho, epsilon, delta, policy_hash, byte_length, payload_sha256, prev_hash, :h, analyst"
        " FROM egress_ledger WHERE seq = 1",
        h="f" * 64,
    )
    _sql(engine, "UPDATE egress_head SET seq = 4")
    assert ledger.verify().first_bad_seq == 2


def test_record_joins_callers_transaction(ledger: EgressLedger, engine: sa.Engine) -> None:
    ledger.record(_record(), b"one")
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        ledger.record(_record(round_=1), b"two", session=session)
        raise RuntimeError("the budget charge failed")
    assert [e.seq for e in ledger.entries()] == [1] and ledger.verify().ok
    with Session(engine) as session, session.begin():
        entry = ledger.record(_record(round_=1), b"two", session=session)
    assert entry.seq == 2 and ledger.verify().ok


def test_send_happens_only_after_commit(ledger: EgressLedger, engine: sa.Engine) -> None:
    observer = EgressLedger(engine)

    def send(payload: bytes) -> str:
        # A separate reader already sees the committed entry when the bytes go out.
        assert [e.payload_sha256 for e in observer.entries()] == [hashlib.sha256(payload).hexdigest()]
        return "sent"

    assert send_through_ledger(ledger, _record(), b"vector", send) == "sent"
    calls: list[bytes] = []
    with pytest.raises(TypeError):
        send_through_ledger(ledger, _record(), "not bytes", calls.append)  # type: ignore[arg-type]
    assert calls == [] and len(ledger.entries()) == 1


def test_entries_window_and_report(engine: sa.Engine) -> None:
    ledger = EgressLedger(engine, clock=_ticking(step=timedelta(hours=1)))
    _fill(ledger, 5)
    ledger.record(_record(job="job-2", shape=()), b"")
    window = ledger.entries(T0 + timedelta(hours=1), T0 + timedelta(hours=3))
    assert [e.seq for e in window] == [2, 3]
    assert all(e.time.tzinfo is not None for e in window)
    rows = ledger.report(job_id="job-2")
    assert len(rows) == 1 and rows[0].shape == "scalar" and rows[0].bytes == 0
    as_dicts = [r.as_dict() for r in ledger.report()]
    assert list(as_dicts[0]) == list(REPORT_COLUMNS)
    decoded = json.loads(json.dumps(as_dicts))
    assert decoded[0]["fields"] == "spend, region" and decoded[0]["time"] == "2026-11-23T01:00:00.123456Z"
    with pytest.raises(InvalidRequest):
        ledger.entries(since=datetime(2026, 1, 1))  # naive time


def test_non_utc_clock_is_stored_as_utc(engine: sa.Engine) -> None:
    plus8 = timezone(timedelta(hours=8))
    ledger = EgressLedger(engine, clock=lambda: datetime(2026, 11, 23, 9, 0, tzinfo=plus8))
    entry = ledger.record(_record(), b"x")
    assert ledger.entries()[0].time == entry.time == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
    assert ledger.verify().ok


@pytest.mark.parametrize(
    "overrides",
    [
        {"epsilon": -0.1},
        {"rho": float("nan")},
        {"delta": 1.0},
        {"job_id": ""},
        {"round": -1},
        {"shape": (3, -1)},
        {"fields": ["spend"]},
        {"noise": {"sigma": float("inf")}},
        {"noise": {"sigma": [1, 2]}},
    ],
)
def test_record_validation(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        _record(**overrides)


def test_concurrent_writers_keep_one_chain(engine: sa.Engine) -> None:
    ledger = EgressLedger(engine)
    threads, per_thread = 4, 12
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                ledger.record(_record(job=f"job-{t}", round_=i), f"{t}-{i}".encode())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
    assert errors == []
    entries = ledger.entries()
    assert [e.seq for e in entries] == list(range(1, threads * per_thread + 1))
    assert len({e.prev_hash for e in entries}) == len(entries)  # no two entries share a parent
    result = ledger.verify()
    assert result.ok and result.entries_checked == threads * per_thread


def test_concurrent_charge_and_record_commit_together(engine: sa.Engine) -> None:
    ledger = EgressLedger(engine)
    _sql(engine, "CREATE TABLE budget (id INTEGER PRIMARY KEY, spent INTEGER NOT NULL)")
    _sql(engine, "INSERT INTO budget (id, spent) VALUES (1, 0)")
    threads, per_thread = 3, 8
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(per_thread):
                with Session(engine) as session, session.begin():
                    session.execute(sa.text("UPDATE budget SET spent = spent + 1 WHERE id = 1"))
                    ledger.record(_record(job=f"job-{t}", round_=i), b"v", session=session)
                    if i == per_thread - 1:
                        raise LookupError("veto: the last release of each writer rolls back")
        except LookupError:
            pass
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=60)
    assert errors == []
    with engine.connect() as conn:
        spent = conn.execute(sa.text("SELECT spent FROM budget WHERE id = 1")).scalar_one()
    committed = threads * (per_thread - 1)
    assert spent == committed == len(ledger.entries())
    assert ledger.verify().ok
