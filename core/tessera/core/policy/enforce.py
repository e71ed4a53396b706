"""``check_job``: the node's decision whether a job may run under its policy (fail closed).

Runs before any data is touched. A refusal is a ``PolicyViolation`` with a stable code and one
sentence an analyst can read; it becomes the node's veto. Codes:

- ``policy.partner_mismatch``: the policy governs another node than the one checking
- ``policy.analysis_not_allowed`` / ``policy.purpose_not_allowed``
- ``policy.unknown_dataset``: the dataset is missing from the job or not classified here
- ``policy.epsilon_required``: a DP analysis asked for ε = 0 (only ``inventory`` may)
- ``policy.epsilon_per_job_exceeded`` / ``policy.delta_exceeded``
- ``policy.too_few_participants`` / ``policy.partner_not_allowed``

The per-period budget is not checked here: it needs the node's ledger (DESIGN §4).
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.core.errors import PolicyViolation
from tessera.core.policy._schema import NON_DP_ANALYSES
from tessera.core.policy.model import Policy
from tessera.core.types import JobSpec


def _refuse(code: str, message: str) -> PolicyViolation:
    return PolicyViolation(message, code=f"policy.{code}")


def _check_privacy(policy: Policy, spec: JobSpec) -> None:
    limits = policy.privacy
    if spec.epsilon <= 0:
        raise _refuse(
            "epsilon_required",
            f'analysis "{spec.analysis}" needs a privacy budget; give the job an epsilon above 0 '
            f"(at most {limits.epsilon_per_job} on node {policy.partner}).",
        )
    if spec.epsilon > limits.epsilon_per_job:
        raise _refuse(
            "epsilon_per_job_exceeded",
            f"the job asks for epsilon {spec.epsilon} but node {policy.partner} allows at most "
            f"{limits.epsilon_per_job} per job.",
        )
    if spec.delta > limits.delta:
        raise _refuse(
            "delta_exceeded",
            f"the job asks for delta {spec.delta} but node {policy.partner} allows at most {limits.delta}.",
        )


def _check_participants(policy: Policy, spec: JobSpec, participants: Sequence[str], node_name: str) -> None:
    distinct = set(participants)
    needed = max(policy.min_participants, spec.min_participants)
    if len(distinct) < needed:
        raise _refuse(
            "too_few_participants",
            f"the job has {len(distinct)} participating node(s) but node {policy.partner} "
            f"takes part only with at least {needed}.",
        )
    if policy.any_partner:
        return
    allowed = set(policy.allowed_partners)
    for other in sorted(distinct - {node_name}):
        if other not in allowed:
            raise _refuse(
                "partner_not_allowed",
                f'node {policy.partner} may not compute with partner "{other}"; its policy does not list it.',
            )


def check_job(policy: Policy, spec: JobSpec, *, node_name: str, participants: Sequence[str]) -> None:
    """Raise ``PolicyViolation`` unless ``spec`` may run on ``node_name`` under ``policy``.

    ``participants`` are the names of every node taking part in the job, this node included.
    ``inventory`` spends no budget, so only its analysis, purpose and participant rules apply.
    """
    if node_name != policy.partner:
        raise _refuse(
            "partner_mismatch",
            f'node "{node_name}" is checking a job against the policy of "{policy.partner}"; '
            "load this node's own policy file.",
        )
    if spec.analysis not in policy.allowed_analyses:
        raise _refuse(
            "analysis_not_allowed", f'analysis "{spec.analysis}" is not allowed on node {policy.partner}.'
        )
    if not spec.purpose:
        raise _refuse(
            "purpose_not_allowed", f"the job states no purpose; node {policy.partner} requires one."
        )
    if spec.purpose not in policy.allowed_purposes:
        raise _refuse(
            "purpose_not_allowed", f'purpose "{spec.purpose}" is not allowed on node {policy.partner}.'
        )
    if spec.analysis not in NON_DP_ANALYSES:
        if not spec.dataset:
            raise _refuse("unknown_dataset", "the job names no dataset; say which dataset it analyses.")
        if spec.dataset not in {d.name for d in policy.datasets}:
            raise _refuse(
                "unknown_dataset", f'dataset "{spec.dataset}" is not classified on node {policy.partner}.'
            )
        _check_privacy(policy, spec)
    if spec.analysis == "overlap":
        # Pairwise by design (a count of two sets, not a sum that two nodes could undo): the node
        # checks each partner of each pair against allowed_partners and its overlap rules.
        return
    _check_participants(policy, spec, participants, node_name)
