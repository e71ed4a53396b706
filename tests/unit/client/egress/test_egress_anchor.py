"""The egress chain anchored outside the node (issue 12, item 4): heads the coordinator acknowledged
catch a cut tail and a rewritten, re-chained ledger that the chain alone would pass; the analyst is
in the chain; a ledger made before the analyst column opens and verifies."""

from __future__ import annotations

import dataclasses
import hashlib

import sqlalchemy as sa
from test_egress_ledger import T0, _fill, _record, _ticking, ledger  # noqa: F401 - the fixture

from tessera.client.egress import EgressLedger
from tessera.client.egress.records import GENESIS_HASH, canonical_bytes, chain_hash


def _sql(engine: sa.Engine, text: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(text), params)


def test_a_cut_tail_fails_once_its_head_was_anchored(ledger: EgressLedger, engine: sa.Engine) -> None:  # noqa: F811
    _fill(ledger, 5)
    seq, head = ledger.head()
    # Cut the last two entries and move the head back: the chain alone cannot tell.
    _sql(engine, "DELETE FROM egress_ledger WHERE seq > 3")
    keep = ledger.entries()[-1]
    _sql(engine, "UPDATE egress_head SET seq = 3, hash = :h", h=keep.hash)
    assert ledger.verify().ok
    assert ledger.acknowledge(seq, head, at=T0) and not ledger.acknowledge(seq, head)
    result = ledger.verify()
    assert not result.ok and result.first_bad_seq == 4
    assert "acknowledged entry 5" in result.reason and "were removed" in result.reason


def test_a_rechained_ledger_fails_against_its_anchor(ledger: EgressLedger, engine: sa.Engine) -> None:  # noqa: F811
    _fill(ledger, 3)
    ledger.acknowledge(*ledger.head(), at=T0)
    # Rewrite entry 2 (a smaller epsilon) and recompute every hash from there: a perfect chain.
    prev = GENESIS_HASH
    for entry in ledger.entries():
        record = entry.record if entry.seq != 2 else dataclasses.replace(entry.record, epsilon=0.01)
        body = canonical_bytes(entry.seq, entry.time, record, entry.byte_length, entry.payload_sha256)
        new = chain_hash(prev, body)
        _sql(
            engine,
            "UPDATE egress_ledger SET epsilon = :e, prev_hash = :p, hash = :h WHERE seq = :s",
            e=record.epsilon,
            p=prev.hex(),
            h=new.hex(),
            s=entry.seq,
        )
        prev = new
    _sql(engine, "UPDATE egress_head SET hash = :h", h=prev.hex())
    assert EgressLedger(engine).verify().reason.startswith("entry 3 differs from the head the coordinator")


def test_the_analyst_is_chained(ledger: EgressLedger, engine: sa.Engine) -> None:  # noqa: F811
    entry = ledger.record(_record(analyst="alice"), b"x")
    assert ledger.entries()[0].record.analyst == "alice" and ledger.report()[0].analyst == "alice"
    _sql(engine, "UPDATE egress_ledger SET analyst = 'mallory'")
    assert not ledger.verify().ok
    # A record without an analyst hashes as before the field existed (old ledgers still verify).
    plain = _record()
    assert b"analyst" not in canonical_bytes(1, T0, plain, 1, hashlib.sha256(b"x").hexdigest())
    assert entry.hash


def test_a_ledger_made_before_the_analyst_column_gets_it(engine: sa.Engine) -> None:
    first = EgressLedger(engine, clock=_ticking())
    first.record(_record(), b"old")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE egress_ledger DROP COLUMN analyst")
    again = EgressLedger(engine, clock=_ticking())
    assert again.verify().ok and again.entries()[0].record.analyst == ""
