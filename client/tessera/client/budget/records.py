"""What the budget ledger hands out: reservations, their round charges, the node's period status.

Units: ``rho`` is zCDP ρ (it adds over releases and over the rounds of a job); ``epsilon``/``delta``
are the (ε, δ) a job asked for or, in :class:`BudgetStatus`, the ε that the composed ρ converts to
at the policy's δ (for display: never add ε values yourself).

The budget belongs to the node's customer population as a whole (DESIGN §4): every release of any
dataset is charged to the same budget. ``dataset`` on a reservation only records what the job read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tessera.core.errors import PolicyViolation

EPSILON_PER_JOB_EXCEEDED = "budget.epsilon_per_job_exceeded"
DELTA_EXCEEDED = "budget.delta_exceeded"
PERIOD_EXHAUSTED = "budget.period_exhausted"
RESERVATION_EXCEEDED = "budget.reservation_exceeded"


class BudgetRefused(PolicyViolation):
    """A release the node's budget cannot take: the node's veto, raised before anything is written.

    ``code`` is one of ``budget.epsilon_per_job_exceeded``, ``budget.delta_exceeded``,
    ``budget.period_exhausted`` (at reserve, or when an expired reservation is charged) and
    ``budget.reservation_exceeded`` (a round would spend more than its job still holds); the
    message says, in one sentence, what is left.
    """

    code = PERIOD_EXHAUSTED


class ReservationState(StrEnum):
    RESERVED = "reserved"  # open: rounds may still be charged
    SPENT = "spent"  # closed: everything reserved was charged
    RELEASED = "released"  # closed early: the charged rounds stay spent, the rest was given back
    EXPIRED = "expired"  # never stored: an open reservation whose time ran out


@dataclass(frozen=True, slots=True)
class RoundCharge:
    """ρ spent by one round of a job (one row per round, however often the round was re-sent).

    ``charged_at`` places the charge in the rolling period; ``attempts`` counts the payloads sent
    for the round (a re-run after a coordinator restart adds an egress entry, never a charge);
    ``egress_seq`` is the egress entry of the latest attempt.
    """

    round_no: int
    rho: float
    epsilon: float
    charged_at: datetime
    egress_seq: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """Budget held for one job (at most one per ``job_id``), and the rounds charged to it.

    ``rho`` is the job's total reserved ρ (all its rounds composed); ``rounds`` how many rounds it
    was priced for; ``dataset`` what it reads (a recorded attribute, not a budget of its own).
    ``state`` is as of the call that returned this object; ``expires_at`` is renewed by every
    charge; ``settled_at`` is when it was closed (spent or released; ``None`` while open).
    ``egress_seq`` is the egress entry of the latest round charged.
    """

    reservation_id: int
    job_id: str
    dataset: str | None
    epsilon: float
    delta: float
    rho: float
    state: ReservationState
    policy_hash: str
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None = None
    egress_seq: int | None = None
    rounds: int = 1
    charges: tuple[RoundCharge, ...] = ()

    @property
    def rho_spent(self) -> float:
        return math.fsum(c.rho for c in self.charges)

    @property
    def rho_left(self) -> float:
        """ρ still held for later rounds (0 once the reservation is closed)."""
        if self.state in (ReservationState.SPENT, ReservationState.RELEASED):
            return 0.0
        return max(0.0, self.rho - self.rho_spent)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """The node's one budget over the rolling period ``(period_start, period_end]``.

    ``rho_spent`` sums the round charges made in the period (whatever dataset they read);
    ``rho_reserved`` the unspent remainder of open, unexpired reservations. ``epsilon_spent``
    converts the spent ρ at ``delta`` (or is the basic-composition Σε when every charge was pure
    ε-DP and that is smaller); ``epsilon_left`` is the period limit minus the ε of everything spent
    *and* reserved; ``largest_job_epsilon`` is the largest single new job (at the policy's δ, within
    the per-job limit) that would be accepted now — often more useful than ``epsilon_left`` because
    ρ, not ε, adds. ``releases`` counts round charges, ``reservations`` open reservations.
    """

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
