"""Planning a job before it exists: which nodes to ask, the DP quorum, and why a job is refused.

A job the coordinator refuses is never created, so everything here runs before the store is
written: the nodes' published policy summaries and budgets decide who is asked, and the first
round is planned whole (``initial_state``) so that parameters the nodes would refuse stop it here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.registry import get_program
from tessera.core.errors import Conflict, InvalidRequest
from tessera.core.rounds import analysis_spec, round_param
from tessera.core.types import JobSpec
from tessera.server.budget_mirror import BudgetView, node_budgets, rho_for
from tessera.server.dp_job import DpJob, DriverState
from tessera.server.store import NodeRecord, SqlStore

HARD_MIN_PARTICIPANTS = 3  # with two nodes an aggregate reveals the other node's vector
DEFAULT_MAX_CUSTOMERS = 10_000_000  # per node, sizes the modular bit width of DP rounds


def plan_participants(
    store: SqlStore,
    spec: JobSpec,
    info: AnalysisInfo,
    *,
    now: datetime,
    online: Callable[[NodeRecord, datetime], bool],
) -> list[NodeRecord]:
    """The nodes to ask: enrolled, connected, and willing by the policy summary and budget they
    published. Named participants must all qualify; otherwise the job is refused here, naming
    each node left out and why, instead of waiting out a stage for nodes that cannot answer."""
    enrolled = {n.node_id: n for n in store.list_nodes()}
    if spec.participants:
        unknown = [p for p in spec.participants if p not in enrolled]
        if unknown:
            raise InvalidRequest(f"these nodes have never enrolled: {', '.join(sorted(unknown))}")
        chosen = [enrolled[p] for p in spec.participants]
    else:
        chosen = list(enrolled.values())
    if not chosen:
        raise InvalidRequest("no node has enrolled with this coordinator yet")
    needed = max(info.min_nodes, spec.min_participants)
    if info.differentially_private:
        needed = max(needed, HARD_MIN_PARTICIPANTS, *(n.policy.min_participants for n in chosen))
    # Refuse hopeless jobs early, from the policy summaries the nodes published; each node
    # still checks the job against its own policy and may veto.
    refusals: dict[str, str] = {}
    for node in chosen:
        if not online(node, now):
            refusals[node.node_id] = "is offline"
        elif (why := _summary_refusal(node, spec, info)) is not None:
            refusals[node.node_id] = why
    if info.differentially_private:
        willing = [n for n in chosen if n.node_id not in refusals]
        for view in node_budgets(store, willing, now=now):
            if not view.admits(epsilon=spec.epsilon, delta=spec.delta):
                refusals[view.node_id] = _budget_refusal(view, spec)
    usable = sorted((n for n in chosen if n.node_id not in refusals), key=lambda n: n.node_id)
    why = "; ".join(f"{node} {reason}" for node, reason in sorted(refusals.items()))
    if len(usable) < needed:
        raise Conflict(
            f"only {len(usable)} of {len(chosen)} node(s) can take {spec.analysis!r} for purpose "
            f"{spec.purpose!r} at ε {spec.epsilon:g} and at least {needed} are needed: {why}"
        )
    if spec.participants and refusals:
        raise Conflict(f"not every node named for the job can take it: {why}")
    return usable


def initial_state(spec: JobSpec, nodes: Sequence[NodeRecord]) -> DriverState:
    """The DP job's quorum, margins and first round, checked before the job exists."""
    program = get_program(spec.analysis)
    threshold = survivors_threshold(spec, nodes)
    collusion = max((n.policy.collusion_tolerance for n in nodes), default=0)
    if threshold - collusion < 1:
        raise Conflict(
            f"a collusion tolerance of {collusion} leaves no honest share in a quorum of {threshold}"
        )
    state = DriverState(
        round=1,
        public=dict(program.start(analysis_spec(spec))),
        live=tuple(n.node_id for n in nodes),
        threshold=threshold,
        collusion=collusion,
        max_customers=round_param(spec, "max_customers", DEFAULT_MAX_CUSTOMERS),
        min_cohort_size=max(node.policy.min_cohort_size for node in nodes),
    )
    # Plans the first round now: a job the nodes would refuse for its parameters never starts.
    DpJob("check", spec, program, nodes, state).begin_epoch()
    return state


def drops_text(tolerated: int) -> str:
    if tolerated <= 0:
        return "no dropout tolerated"
    return f"tolerates {tolerated} dropout{'s' if tolerated > 1 else ''}"


def survivors_threshold(spec: JobSpec, nodes: Sequence[NodeRecord]) -> int:
    """The quorum t: the fewest nodes whose noisy sum may be released.

    More than ``(n + c)/2`` with ``c`` the largest collusion tolerance of the participants (the
    consistency check's bound against a coordinator that lies about who dropped), at least every
    participant's ``min_participants``, and no lower than the number of nodes minus
    ``max_dropouts`` (job parameter, default 1): noise shares are sized for t - c, so a smaller t
    costs accuracy when everyone stays.
    """
    n = len(nodes)
    max_dropouts = round_param(spec, "max_dropouts", 1)
    collusion = max((x.policy.collusion_tolerance for x in nodes), default=0)
    floor = max(
        (n + collusion) // 2 + 1,
        spec.min_participants,
        HARD_MIN_PARTICIPANTS,
        *(x.policy.min_participants for x in nodes),
    )
    if floor > n:
        raise Conflict(f"the round needs at least {floor} nodes and only {n} take part")
    return max(floor, n - max_dropouts)


def _summary_refusal(node: NodeRecord, spec: JobSpec, info: AnalysisInfo) -> str | None:
    """Why the node's published policy refuses the job (None: it allows it)."""
    policy = node.policy
    if spec.analysis not in policy.allowed_analyses:
        return f"does not allow analysis {spec.analysis!r}"
    if spec.purpose and spec.purpose not in policy.allowed_purposes:
        return f"does not allow purpose {spec.purpose!r}"
    if info.differentially_private and spec.epsilon > policy.epsilon_per_job:
        return f"caps ε per job at {policy.epsilon_per_job:g}"
    return None


def _budget_refusal(view: BudgetView, spec: JobSpec) -> str:
    rho_cost = float(rho_for(spec.epsilon, spec.delta))
    return (
        f"has too little budget left this {view.period_days}-day period "
        f"(the job costs ρ {rho_cost:.3g}, ρ {view.rho_left:.3g} is left)"
    )
