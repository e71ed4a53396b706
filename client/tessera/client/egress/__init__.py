"""The node's egress ledger: what left the node, when, why and at what privacy cost (DESIGN §6)."""

from __future__ import annotations

from tessera.client.egress.ledger import EgressLedger, send_through_ledger
from tessera.client.egress.records import (
    REPORT_COLUMNS,
    EgressEntry,
    EgressRecord,
    ReportRow,
    VerifyResult,
)

__all__ = [
    "REPORT_COLUMNS",
    "EgressEntry",
    "EgressLedger",
    "EgressRecord",
    "ReportRow",
    "VerifyResult",
    "send_through_ledger",
]
