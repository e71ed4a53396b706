"""Data-quality reports: after every ingest and on demand (``tessera node quality``).

Reports carry counts, field names, row numbers and reasons — never a value — so they may be kept
under the state directory and shown to anyone allowed to run the node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from tessera.client.vault._model import (
    Attribute,
    Customer,
    Event,
    Merge,
    MergeDetail,
    PiiValue,
    Tombstone,
    Transaction,
)
from tessera.core.policy import Policy
from tessera.core.types import Tier

MAX_LISTED_ERRORS = 100
MAX_LISTED = 1000  # merges, conflicts and refused rows listed per report (counts are complete)
_CUSTOMER_COLUMNS = {
    "region": Customer.region,
    "channel": Customer.channel,
    "signup_date": Customer.signup_date,
    "churned": Customer.churned,
}


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    column: str | None
    reason: str

    def render(self) -> str:
        where = f"row {self.row}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class FieldQuality:
    field: str
    tier: str
    present: int = 0
    missing: int = 0
    invalid: int = 0
    formulas: int = 0  # accepted, but a spreadsheet would run them (CSV injection)
    future_dates: int = 0  # accepted, but later than the ingest (a typo or a wrong format?)

    @property
    def completeness(self) -> float:
        total = self.present + self.missing + self.invalid
        return self.present / total if total else 0.0


@dataclass(slots=True)
class IngestReport:
    """What one ingest did (or why it was refused). ``status``: done, rejected, already_ingested."""

    dataset: str
    source: str
    status: str = "done"
    rows_read: int = 0
    rows_rejected: int = 0
    rows_written: int = 0
    customers_created: int = 0
    customers_updated: int = 0
    duplicates_merged: int = 0
    rows_unchanged: int = 0
    rows_erased: int = 0  # refused: they name a customer who was erased (tombstone)
    rows_conflicted: int = 0  # refused: a merge whose records disagree (listed in ``conflicts``)
    merges: list[dict[str, Any]] = field(default_factory=list)  # the merge report of this ingest
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    erased_rows: list[int] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)  # accepted rows flagged (first listed)
    fields: list[FieldQuality] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["errors"] = [asdict(e) for e in self.errors[:MAX_LISTED_ERRORS]]
        doc["warnings"] = [asdict(e) for e in self.warnings[:MAX_LISTED_ERRORS]]
        doc["fields"] = [{**asdict(f), "completeness": round(f.completeness, 6)} for f in self.fields]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> IngestReport:
        report = cls(**{k: v for k, v in doc.items() if k not in ("errors", "warnings", "fields")})
        report.errors = [RowError(**e) for e in doc.get("errors", [])]
        report.warnings = [RowError(**e) for e in doc.get("warnings", [])]
        report.fields = [
            FieldQuality(**{k: v for k, v in f.items() if k != "completeness"}) for f in doc.get("fields", [])
        ]
        return report


def vault_quality(engine: sa.Engine, policy: Policy) -> dict[str, Any]:
    """Completeness of every customers field held in the vault, plus merge and erasure counts."""
    with engine.connect() as conn:
        total = conn.scalar(sa.select(sa.func.count()).select_from(Customer)) or 0
        fields: list[dict[str, Any]] = []
        names = [f for f in policy.dataset("customers").fields] if _has(policy, "customers") else []
        pii = dict(conn.execute(sa.select(PiiValue.field, sa.func.count()).group_by(PiiValue.field)).all())
        attrs = dict(
            conn.execute(
                sa.select(Attribute.name, sa.func.count())
                .where(
                    sa.or_(
                        Attribute.num_value.is_not(None),
                        Attribute.text_value.is_not(None),
                        Attribute.date_value.is_not(None),
                    )
                )
                .group_by(Attribute.name)
            ).all()
        )
        for spec in names:
            if spec.tier is Tier.CORE_SENSITIVE:
                present = int(pii.get(spec.name, 0))
            elif spec.name in _CUSTOMER_COLUMNS:
                column = _CUSTOMER_COLUMNS[spec.name]
                present = conn.scalar(sa.select(sa.func.count()).where(column.is_not(None))) or 0
            else:
                present = int(attrs.get(spec.name, 0))
            fields.append(
                {
                    "field": spec.name,
                    "tier": spec.tier.value,
                    "present": present,
                    "missing": total - present,
                    "completeness": round(present / total, 6) if total else 0.0,
                }
            )
        return {
            "customers": total,
            "transactions": conn.scalar(sa.select(sa.func.count()).select_from(Transaction)) or 0,
            "events": conn.scalar(sa.select(sa.func.count()).select_from(Event)) or 0,
            # Undone merges (``node unmerge``) no longer count: the same number the ingest reports gave.
            "merges": conn.scalar(
                sa.select(sa.func.count())
                .select_from(Merge)
                .join(MergeDetail, MergeDetail.merge_id == Merge.id, isouter=True)
                .where(MergeDetail.undone_at.is_(None))
            )
            or 0,
            "tombstones": conn.scalar(sa.select(sa.func.count()).select_from(Tombstone)) or 0,
            "fields": fields,
        }


def _has(policy: Policy, dataset: str) -> bool:
    return any(d.name == dataset for d in policy.datasets)
