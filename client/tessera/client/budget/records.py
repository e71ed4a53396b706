"""What the budget ledger hands out: reservations, the period status, refusal codes.

Units: ``rho`` is zCDP ρ (it adds over releases); ``epsilon``/``delta`` are the (ε, δ) a job asked
for or, in :class:`BudgetStatus`, the ε that the composed ρ converts to at the policy's δ (for
display: never add ε values yourself).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tessera.core.errors import PolicyViolation

EPSILON_PER_JOB_EXCEEDED = "budget.epsilon_per_job_exceeded"
DELTA_EXCEEDED = "budget.delta_exceeded"
PERIOD_EXHAUSTED = "budget.period_exhausted"


class BudgetRefused(PolicyViolation):
    """A job the node's budget cannot take: the node's veto, raised before any data is read.

    ``code`` is one of ``budget.epsilon_per_job_exceeded``, ``budget.delta_exceeded`` and
    ``budget.period_exhausted``; the message says, in one sentence, what is left.
    """

    code = PERIOD_EXHAUSTED


class ReservationState(StrEnum):
    RESERVED = "reserved"
    SPENT = "spent"
    RELEASED = "released"
    EXPIRED = "expired"  # never stored: a reservation whose time ran out before it was spent


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget held for one job on one dataset (at most one per ``(job_id, dataset)``).

    ``reservation_id`` is the ledger's row id; ``state`` is as of the call that returned this
    object. ``settled_at`` is when it was spent or released (``None`` while reserved).
    """

    reservation_id: int
    job_id: str
    dataset: str
    epsilon: float
    delta: float
    rho: float
    state: ReservationState
    policy_hash: str
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None = None
    egress_seq: int | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A dataset's budget over the rolling period ``(period_start, period_end]``.

    ``epsilon_spent`` converts the spent ρ at ``delta`` (or is the basic-composition Σε when every
    charge was pure ε-DP and that is smaller); ``epsilon_left`` is the period limit minus the ε of
    everything spent *and* reserved; ``largest_job_epsilon`` is the largest single new job (at the
    policy's δ, within the per-job limit) that would be accepted now — often more useful than
    ``epsilon_left`` because ρ, not ε, adds.
    """

    dataset: str
    rho_spent: float
    rho_reserved: float
    rho_limit: float
    epsilon_spent: float
    epsilon_left: float
    largest_job_epsilon: float
    epsilon_limit: float
    delta: float
    period_start: datetime
    period_end: datetime
    releases: int
    reservations: int
