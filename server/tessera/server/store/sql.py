"""SQLAlchemy implementation of the coordinator store (SQLite file by default, PostgreSQL by URL)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Select,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, defer, sessionmaker
from sqlalchemy.sql.dml import Insert

from tessera.core import serde
from tessera.core.errors import Conflict, NotFound, StoreError, Unavailable
from tessera.core.types import DatasetSchema, JobSpec, JobState, PolicySummary, Stage, Veto
from tessera.server.store.migrate import upgrade
from tessera.server.store.models import (
    AuditRow,
    EgressAnchorRow,
    EventRow,
    JobRow,
    NodeRow,
    RoundRow,
    TaskRow,
)
from tessera.server.store.records import (
    ROUND_CHARGED,
    AuditRecord,
    EventRecord,
    JobRecord,
    NodeRecord,
    RoundRecord,
    TaskRecord,
    TaskState,
    task_id_of,
)
from tessera.v1 import common_pb2, node_pb2


def _utc(value: datetime) -> datetime:
    # SQLite drops the zone; everything is stored in UTC, so put it back.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@contextmanager
def _store_errors() -> Iterator[None]:
    """Database failures as the store's errors."""
    try:
        yield
    except OperationalError:
        raise Unavailable("the coordinator database is unavailable") from None
    except SQLAlchemyError as exc:
        # The driver's text may quote SQL parameters: keep only the error's type.
        raise StoreError(f"the coordinator store failed ({type(exc).__name__})") from None


