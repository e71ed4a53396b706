"""Egress ledger records and the hash chain over them (DESIGN §6).

Chain rule (version 1): ``hash_n = SHA-256("tessera.egress.v1\\0" || hash_{n-1} || canonical(entry_n))``
with ``hash_0`` = 32 zero bytes. ``canonical`` is compact JSON with sorted keys of every field of the
entry except the hashes themselves (``analyst`` only when known, so entries written before it
existed still verify), including ``seq`` and the UTC time with microseconds, so an
edited field, a removed or inserted entry and a reordering all break the chain at the first
affected ``seq``. The payload itself is never stored: only its byte length and SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tessera.core.errors import InvalidRequest

GENESIS_HASH = bytes(32)
_DOMAIN = b"tessera.egress.v1\x00"
NoiseValue = int | float | str | bool


def _finite_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"egress record field {name} must be a number")
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"egress record field {name} must be a finite number of at least 0")


@dataclass(frozen=True, slots=True)
class EgressRecord:
    """What is about to leave the node and why; validated when built (fail closed)."""

    job_id: str
    round: int
    stage: str
    purpose: str
    analysis: str
    fields: tuple[str, ...]
    shape: tuple[int, ...]
    noise: Mapping[str, NoiseValue]
    rho: float
    epsilon: float
    delta: float
    policy_hash: str
    analyst: str = ""  # who asked: the job's submitter as the coordinator relayed it ("" = unknown)

    def __post_init__(self) -> None:
        if not isinstance(self.analyst, str) or len(self.analyst) > 128:
            raise InvalidRequest("egress record field analyst must be a text of at most 128 characters")
        for name in ("job_id", "stage", "purpose", "analysis", "policy_hash"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidRequest(f"egress record field {name} must be a non-empty text")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise InvalidRequest("egress record field round must be an integer of at least 0")
        if not isinstance(self.fields, tuple) or not all(isinstance(f, str) and f for f in self.fields):
            raise InvalidRequest("egress record field fields must be a tuple of field names")
        if not isinstance(self.shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in self.shape
        ):
            raise InvalidRequest("egress record field shape must be a tuple of non-negative integers")
        for key, value in self.noise.items():
            if not isinstance(key, str) or not isinstance(value, NoiseValue):
                raise InvalidRequest("egress record noise parameters must map names to numbers or text")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidRequest("egress record noise parameters must be finite")
        for name in ("rho", "epsilon", "delta"):
            _finite_non_negative(name, getattr(self, name))
        if self.delta >= 1:
            raise InvalidRequest("egress record field delta must be below 1")
        # Freeze the mapping so the record stays immutable and hashable-by-content.
        object.__setattr__(self, "noise", dict(sorted(self.noise.items())))


@dataclass(frozen=True, slots=True)
class EgressEntry:
    """One committed ledger entry: the record plus its place in the chain."""

    seq: int
    time: datetime
    record: EgressRecord
    byte_length: int
    payload_sha256: str
    prev_hash: str
    hash: str

    def canonical(self) -> bytes:
        return canonical_bytes(self.seq, self.time, self.record, self.byte_length, self.payload_sha256)


def utc_text(moment: datetime) -> str:
    """ISO-8601 in UTC with microseconds; a naive time (SQLite gives those back) is taken as UTC."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_bytes(
    seq: int, time: datetime, record: EgressRecord, byte_length: int, payload_sha256: str
) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "seq": seq,
        "time": utc_text(time),
        "job_id": record.job_id,
        "round": record.round,
        "stage": record.stage,
        "purpose": record.purpose,
        "analysis": record.analysis,
        "fields": list(record.fields),
        "shape": list(record.shape),
        "noise": dict(record.noise),
        "rho": float(record.rho),
        "epsilon": float(record.epsilon),
        "delta": float(record.delta),
        "policy_hash": record.policy_hash,
        "byte_length": byte_length,
        "payload_sha256": payload_sha256,
    }
    if record.analyst:
        body["analyst"] = record.analyst
    # repr-exact floats, sorted keys, no whitespace: one byte string per entry on every platform.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode(
        "ascii"
    )


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN + prev_hash + canonical).digest()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of :meth:`EgressLedger.verify`; ``first_bad_seq`` names where the chain breaks."""

    ok: bool
    entries_checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_hash: str = field(default="")


REPORT_COLUMNS = (
    "seq",
    "time",
    "job_id",
    "analyst",
    "round",
    "stage",
    "purpose",
    "analysis",
    "fields",
    "shape",
    "noise",
    "epsilon",
    "delta",
    "rho",
    "policy_hash",
    "bytes",
    "payload_sha256",
)


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One row of the compliance report: every value is text or a number (table and JSON friendly)."""

    seq: int
    time: str
    job_id: str
    analyst: str
    round: int
    stage: str
    purpose: str
    analysis: str
    fields: str
    shape: str
    noise: str
    epsilon: float
    delta: float
    rho: float
    policy_hash: str
    bytes: int
    payload_sha256: str

    @classmethod
    def from_entry(cls, entry: EgressEntry) -> ReportRow:
        r = entry.record
        return cls(
            seq=entry.seq,
            time=utc_text(entry.time),
            job_id=r.job_id,
            analyst=r.analyst,
            round=r.round,
            stage=r.stage,
            purpose=r.purpose,
            analysis=r.analysis,
            fields=", ".join(r.fields),
            shape="x".join(str(d) for d in r.shape) or "scalar",
            noise=json.dumps(dict(r.noise), sort_keys=True, separators=(",", ":")),
            epsilon=r.epsilon,
            delta=r.delta,
            rho=r.rho,
            policy_hash=r.policy_hash,
            bytes=entry.byte_length,
            payload_sha256=entry.payload_sha256,
        )

    def as_dict(self) -> dict[str, str | int | float]:
        return {name: getattr(self, name) for name in REPORT_COLUMNS}
