"""The coordinator store on SQLite and PostgreSQL: one suite, both backends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tessera.core.errors import Conflict, NotFound
from tessera.core.types import DatasetSchema, FieldSchema, JobSpec, JobState, PolicySummary, Stage, Tier, Veto
from tessera.server.open_stage import OpenStage
from tessera.server.store import SqlStore, TaskState, open_store
from tessera.server.store.models import Base

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SUMMARY = PolicySummary(
    policy_id="bank-v1",
    policy_hash="ab" * 32,
    allowed_analyses=("inventory",),
    allowed_purposes=("research",),
    min_participants=3,
)
SCHEMA = DatasetSchema("customers", (FieldSchema("email", "string", Tier.CORE_SENSITIVE),))


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def test_migrations_match_the_models(store: SqlStore) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_reopening_a_migrated_store_keeps_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    first = open_store(url)
    job = first.create_job(JobSpec(analysis="inventory"), submitted_by="alice", now=T0)
    first.close()
    second = open_store(url)
    assert second.get_job(job.job_id).submitted_by == "alice"
    second.close()


def test_node_upsert_round_trips_policy_and_schema(store: SqlStore) -> None:
    store.upsert_node("bank", node_version="0.1.0", policy=SUMMARY, datasets=[SCHEMA], now=T0)
    later = T0 + timedelta(minutes=5)
    store.upsert_node("bank", node_version="0.1.1", policy=SUMMARY, datasets=[SCHEMA], now=later)
    node = store.get_node("bank")
    assert node.policy == SUMMARY
    assert node.datasets == (SCHEMA,)
    assert node.enrolled_at == T0 and node.last_seen == later and node.node_version == "0.1.1"
    assert store.touch_node("bank", now=later + timedelta(seconds=1))
    assert not store.touch_node("nobody", now=later)
    with pytest.raises(NotFound):
        store.get_node("nobody")


def test_job_lifecycle_and_events(store: SqlStore) -> None:
    spec = JobSpec(
        analysis="inventory",
        dataset="customers",
        purpose="research",
        participants=("bank",),
        params={"k": 3, "names": ("a", "b")},
        deadline=T0 + timedelta(hours=1),
    )
    job = store.create_job(spec, submitted_by="alice", now=T0)
    assert job.state is JobState.PENDING and job.spec == spec
    store.update_job(
        job.job_id, now=T0, state=JobState.RUNNING, participants=("bank",), round=1, event="started"
    )
    done = store.update_job(job.job_id, now=T0, state=JobState.SUCCEEDED, result_json="{}", event="done")
    assert done.state is JobState.SUCCEEDED and done.participants == ("bank",)
    with pytest.raises(Conflict):
        store.update_job(job.job_id, now=T0, state=JobState.RUNNING)
    events = store.events_after(job.job_id, 0)
    assert [e.message for e in events] == ["job submitted", "started", "done"]
    assert store.events_after(job.job_id, events[-1].seq) == []
    with pytest.raises(NotFound):
        store.get_job("missing")


def test_tasks_answer_once_and_expire_with_their_job(store: SqlStore) -> None:
    job = store.create_job(JobSpec(analysis="inventory"), submitted_by="alice", now=T0)
    tasks = store.add_tasks(
        job.job_id,
        round=1,
        stage=Stage.LOCAL_REPORT,
        node_ids=["bank", "telco", "retailer"],
        now=T0,
        deadline=T0 + timedelta(minutes=1),
    )
    assert [t.state for t in store.open_tasks("bank")] == [TaskState.PENDING]
    store.mark_delivered([tasks[0].task_id])
    assert store.get_task(tasks[0].task_id).state is TaskState.DELIVERED
    assert store.answer_task(tasks[0].task_id, answer=b"report")
    assert not store.answer_task(tasks[0].task_id, answer=b"replay")  # a replay changes nothing
    assert store.get_task(tasks[0].task_id).answer == b"report"
    veto = Veto(node_id="telco", code="policy.purpose_not_allowed", reason="no", policy_hash="cd" * 32)
    assert store.answer_task(tasks[1].task_id, answer=None, veto=veto)
    assert store.vetoes_for(job.job_id) == [veto]
    store.update_job(job.job_id, now=T0, state=JobState.FAILED, error="x")
    assert store.get_task(tasks[2].task_id).state is TaskState.EXPIRED
    assert store.open_tasks("retailer") == []


def test_tasks_held_in_memory_are_written_with_their_states_and_vetoes(store: SqlStore) -> None:
    job = store.create_job(JobSpec(analysis="count"), submitted_by="alice", now=T0)
    deadline = T0 + timedelta(minutes=1)
    stage = OpenStage(
        job_id=job.job_id,
        round=2,
        epoch=3,
        stage=Stage.MASKED_INPUT,
        deadline=deadline,
        created_at=T0,
        inputs=dict.fromkeys(("bank", "retailer", "telco"), b"input"),
        round_input=b"{}",
    )
    assert stage.close_task("bank", TaskState.ANSWERED) and not stage.close_task("bank", TaskState.ANSWERED)
    veto = Veto(node_id="telco", code="budget.exhausted", reason="no", policy_hash="cd" * 32)
    stage.close_task("telco", TaskState.VETOED)
    store.record_tasks([stage.record("telco")], created_at=T0, veto=veto)  # a veto is written at once
    stage.written.add("telco")
    assert stage.counts() == (2, 3)
    store.record_tasks(stage.closed_records(), created_at=T0)  # the rest when the stage closes
    tasks = {t.node_id: t for t in store.tasks_for(job.job_id)}
    assert {n: t.state for n, t in tasks.items()} == {
        "bank": TaskState.ANSWERED,
        "retailer": TaskState.EXPIRED,
        "telco": TaskState.VETOED,
    }
    assert tasks["bank"].task_id == stage.record("bank").task_id == f"{job.job_id}-e3-r2-masked_input-bank"
    assert all(t.stage_input == b"" and t.deadline == deadline and t.epoch == 3 for t in tasks.values())
    assert store.vetoes_for(job.job_id) == [veto]
    assert store.open_tasks("retailer") == []


def test_progress_notes_touch_only_running_jobs(store: SqlStore) -> None:
    job = store.create_job(JobSpec(analysis="count"), submitted_by="alice", now=T0)
    with pytest.raises(Conflict):  # not running yet
        store.note_progress(job.job_id, now=T0, event="early")
    store.update_job(job.job_id, now=T0, state=JobState.RUNNING, round=1)
    store.note_progress(job.job_id, now=T0, event="asked", status_detail="waiting", stage=Stage.UNMASK)
    store.note_progress(job.job_id, now=T0, event="next", round=2, done=1, expected=3)
    assert store.get_job(job.job_id).status_detail == "waiting" and store.get_job(job.job_id).round == 2
    events = store.events_after(job.job_id, 0)[-2:]
    assert [(e.message, e.round, e.stage, e.done, e.expected) for e in events] == [
        ("asked", 1, "unmask", 0, 0),
        ("next", 2, "", 1, 3),
    ]
    store.update_job(job.job_id, now=T0, state=JobState.SUCCEEDED)
    with pytest.raises(Conflict):  # ended jobs stay ended
        store.note_progress(job.job_id, now=T0, event="late")


def test_a_round_is_released_once_with_the_drivers_state(store: SqlStore) -> None:
    job = store.create_job(JobSpec(analysis="count"), submitted_by="alice", now=T0)
    store.start_round(job.job_id, round=1, rho=0.25, now=T0)
    store.start_round(job.job_id, round=1, rho=0.25, now=T0)  # again after a restart: one row
    later = T0 + timedelta(seconds=3)
    store.release_round(
        job.job_id,
        round=1,
        now=later,
        survivors=["bank", "telco"],
        dropped=["retailer"],
        metric_json='{"step": 1.0}',
        result_json="{}",
        driver_state='{"round": 2}',
    )
    store.start_round(job.job_id, round=1, rho=0.25, now=later)  # a released round stays released
    store.start_round(job.job_id, round=2, rho=0.5, now=later)
    first, second = store.rounds_for(job.job_id)
    assert (first.state, first.rho, first.released_at, first.survivors, first.dropped) == (
        "released",
        0.25,
        later,
        ("bank", "telco"),
        ("retailer",),
    )
    assert (second.round, second.state, second.rho, second.released_at) == (2, "running", 0.5, None)
    assert store.get_job(job.job_id).driver_state == '{"round": 2}'
    with pytest.raises(NotFound):
        store.release_round(
            job.job_id,
            round=3,
            now=later,
            survivors=[],
            dropped=[],
            metric_json="",
            result_json="",
            driver_state="",
        )


def test_concurrent_answers_close_a_task_exactly_once(store: SqlStore) -> None:
    job = store.create_job(JobSpec(analysis="inventory"), submitted_by="alice", now=T0)
    (task,) = store.add_tasks(
        job.job_id, round=1, stage=Stage.LOCAL_REPORT, node_ids=["bank"], now=T0, deadline=None
    )
    wins: list[bool] = []
    barrier = threading.Barrier(4)

    def answer(i: int) -> None:
        barrier.wait()
        wins.append(store.answer_task(task.task_id, answer=f"a{i}".encode()))

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False, False, False, True]


def test_audit_log_newest_first(store: SqlStore) -> None:
    store.audit(actor="alice", role="analyst", action="job.submit", now=T0, outcome="accepted")
    store.audit(actor="root", role="admin", action="job.cancel", now=T0 + timedelta(seconds=1))
    assert [a.actor for a in store.list_audit(limit=10)] == ["root", "alice"]


def test_egress_heads_are_kept_first_hash_wins(store: SqlStore) -> None:
    assert store.anchor_egress_head("bank", 0, "", now=T0) == (0, "")
    assert store.anchor_egress_head("bank", 3, "a" * 64, now=T0) == (3, "a" * 64)
    # The same seq with another hash (a re-chained ledger) does not replace what was anchored.
    assert store.anchor_egress_head("bank", 3, "b" * 64, now=T0) == (3, "a" * 64)
    assert store.anchor_egress_head("bank", 5, "c" * 64, now=T0 + timedelta(seconds=2)) == (5, "c" * 64)
    # A head that went back (a cut tail) is still answered with the latest anchored one.
    assert store.anchor_egress_head("bank", 4, "d" * 64, now=T0) == (5, "c" * 64)
    assert [(s, h[0]) for s, h, _ in store.egress_anchors("bank")] == [(3, "a"), (4, "d"), (5, "c")]
    assert store.egress_anchors("telco") == []
