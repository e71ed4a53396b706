"""The node's privacy-budget ledger (DESIGN §4): one budget per node for all its customers; a job's
total is reserved before data is read, each round is charged in the same transaction as its egress
record, what a job does not use is released; ρ adds, ε is only displayed."""

from __future__ import annotations

from tessera.client.budget._chain import check_engine as check_budget_chain
from tessera.client.budget._schema import metadata
from tessera.client.budget.ledger import BudgetLedger
from tessera.client.budget.records import (
    DELTA_EXCEEDED,
    EPSILON_PER_JOB_EXCEEDED,
    PERIOD_EXHAUSTED,
    RESERVATION_EXCEEDED,
    BudgetRefused,
    BudgetStatus,
    Reservation,
    ReservationState,
    RoundCharge,
)

__all__ = [
    "DELTA_EXCEEDED",
    "EPSILON_PER_JOB_EXCEEDED",
    "PERIOD_EXHAUSTED",
    "RESERVATION_EXCEEDED",
    "BudgetLedger",
    "BudgetRefused",
    "BudgetStatus",
    "Reservation",
    "ReservationState",
    "RoundCharge",
    "check_budget_chain",
    "metadata",
]
