"""Checks of what callers hand the budget ledger, made before any lock is taken (fail closed)."""

from __future__ import annotations

import math

from tessera.client.budget._accounting import RHO_SLACK
from tessera.client.budget.records import (
    DELTA_EXCEEDED,
    EPSILON_PER_JOB_EXCEEDED,
    BudgetRefused,
    Reservation,
)
from tessera.client.egress import EgressRecord
from tessera.core.errors import InvalidRequest
from tessera.core.policy.model import PrivacyLimits

_MAX_NAME = 128


def check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_NAME:
        raise InvalidRequest(f"a budget {what} must be text of 1 to {_MAX_NAME} characters")
    return value


def check_job_limits(limits: PrivacyLimits, *, epsilon: float, delta: float) -> None:
    """The policy's per-job limits; a job over them is vetoed before anything is reserved."""
    if epsilon > limits.epsilon_per_job:
        raise BudgetRefused(
            f"The job asks for epsilon {epsilon:g} but this node allows at most "
            f"{limits.epsilon_per_job:g} per job, so nothing was reserved.",
            code=EPSILON_PER_JOB_EXCEEDED,
        )
    if delta > limits.delta:
        raise BudgetRefused(
            f"The job asks for delta {delta:g} but this node allows at most {limits.delta:g}, "
            "so nothing was reserved.",
            code=DELTA_EXCEEDED,
        )


def check_release(reservation: Reservation, record: EgressRecord, *, rho: float) -> None:
    """A charge of ``rho`` for ``record``: the record must be the job's and cost at most ``rho``."""
    if not isinstance(reservation, Reservation):
        raise TypeError("reservation must be a Reservation")
    if not isinstance(record, EgressRecord):
        raise TypeError("record must be an EgressRecord")
    if record.job_id != reservation.job_id:
        raise InvalidRequest("the egress record belongs to another job than the reservation")
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not math.isfinite(rho) or rho <= 0:
        raise InvalidRequest("a round's rho must be a positive finite number")
    if record.rho > rho * (1 + RHO_SLACK):
        raise InvalidRequest("the release costs more privacy budget than the round is charged")


def check_round(round_no: object, record: EgressRecord) -> int:
    if isinstance(round_no, bool) or not isinstance(round_no, int) or round_no < 0:
        raise InvalidRequest("a round number must be a whole number of at least 0")
    if record.round != round_no:
        raise InvalidRequest("the egress record belongs to another round than the one charged")
    return round_no
