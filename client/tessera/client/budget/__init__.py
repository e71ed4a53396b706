"""The node's privacy-budget ledger (DESIGN §4): reserve before data is read, charge in the same
transaction as the egress record, release what is not used; ρ adds, ε is only displayed."""

from __future__ import annotations

from tessera.client.budget._schema import metadata
from tessera.client.budget.ledger import BudgetLedger
from tessera.client.budget.records import (
    DELTA_EXCEEDED,
    EPSILON_PER_JOB_EXCEEDED,
    PERIOD_EXHAUSTED,
    BudgetRefused,
    BudgetStatus,
    Reservation,
    ReservationState,
)

__all__ = [
    "DELTA_EXCEEDED",
    "EPSILON_PER_JOB_EXCEEDED",
    "PERIOD_EXHAUSTED",
    "BudgetLedger",
    "BudgetRefused",
    "BudgetStatus",
    "Reservation",
    "ReservationState",
    "metadata",
]
