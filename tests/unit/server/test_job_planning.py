"""The job service's analyst-facing rules on a real SQLite store: who may cancel, which nodes are
asked, and refusals that name each node left out and why."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tessera.core.errors import AuthError, Conflict, InvalidRequest
from tessera.core.types import (
    DatasetSchema,
    FieldSchema,
    JobSpec,
    JobState,
    PeerIdentity,
    PolicySummary,
    Tier,
)
from tessera.server.jobs import JobService
from tessera.server.notifier import Notifier
from tessera.server.store import SqlStore, open_store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NODES = ("bank", "insurer", "retailer", "telco")


def _summary(**changes: object) -> PolicySummary:
    base: dict[str, object] = {
        "policy_id": "p-v1",
        "policy_hash": "ab" * 32,
        "allowed_analyses": ("inventory", "count"),
        "allowed_purposes": ("research",),
        "epsilon_per_job": 1.0,
        "epsilon_per_period": 5.0,
        "period": "30d",
        "delta": 1e-6,
        "min_participants": 3,
    }
    base.update(changes)
    return PolicySummary(**base)  # type: ignore[arg-type]


def _peer(name: str, role: str = "analyst") -> PeerIdentity:
    return PeerIdentity(name=name, kind="analyst", role=role, serial=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def _service(
    store: SqlStore, *, offline: frozenset[str] = frozenset(), left: frozenset[str] = frozenset()
) -> JobService:
    return JobService(
        store,
        clock=lambda: T0,
        notifier=Notifier(),
        connected=lambda node: node not in offline | left,
        left=lambda node: node in left,
    )


def _enrol(store: SqlStore, name: str, *, seen: datetime = T0, **changes: object) -> None:
    store.upsert_node(name, node_version="t", policy=_summary(**changes), datasets=[], now=seen)


def test_only_the_submitter_or_an_admin_may_cancel(store: SqlStore) -> None:
    for name in NODES:
        _enrol(store, name)
    jobs = _service(store)
    spec = JobSpec(analysis="inventory", dataset="customers", purpose="research")
    job = jobs.submit(spec, actor=_peer("alice"))
    with pytest.raises(AuthError, match="only the analyst who submitted"):
        jobs.cancel(job.job_id, actor=_peer("mallory"))
    assert store.get_job(job.job_id).state is JobState.RUNNING
    refused = [a.outcome for a in store.list_audit() if a.action == "job.cancel"]
    assert refused == ["refused: not the submitter"]
    assert jobs.cancel(job.job_id, actor=_peer("alice")).state is JobState.CANCELLED
    other = jobs.submit(spec, actor=_peer("alice"))
    assert jobs.cancel(other.job_id, actor=_peer("root", role="admin")).state is JobState.CANCELLED


def test_offline_nodes_are_not_asked(store: SqlStore) -> None:
    silent_since = T0 - timedelta(minutes=5)
    for name in NODES:
        _enrol(store, name, seen=silent_since if name == "telco" else T0)
    jobs = _service(store, offline=frozenset({"telco"}))
    job = jobs.submit(JobSpec(analysis="inventory", purpose="research"), actor=_peer("alice"))
    assert job.participants == ("bank", "insurer", "retailer")
    # Named explicitly, an offline node refuses the job at once instead of at the stage deadline.
    named = JobSpec(analysis="inventory", purpose="research", participants=NODES)
    with pytest.raises(Conflict, match="telco is offline"):
        jobs.submit(named, actor=_peer("alice"))


def test_a_node_whose_stream_closed_is_offline_though_its_last_beat_is_recent(store: SqlStore) -> None:
    for name in NODES:
        _enrol(store, name)  # every node beat just now
    jobs = _service(store, left=frozenset({"telco"}))  # telco's process stopped a moment ago
    job = jobs.submit(JobSpec(analysis="inventory", purpose="research"), actor=_peer("alice"))
    assert job.participants == ("bank", "insurer", "retailer")


def test_a_node_that_enrolled_but_has_not_opened_its_stream_yet_is_online(store: SqlStore) -> None:
    for name in NODES:
        _enrol(store, name)  # heard from just now
    jobs = _service(store, offline=frozenset(NODES))  # no stream open yet
    job = jobs.submit(JobSpec(analysis="inventory", purpose="research"), actor=_peer("alice"))
    assert job.participants == NODES


def test_a_hopeless_job_names_each_node_and_its_reason(store: SqlStore) -> None:
    _enrol(store, "bank", epsilon_per_job=0.5)
    _enrol(store, "insurer", allowed_purposes=("marketing",))
    _enrol(store, "retailer", epsilon_per_period=0.5)  # a job of ε 1 can never fit its period
    _enrol(store, "telco", seen=T0 - timedelta(hours=1))
    jobs = _service(store, offline=frozenset({"telco"}))
    spec = JobSpec(analysis="count", dataset="customers", purpose="research", epsilon=1.0, delta=1e-6)
    with pytest.raises(Conflict) as info:
        jobs.submit(spec, actor=_peer("alice"))
    text = info.value.message
    assert "only 0 of 4 node(s)" in text and "at least 3 are needed" in text
    assert "bank caps ε per job at 0.5" in text
    assert "insurer does not allow purpose 'research'" in text
    assert "retailer has too little budget left this 30-day period (the job costs ρ" in text
    assert "telco is offline" in text
    assert store.list_jobs(limit=10) == []  # refused jobs are never created


def test_absurd_clip_bounds_are_refused_before_the_job_exists(store: SqlStore) -> None:
    spend = DatasetSchema("customers", (FieldSchema("monthly_spend", "float", Tier.GENERAL_SENSITIVE),))
    for name in NODES:
        store.upsert_node(
            name, node_version="t", policy=_summary(allowed_analyses=("sum",)), datasets=[spend], now=T0
        )
    jobs = _service(store)
    params = {"field": "monthly_spend", "lower": 0.0, "upper": 1e308}
    spec = JobSpec(
        analysis="sum", dataset="customers", purpose="research", epsilon=1.0, delta=1e-6, params=params
    )
    # Once accepted, it failed inside the round (ZeroDivisionError) after every node was charged.
    with pytest.raises(InvalidRequest, match="must lie within"):
        jobs.submit(spec, actor=_peer("alice"))
    assert store.list_jobs(limit=10) == []
    fine = JobSpec(**{**_fields(spec), "params": {**params, "upper": 300.0}})
    assert jobs.submit(fine, actor=_peer("alice")).state is JobState.RUNNING


def _fields(spec: JobSpec) -> dict[str, object]:
    return {f: getattr(spec, f) for f in ("analysis", "dataset", "purpose", "epsilon", "delta")}


@pytest.mark.parametrize(
    ("nodes", "max_dropouts", "said"),
    [
        (3, 1, "quorum 3 (no dropout tolerated)"),  # the participant floor leaves no room to drop
        (4, 1, "quorum 3 (tolerates 1 dropout)"),
        (4, 0, "quorum 4 (no dropout tolerated)"),
    ],
)
def test_each_dp_job_states_how_many_drops_it_tolerates_before_it_starts(
    store: SqlStore, nodes: int, max_dropouts: int, said: str
) -> None:
    spend = DatasetSchema("customers", (FieldSchema("monthly_spend", "float", Tier.GENERAL_SENSITIVE),))
    for name in NODES[:nodes]:
        store.upsert_node(
            name, node_version="t", policy=_summary(allowed_analyses=("sum",)), datasets=[spend], now=T0
        )
    params = {"field": "monthly_spend", "lower": 0.0, "upper": 100.0, "max_dropouts": max_dropouts}
    spec = JobSpec(
        analysis="sum", dataset="customers", purpose="research", epsilon=1.0, delta=1e-6, params=params
    )
    job = _service(store).submit(spec, actor=_peer("alice"))
    (submitted,) = [a for a in store.list_audit() if a.action == "job.submit"]
    assert said in submitted.outcome
    assert any(said in e.message for e in store.events_after(job.job_id, 0))  # what a watch shows
