"""Shared builders for the budget tests (a plain module: conftest holds only fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from tessera.client.budget import Reservation
from tessera.client.egress import EgressRecord
from tessera.core.policy.model import PrivacyLimits

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
POLICY_HASH = "cd" * 32
DELTA = 1e-6
# ρ(0.5) ≈ 0.00664 and the period's ρ capacity at ε = 1 ≈ 0.02436: exactly three ε = 0.5 jobs fit.
LIMITS = PrivacyLimits(epsilon_per_job=0.5, epsilon_per_period=1.0, period_days=30, delta=DELTA)


class Clock:
    """A settable clock (the ledger reads it whenever a call gives no ``now``)."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def record_for(reservation: Reservation, round_: int = 0, **overrides: object) -> EgressRecord:
    values: dict[str, object] = {
        "job_id": reservation.job_id,
        "round": round_,
        "stage": "masked_input",
        "purpose": "marketing_analytics",
        "analysis": "histogram",
        "fields": ("spend", "region"),
        "shape": (4, 8),
        "noise": {"mechanism": "skellam", "quorum": 3},
        "rho": reservation.rho,
        "epsilon": reservation.epsilon,
        "delta": reservation.delta,
        "policy_hash": POLICY_HASH,
    }
    values.update(overrides)
    return EgressRecord(**values)  # type: ignore[arg-type]


def never_send() -> Callable[[bytes], None]:
    def send(payload: bytes) -> None:
        raise AssertionError("nothing may be sent when the commit fails")

    return send