@functools.lru_cache(maxsize=256)
def _spec(spec_pb: bytes) -> JobSpec:
    """A job's spec from its stored bytes. Specs never change and are read on every answer (a spec
    may list thousands of group labels), so each distinct one is parsed once."""
    return serde.job_spec_from_pb(common_pb2.JobSpec.FromString(spec_pb))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets watchers read while the job engine writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a killed process (the WAL is in the OS's hands); only a power
    # loss may undo the last commits, which a restart then redoes (a round re-run in a fresh epoch
    # is charged once by the nodes). One fsync per checkpoint instead of one per answer.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StoreError(f"cannot use the database URL: {type(exc).__name__}") from None
    return engine


def open_store(url: str) -> SqlStore:
    """Open (and migrate to the newest schema) the store at ``url``."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except OperationalError:
        raise Unavailable("the coordinator database cannot be reached or opened") from None
    return SqlStore(engine)


_TASKS: Table = TaskRow.__table__  # type: ignore[assignment]
_ROUNDS: Table = RoundRow.__table__  # type: ignore[assignment]
_JOBS: Table = JobRow.__table__  # type: ignore[assignment]
_EVENTS: Table = EventRow.__table__  # type: ignore[assignment]
# A task without its payload columns, for reads made once per node message.
_HEAD = [c for c in _TASKS.c if c.name not in ("stage_input", "round_input", "answer_pb")]


def _open_query(node_id: str) -> Select[Any]:
    return (
        select(_TASKS)
        .where(_TASKS.c.node_id == node_id)
        .where(_TASKS.c.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
        .order_by(_TASKS.c.created_at, _TASKS.c.task_id)
    )


def _task_row(row: Row[Any]) -> TaskRecord:
    """A task from a Core row (payload columns absent from the row read as empty)."""
    fields = row._mapping
    return TaskRecord(
        task_id=fields["task_id"],
        job_id=fields["job_id"],
        node_id=fields["node_id"],
        round=fields["round"],
        epoch=fields["epoch"] or 0,
        stage=Stage(fields["stage"]),
        state=TaskState(fields["state"]),
        stage_input=fields.get("stage_input") or b"",
        round_input=fields.get("round_input") or b"",
        deadline=_utc(fields["deadline"]) if fields["deadline"] else None,
        answer=fields.get("answer_pb"),
    )


# Columns a task's bookkeeping never needs (a stage input can be megabytes: rosters, shares).
_NO_PAYLOAD = (defer(TaskRow.stage_input), defer(TaskRow.round_input), defer(TaskRow.answer_pb))


class SqlStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _core(self) -> Iterator[Connection]:
        """A Core transaction: for the calls made once per node message (no ORM overhead)."""
        with _store_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with _store_errors(), self._sessions.begin() as session:
            yield session

    # -- nodes ---------------------------------------------------------------------------------

    def upsert_node(
        self,
        node_id: str,
        *,
        node_version: str,
        policy: PolicySummary,
        datasets: Sequence[DatasetSchema],
        now: datetime,
        cert_pem: str = "",
    ) -> NodeRecord:
        policy_pb = serde.policy_summary_to_pb(policy).SerializeToString(deterministic=True)
        datasets_pb = node_pb2.InventoryReport(
            datasets=[serde.dataset_to_pb(d) for d in datasets]
        ).SerializeToString(deterministic=True)
        with self._tx() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                row = NodeRow(node_id=node_id, enrolled_at=now)
                s.add(row)
            row.node_version = node_version
            row.last_seen = now
            row.policy_hash = policy.policy_hash
            row.policy_pb = policy_pb
            row.datasets_pb = datasets_pb
            row.cert_pem = cert_pem
            s.flush()
            return self._node(row)

    def touch_node(self, node_id: str, *, now: datetime) -> bool:
        """Record a heartbeat; False when the node never enrolled (it must enrol again)."""
        with self._tx() as s:
            result = s.execute(update(NodeRow).where(NodeRow.node_id == node_id).values(last_seen=now))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def anchor_egress_head(self, node_id: str, seq: int, hash_hex: str, *, now: datetime) -> tuple[int, str]:
        """Keep a node's egress head (the first hash received for each seq wins) and return the
        latest head kept for the node, ``(0, "")`` if none: what the node stores as acknowledged."""
        with self._tx() as s:
            if seq > 0 and len(hash_hex) == 64 and s.get(EgressAnchorRow, (node_id, seq)) is None:
                s.add(EgressAnchorRow(node_id=node_id, seq=seq, hash=hash_hex, received_at=now))
                s.flush()
            row = s.scalars(
                select(EgressAnchorRow)
                .where(EgressAnchorRow.node_id == node_id)
                .order_by(EgressAnchorRow.seq.desc())
                .limit(1)
            ).first()
            return (row.seq, row.hash) if row is not None else (0, "")

    def egress_anchors(self, node_id: str) -> list[tuple[int, str, datetime]]:
        """Every head anchored for ``node_id``: (seq, hash, received at), by seq."""
        with self._tx() as s:
            rows = s.scalars(
                select(EgressAnchorRow)
                .where(EgressAnchorRow.node_id == node_id)
                .order_by(EgressAnchorRow.seq)
            )
            return [(r.seq, r.hash, _utc(r.received_at)) for r in rows]

    def touch_nodes(self, seen: Mapping[str, datetime]) -> None:
        """Record many heartbeats in one transaction; never moves a node's last-seen backwards."""
        if not seen:
            return
        statement = (
            update(NodeRow)
            .where(NodeRow.node_id == bindparam("b_node"))
            .where(NodeRow.last_seen < bindparam("b_seen"))
            .values(last_seen=bindparam("b_seen"))
            .execution_options(synchronize_session=False)
        )
        with self._tx() as s:
            s.connection().execute(statement, [{"b_node": n, "b_seen": at} for n, at in seen.items()])

    def last_seen(self) -> dict[str, datetime]:
        """When each node was last heard from (without parsing its policy and datasets)."""
        with self._tx() as s:
            return {node: _utc(at) for node, at in s.execute(select(NodeRow.node_id, NodeRow.last_seen))}

    def get_node(self, node_id: str) -> NodeRecord:
        with self._tx() as s:
            row = s.get(NodeRow, node_id)
            if row is None:
                raise NotFound(f"no node named {node_id!r} has enrolled")
            return self._node(row)

    def list_nodes(self) -> list[NodeRecord]:
        with self._tx() as s:
            return [self._node(r) for r in s.scalars(select(NodeRow).order_by(NodeRow.node_id))]

    @staticmethod
    def _node(row: NodeRow) -> NodeRecord:
        policy = common_pb2.PolicySummary.FromString(row.policy_pb)
        datasets = node_pb2.InventoryReport.FromString(row.datasets_pb).datasets
        return NodeRecord(
            node_id=row.node_id,
            node_version=row.node_version,
            enrolled_at=_utc(row.enrolled_at),
            last_seen=_utc(row.last_seen),
            policy=serde.policy_summary_from_pb(policy),
            datasets=tuple(serde.dataset_from_pb(d) for d in datasets),
            cert_pem=row.cert_pem or "",
        )

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec, *, submitted_by: str, now: datetime) -> JobRecord:
        row = JobRow(
            job_id=uuid.uuid4().hex[:12],
            spec_pb=serde.job_spec_to_pb(spec).SerializeToString(deterministic=True),
            analysis=spec.analysis,
            state=JobState.PENDING.value,
            submitted_by=submitted_by,
            created_at=now,
            updated_at=now,
            status_detail="queued",
            round=0,
            participants="",
            result_json="",
            error="",
            dataset=spec.dataset,
            released_rho=0.0,
            charged_nodes="",
        )
        with self._tx() as s:
            s.add(row)
            s.flush()  # the event row refers to the job: insert the job first
            s.add(EventRow(job_id=row.job_id, at=now, state=row.state, message="job submitted"))
            s.flush()
            return self._job(row)

    def get_job(self, job_id: str) -> JobRecord:
        with self._tx() as s:
            return self._job(self._job_row(s, job_id))

    def list_jobs(self, *, limit: int = 100, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        """Recent jobs without their results (a result may be megabytes; use ``get_job`` for one)."""
        query = (
            select(JobRow).options(defer(JobRow.result_json)).order_by(JobRow.created_at.desc()).limit(limit)
        )
        if states is not None:
            query = query.where(JobRow.state.in_([st.value for st in states]))
        with self._tx() as s:
            return [self._job(r, with_result=False) for r in s.scalars(query)]

    def released_charges(self, *, since: datetime) -> list[tuple[str, datetime, float, tuple[str, ...]]]:
        """(dataset, time, ρ, charged nodes) of every DP round charged since ``since``.

        A node is charged a round's ρ when its masked input leaves it, whether or not the round is
        then released (a round whose job failed later still cost its nodes): so every round with
        an answered masked-input task counts, for the nodes that answered, once per round however
        many times the round was re-keyed. Jobs without masked inputs (overlap) record the nodes
        they charged themselves (``record_charges``).
        """
        rounds = (
            select(
                RoundRow.job_id,
                RoundRow.round,
                RoundRow.rho,
                RoundRow.started_at,
                JobRow.dataset,
                RoundRow.state,
                RoundRow.survivors,
            )
            .join(JobRow, JobRow.job_id == RoundRow.job_id)
            .where(RoundRow.started_at >= since)
            .where(RoundRow.rho > 0)
        )
        answered = (
            select(TaskRow.job_id, TaskRow.round, TaskRow.node_id)
            .where(TaskRow.stage == Stage.MASKED_INPUT.value)
            .where(TaskRow.state == TaskState.ANSWERED.value)
            .where(TaskRow.created_at >= since)
            .distinct()
        )
        with self._tx() as s:
            charged: dict[tuple[str, int], list[str]] = {}
            for job_id, round_no, node_id in s.execute(answered):
                charged.setdefault((job_id, round_no), []).append(node_id)
            out = []
            for job_id, round_no, rho, at, dataset, state, listed in s.execute(rounds):
                if state == ROUND_CHARGED:  # recorded with the nodes it charged (``record_charges``)
                    nodes = tuple(sorted(n for n in listed.split(",") if n))
                else:
                    nodes = tuple(sorted(charged.get((job_id, round_no), ())))
                if nodes:
                    out.append((dataset, _utc(at), float(rho), nodes))
            return out

    def record_charges(
        self, job_id: str, *, round: int, rho: float, nodes: Sequence[str], now: datetime
    ) -> None:
        """Record that ``nodes`` were charged ``rho`` for round ``round`` of a job that has no
        masked inputs to tell (overlap: a node is charged when its first blinded list leaves)."""
        with self._core() as conn:
            conn.execute(_new_round(job_id, round, rho, now, state=ROUND_CHARGED, survivors=sorted(nodes)))

    # -- rounds of DP jobs -----------------------------------------------------------------------

    def start_round(self, job_id: str, *, round: int, rho: float, now: datetime) -> None:
        """Record that round ``round`` starts (or starts again after a restart) at cost ``rho``."""
        this = (_ROUNDS.c.job_id == job_id) & (_ROUNDS.c.round == round)
        with self._core() as conn:  # Core statements: once per round of every DP job
            state = conn.execute(select(_ROUNDS.c.state).where(this)).scalar_one_or_none()
            if state is None:
                conn.execute(_new_round(job_id, round, rho, now, state="running"))
            elif state != "released":
                conn.execute(update(_ROUNDS).where(this).values(state="running"))

    def release_round(
        self,
        job_id: str,
        *,
        round: int,
        now: datetime,
        survivors: Sequence[str],
        dropped: Sequence[str],
        metric_json: str,
        result_json: str,
        driver_state: str,
    ) -> None:
        """Persist a released round and the driver's next state in ONE transaction: a coordinator
        that dies after this resumes from the next round and never releases this one again."""
        this = (_ROUNDS.c.job_id == job_id) & (_ROUNDS.c.round == round)
        with self._core() as conn:  # Core statements: once per round of every DP job
            rho = conn.execute(select(_ROUNDS.c.rho).where(this)).scalar_one_or_none()
            if rho is None:
                raise NotFound("no such round")
            conn.execute(
                update(_ROUNDS)
                .where(this)
                .values(
                    state="released",
                    released_at=now,
                    survivors=",".join(survivors),
                    dropped=",".join(dropped),
                    metric_json=metric_json,
                    result_json=result_json,
                )
            )
            changed = conn.execute(
                update(_JOBS)
                .where(_JOBS.c.job_id == job_id)
                .values(
                    driver_state=driver_state,
                    released_rho=func.coalesce(_JOBS.c.released_rho, 0.0) + float(rho),
                    updated_at=now,
                )
            )
            if not changed.rowcount:
                raise NotFound(f"no job with id {job_id!r}")

    def save_driver_state(self, job_id: str, driver_state: str) -> None:
        with self._tx() as s:
            self._job_row(s, job_id, lock=True).driver_state = driver_state

    def rounds_for(self, job_id: str) -> list[RoundRecord]:
        query = select(RoundRow).where(RoundRow.job_id == job_id).order_by(RoundRow.round)
        with self._tx() as s:
            return [
                RoundRecord(
                    job_id=r.job_id,
                    round=r.round,
                    rho=float(r.rho),
                    state=r.state,
                    started_at=_utc(r.started_at),
                    released_at=_utc(r.released_at) if r.released_at else None,
                    survivors=tuple(n for n in r.survivors.split(",") if n),
                    dropped=tuple(n for n in r.dropped.split(",") if n),
                    metric_json=r.metric_json,
                    result_json=r.result_json,
                )
                for r in s.scalars(query)
            ]

    def update_job(
        self,
        job_id: str,
        *,
        now: datetime,
        state: JobState | None = None,
        status_detail: str | None = None,
        round: int | None = None,
        participants: Sequence[str] | None = None,
        result_json: str | None = None,
        error: str | None = None,
        released_rho: float | None = None,
        charged_nodes: Sequence[str] | None = None,
        event: str | None = None,
        stage: Stage | None = None,
        done: int = 0,
        expected: int = 0,
    ) -> JobRecord:
        """Change a job and append a progress event in one transaction. Ended jobs stay ended."""
        with self._tx() as s:
            row = self._job_row(s, job_id, lock=True)
            if JobState(row.state).terminal:
                raise Conflict(f"job {job_id} has already ended ({row.state})")
            if state is not None:
                row.state = state.value
            if status_detail is not None:
                row.status_detail = status_detail
            if round is not None:
                row.round = round
            if participants is not None:
                row.participants = ",".join(participants)
            if result_json is not None:
                row.result_json = result_json
            if error is not None:
                row.error = error
            if released_rho is not None:
                row.released_rho = released_rho
            if charged_nodes is not None:
                row.charged_nodes = ",".join(charged_nodes)
            row.updated_at = now
            if state is not None and JobState(row.state).terminal:
                # Open tasks of an ended job must never be delivered again.
                s.execute(
                    update(TaskRow)
                    .where(TaskRow.job_id == job_id)
                    .where(TaskRow.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
                    .values(state=TaskState.EXPIRED.value)
                )
            if event is not None:
                s.add(
                    EventRow(
                        job_id=job_id,
                        at=now,
                        state=row.state,
                        message=event,
                        round=row.round,
                        stage=stage.value if stage else "",
                        done=done,
                        expected=expected,
                    )
                )
            s.flush()
            return self._job(row)

    def note_progress(
        self,
        job_id: str,
        *,
        now: datetime,
        event: str,
        status_detail: str | None = None,
        round: int | None = None,
        stage: Stage | None = None,
        done: int = 0,
        expected: int = 0,
    ) -> None:
        """``update_job`` for a running job's progress only (status, round, one event): two Core
        statements in one transaction, made several times per round. Ended jobs stay ended."""
        jobs, events = _JOBS, _EVENTS
        values: dict[str, Any] = {"updated_at": now}
        if status_detail is not None:
            values["status_detail"] = status_detail
        if round is not None:
            values["round"] = round
        running = JobState.RUNNING.value
        with self._core() as conn:
            changed = conn.execute(
                update(jobs).where(jobs.c.job_id == job_id).where(jobs.c.state == running).values(**values)
            )
            if not changed.rowcount:
                raise Conflict(f"job {job_id} is not running")
            row_round = round
            if row_round is None:
                row_round = conn.execute(select(jobs.c.round).where(jobs.c.job_id == job_id)).scalar_one()
            conn.execute(
                insert(events).values(
                    job_id=job_id,
                    at=now,
                    state=running,
                    message=event,
                    round=row_round,
                    stage=stage.value if stage else "",
                    done=done,
                    expected=expected,
                )
            )

    @staticmethod
    def _job_row(s: Session, job_id: str, *, lock: bool = False) -> JobRow:
        query = select(JobRow).where(JobRow.job_id == job_id)
        if lock:
            query = query.with_for_update()
        row = s.scalars(query).first()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}")
        return row

    @staticmethod
    def _job(row: JobRow, *, with_result: bool = True) -> JobRecord:
        return JobRecord(
            job_id=row.job_id,
            spec=_spec(row.spec_pb),
            state=JobState(row.state),
            submitted_by=row.submitted_by,
            created_at=_utc(row.created_at),
            updated_at=_utc(row.updated_at),
            status_detail=row.status_detail,
            round=row.round,
            participants=tuple(p for p in row.participants.split(",") if p),
            result_json=row.result_json if with_result else "",
            error=row.error,
            driver_state=row.driver_state or "",
        )

    # -- tasks ---------------------------------------------------------------------------------

    def add_tasks(
        self,
        job_id: str,
        *,
        round: int,
        stage: Stage,
        node_ids: Sequence[str],
        now: datetime,
        deadline: datetime | None,
        stage_input: bytes = b"",
        stage_inputs: Mapping[str, bytes] | None = None,
        epoch: int = 0,
        round_input: bytes = b"",
    ) -> list[TaskRecord]:
        """One task per node; ``stage_inputs`` gives a node its own input (else ``stage_input``)."""
        rows = [
            TaskRow(
                task_id=task_id_of(job_id, epoch, round, stage, node_id),
                job_id=job_id,
                node_id=node_id,
                round=round,
                epoch=epoch,
                stage=stage.value,
                state=TaskState.PENDING.value,
                stage_input=(stage_inputs or {}).get(node_id, stage_input),
                round_input=round_input,
                deadline=deadline,
                created_at=now,
            )
            for node_id in node_ids
        ]
        with self._tx() as s:
            s.add_all(rows)
            s.flush()
            return [self._task(r) for r in rows]

    def record_tasks(
        self, tasks: Sequence[TaskRecord], *, created_at: datetime, veto: Veto | None = None
    ) -> None:
        """Write tasks that were held in memory (a DP stage's, see ``OpenStage``) in one statement,
        with their states, without their inputs; ``veto`` goes with a single vetoed task."""
        if not tasks:
            return
        rows = [
            {
                "task_id": t.task_id,
                "job_id": t.job_id,
                "node_id": t.node_id,
                "round": t.round,
                "epoch": t.epoch,
                "stage": t.stage.value,
                "state": t.state.value,
                "stage_input": b"",
                "round_input": b"",
                "deadline": t.deadline,
                "created_at": created_at,
                "answer_pb": b"" if t.state is TaskState.ANSWERED else None,
                "veto_code": veto.code if veto is not None else "",
                "veto_reason": veto.reason if veto is not None else "",
                "veto_policy_hash": veto.policy_hash if veto is not None else "",
            }
            for t in tasks
        ]
        with self._core() as conn:
            conn.execute(insert(_TASKS), rows)

    def open_tasks(self, node_id: str) -> list[TaskRecord]:
        """Tasks this node has not answered yet, oldest first (re-sent after every reconnect)."""
        with self._core() as conn:
            return [_task_row(r) for r in conn.execute(_open_query(node_id))]

    def deliver_open_tasks(self, node_id: str, *, skip: Iterable[str] = ()) -> list[TaskRecord]:
        """``open_tasks`` without those in ``skip``, marked delivered, in one transaction."""
        skipped = set(skip)
        with self._core() as conn:
            tasks = [
                t for t in map(_task_row, conn.execute(_open_query(node_id))) if t.task_id not in skipped
            ]
            fresh = [t.task_id for t in tasks if t.state is TaskState.PENDING]
            if fresh:
                conn.execute(
                    update(_TASKS)
                    .where(_TASKS.c.task_id.in_(fresh))
                    .where(_TASKS.c.state == TaskState.PENDING.value)
                    .values(state=TaskState.DELIVERED.value)
                )
            return tasks

    def mark_delivered(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self._tx() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.task_id.in_(task_ids))
                .where(TaskRow.state == TaskState.PENDING.value)
                .values(state=TaskState.DELIVERED.value)
            )

    def get_task(self, task_id: str, *, payload: bool = True) -> TaskRecord:
        """One task; ``payload=False`` leaves out its input and answer (empty in the record)."""
        columns = _TASKS.c if payload else _HEAD
        with self._core() as conn:
            row = conn.execute(select(*columns).where(_TASKS.c.task_id == task_id)).first()
        if row is None:
            raise NotFound("no such task")
        return _task_row(row)

    def answer_task(self, task_id: str, *, answer: bytes | None, veto: Veto | None = None) -> bool:
        """Store a node's answer or veto once; False when the task was already closed (a replay).

        One conditional UPDATE, so concurrent answers close a task exactly once on every backend
        (SQLite ignores SELECT ... FOR UPDATE).
        """
        if veto is not None:
            values: dict[str, object] = {
                "state": TaskState.VETOED.value,
                "veto_code": veto.code,
                "veto_reason": veto.reason,
                "veto_policy_hash": veto.policy_hash,
            }
        else:
            values = {"state": TaskState.ANSWERED.value, "answer_pb": answer}
        with self._core() as conn:
            result = conn.execute(
                update(_TASKS)
                .where(_TASKS.c.task_id == task_id)
                .where(_TASKS.c.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
                .values(**values)
            )
            if result.rowcount:
                return True
            if conn.execute(select(_TASKS.c.task_id).where(_TASKS.c.task_id == task_id)).first() is None:
                raise NotFound("no such task")
            return False

    def expire_open_tasks(self, job_id: str, *, round: int, stage: Stage) -> list[str]:
        """Close the stage's unanswered tasks (their nodes dropped); return those nodes."""
        where = (
            (TaskRow.job_id == job_id)
            & (TaskRow.round == round)
            & (TaskRow.stage == stage.value)
            & TaskRow.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value])
        )
        with self._tx() as s:
            late = sorted(s.scalars(select(TaskRow.node_id).where(where)))
            s.execute(update(TaskRow).where(where).values(state=TaskState.EXPIRED.value))
            return late

    def expire_tasks(self, task_ids: Sequence[str]) -> None:
        """Close these tasks unanswered (their nodes dropped)."""
        with self._tx() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.task_id.in_(list(task_ids)))
                .where(TaskRow.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
                .values(state=TaskState.EXPIRED.value)
            )

    def expire_job_tasks(self, job_id: str) -> None:
        """Close every open task of a job (its key epoch ended with the coordinator process)."""
        with self._tx() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.job_id == job_id)
                .where(TaskRow.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
                .values(state=TaskState.EXPIRED.value)
            )

    def extend_open_tasks(self, job_id: str, *, deadline: datetime) -> None:
        with self._tx() as s:
            s.execute(
                update(TaskRow)
                .where(TaskRow.job_id == job_id)
                .where(TaskRow.state.in_([TaskState.PENDING.value, TaskState.DELIVERED.value]))
                .values(deadline=deadline)
            )

    def tasks_for(
        self,
        job_id: str,
        *,
        round: int | None = None,
        stage: Stage | None = None,
        epoch: int | None = None,
        payload: bool = True,
    ) -> list[TaskRecord]:
        """A job's tasks, optionally of one round, stage and epoch; ``payload=False`` leaves out
        inputs and answers (a stage of a thousand nodes carries megabytes of them)."""
        query = select(TaskRow).where(TaskRow.job_id == job_id).order_by(TaskRow.node_id)
        if round is not None:
            query = query.where(TaskRow.round == round)
        if stage is not None:
            query = query.where(TaskRow.stage == stage.value)
        if epoch is not None:
            query = query.where(TaskRow.epoch == epoch)
        if not payload:
            query = query.options(*_NO_PAYLOAD)
        with self._tx() as s:
            return [self._task(r, payload=payload) for r in s.scalars(query)]

    def stage_counts(
        self, job_id: str, *, round: int, stage: Stage | None = None, epoch: int | None = None
    ) -> tuple[int, int]:
        """(closed, total) tasks of a job's round (and stage, epoch): one aggregate query."""
        query = (
            select(_TASKS.c.state, func.count())
            .where(_TASKS.c.job_id == job_id)
            .where(_TASKS.c.round == round)
            .group_by(_TASKS.c.state)
        )
        if stage is not None:
            query = query.where(_TASKS.c.stage == stage.value)
        if epoch is not None:
            query = query.where(_TASKS.c.epoch == epoch)
        with self._core() as conn:
            counts = {state: int(n) for state, n in conn.execute(query)}
        total = sum(counts.values())
        still_open = counts.get(TaskState.PENDING.value, 0) + counts.get(TaskState.DELIVERED.value, 0)
        return total - still_open, total

    def vetoes_for(self, job_id: str) -> list[Veto]:
        query = (
            select(TaskRow)
            .where(TaskRow.job_id == job_id)
            .where(TaskRow.state == TaskState.VETOED.value)
            .order_by(TaskRow.node_id)
        )
        with self._tx() as s:
            return [
                Veto(
                    node_id=r.node_id, code=r.veto_code, reason=r.veto_reason, policy_hash=r.veto_policy_hash
                )
                for r in s.scalars(query)
            ]

    @staticmethod
    def _task(row: TaskRow, *, payload: bool = True) -> TaskRecord:
        # Without ``payload`` the inputs and answer were not loaded: touching them would load them.
        return TaskRecord(
            task_id=row.task_id,
            job_id=row.job_id,
            node_id=row.node_id,
            round=row.round,
            epoch=row.epoch or 0,
            stage=Stage(row.stage),
            state=TaskState(row.state),
            stage_input=(row.stage_input or b"") if payload else b"",
            round_input=(row.round_input or b"") if payload else b"",
            deadline=_utc(row.deadline) if row.deadline else None,
            answer=row.answer_pb if payload else None,
        )

    # -- events and audit ----------------------------------------------------------------------

    def events_after(self, job_id: str, seq: int) -> list[EventRecord]:
        # Core, not ORM: every watcher of a job reads this after each of its events.
        events = _EVENTS
        query = (
            select(events).where(events.c.job_id == job_id).where(events.c.seq > seq).order_by(events.c.seq)
        )
        with self._core() as conn:
            return [
                EventRecord(
                    seq=r.seq,
                    job_id=r.job_id,
                    at=_utc(r.at),
                    state=JobState(r.state),
                    message=r.message,
                    round=r.round,
                    stage=r.stage,
                    done=r.done,
                    expected=r.expected,
                )
                for r in conn.execute(query)
            ]

    def audit(
        self, *, actor: str, role: str, action: str, now: datetime, job_id: str = "", outcome: str = ""
    ) -> None:
        with self._tx() as s:
            s.add(AuditRow(at=now, actor=actor, role=role, action=action, job_id=job_id, outcome=outcome))

    def list_audit(self, *, limit: int = 100) -> list[AuditRecord]:
        query = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
        with self._tx() as s:
            return [
                AuditRecord(
                    at=_utc(r.at),
                    actor=r.actor,
                    role=r.role,
                    action=r.action,
                    job_id=r.job_id,
                    outcome=r.outcome,
                )
                for r in s.scalars(query)
            ]


def _new_round(
    job_id: str, round_no: int, rho: float, now: datetime, *, state: str, survivors: Sequence[str] = ()
) -> Insert:
    return insert(_ROUNDS).values(
        job_id=job_id,
        round=round_no,
        rho=rho,
        state=state,
        started_at=now,
        survivors=",".join(survivors),
        dropped="",
        metric_json="",
        result_json="",
    )
