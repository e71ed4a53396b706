"""The coordinator's relay for ``overlap`` jobs: two stages of PSI frames, then the pair counts.

Stage 1 (round 1, ``Stage.PSI``): one task per node naming its pairs; the node answers with the
frames of its blinded list for every pair it accepts (several messages, 4 MiB each) and a
refusal frame for every pair its policy refuses; the task closes when every pair is accounted
for. Stage 2 (round 2): for every pair both sides sent, each side's frames are relayed to the
other, one task per frame (task ids are told apart by their ``epoch``: the frame's sequence
number); a node acknowledges each frame and, once it holds every list it expects, answers with
its reblinded lists. Then the coordinator counts each pair's matches and releases the table.

The lists live in this process's memory only, never in the store (only the relayed frames sit
in task inputs until delivered): a coordinator restart fails the job, and the end notice frees
every node's reservation. Everything here is blinded under scalars the coordinator never sees.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from tessera.core.analyses import overlap
from tessera.core.errors import Conflict, InvalidRequest
from tessera.core.psi.noise import interval, job_rho, plan_dummies
from tessera.core.psi.protocol import count_matches
from tessera.core.psi.wire import Assembler, Frame, FrameKind, split
from tessera.core.types import JobSpec, JobState, PeerIdentity, Stage, Veto
from tessera.server.store import JobRecord, TaskRecord
from tessera.v1 import node_pb2

if TYPE_CHECKING:
    from tessera.server.jobs import JobService

log = logging.getLogger("tessera.coordinator.overlap")
BLIND_ROUND, REBLIND_ROUND = 1, 2
PROGRESS_EVERY_S = 0.5


@dataclass
class _Overlap:
    spec: JobSpec
    params: overlap.OverlapParams
    pairs: list[tuple[str, str]]
    round: int = BLIND_ROUND
    blinded: dict[str, Assembler] = field(default_factory=dict)  # node -> its stage-1 frames
    reblinded: dict[str, Assembler] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # pair -> why
    live: list[int] = field(default_factory=list)  # pairs in stage 2
    received_bytes: dict[str, int] = field(default_factory=dict)

    def pairs_of(self, node: str) -> list[int]:
        return [i for i, p in enumerate(self.pairs) if node in p]


class OverlapRelay:
    """Submits, relays and finishes overlap jobs for the ``JobService`` that owns it."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self._jobs: dict[str, _Overlap] = {}
        self._shown: dict[str, float] = {}  # job -> when its last part-progress event was written

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def job_ids(self) -> tuple[str, ...]:
        """The overlap jobs this process is running."""
        return tuple(self._jobs)

    def submit(self, spec: JobSpec, *, actor: PeerIdentity) -> JobRecord:
        params = overlap.parse(spec)
        store, now = self.jobs.store, self.jobs.clock()
        if spec.deadline is not None and spec.deadline <= now:
            raise InvalidRequest("the job's deadline is already in the past")
        enrolled = {n.node_id: n for n in store.list_nodes()}
        names = list(spec.participants) or sorted(enrolled)
        unknown = [n for n in names if n not in enrolled]
        if unknown:
            raise InvalidRequest(f"these nodes have never enrolled: {', '.join(sorted(unknown))}")
        if len(names) < 2:
            raise Conflict("an overlap job needs at least two nodes")
        nodes = sorted(names)
        pairs = overlap.pairs_of(nodes)
        job = store.create_job(spec, submitted_by=actor.name, now=now)
        state = _Overlap(spec=spec, params=params, pairs=pairs)
        with self.jobs._locks.hold(job.job_id):
            self._jobs[job.job_id] = state
            store.audit(
                actor=actor.name,
                role=actor.role or "",
                action="job.submit",
                now=now,
                job_id=job.job_id,
                outcome=f"accepted: overlap of {len(pairs)} pair(s) on {params.identifier}",
            )
            deadline = self._deadline(job, now)
            self.jobs.add_store_tasks(
                job.job_id,
                round=BLIND_ROUND,
                stage=Stage.PSI,
                node_ids=nodes,
                now=now,
                deadline=deadline,
                stage_inputs={n: overlap.blind_input(pairs, n) for n in nodes},
            )
            job = store.update_job(
                job.job_id,
                now=now,
                state=JobState.RUNNING,
                round=BLIND_ROUND,
                participants=nodes,
                status_detail=f"blind: waiting for {len(nodes)} node(s)",
                event=f"overlap of {len(pairs)} pair(s) on {params.identifier}: asked {len(nodes)} node(s) "
                "for their blinded lists",
                stage=Stage.PSI,
                expected=len(nodes),
            )
        self.jobs.notifier.notify(nodes, job=job.job_id)
        return job

    # -- node messages ----------------------------------------------------------------------------

    def on_message(self, node_id: str, task: TaskRecord, message: node_pb2.RoundMessage) -> bool:
        """One frame (or an acknowledgement) of a node; closes its task once the node is done."""
        state = self._jobs.get(task.job_id)
        if message.WhichOneof("body") != "psi" or state is None or task.round != state.round:
            raise InvalidRequest("this task expects a PSI message of a running overlap job")
        if message.psi.codec == "psi/v1/ack":
            if task.round != REBLIND_ROUND:
                raise InvalidRequest("only a relayed list is acknowledged")
            return self._close(task)
        frame = Frame.decode(message.psi.data)
        mine = set(state.pairs_of(node_id))
        if frame.pair not in mine:
            raise InvalidRequest("the frame names a pair this node is not part of")
        state.received_bytes[node_id] = state.received_bytes.get(node_id, 0) + len(message.psi.data)
        if task.round == BLIND_ROUND:
            if frame.kind not in (FrameKind.BLINDED, FrameKind.REFUSED):
                raise InvalidRequest("stage 1 takes blinded lists or refusals")
            book = state.blinded.setdefault(node_id, Assembler())
            book.add(frame)
            done = all(book.whole(p) for p in mine)
        else:
            if frame.kind is not FrameKind.REBLINDED or frame.pair not in state.live:
                raise InvalidRequest("stage 2 takes reblinded lists of the pairs still running")
            book = state.reblinded.setdefault(node_id, Assembler())
            book.add(frame)
            done = all(book.whole(p) for p in mine if p in state.live)
        if not done:
            self._progress(task.job_id, node_id, frame)
            return True
        return self._close(task)

    def _progress(self, job_id: str, node_id: str, frame: Frame) -> None:
        """A large list arrives in many parts: say so, at most every ``PROGRESS_EVERY_S``."""
        last = self._shown.get(job_id, 0.0)
        if time.monotonic() - last < PROGRESS_EVERY_S:
            return
        self._shown[job_id] = time.monotonic()
        state = self._jobs[job_id]
        self.jobs.store.update_job(
            job_id,
            now=self.jobs.clock(),
            status_detail=f"{_stage_name(state.round)}: receiving lists in parts",
            event=f"{_stage_name(state.round)}: {node_id} sent part {frame.part + 1} of {frame.parts} "
            f"of its list for pair {'-'.join(state.pairs[frame.pair])}",
            stage=Stage.PSI,
        )
        self.jobs.notifier.notify(job=job_id)

    def _close(self, task: TaskRecord) -> bool:
        fresh = self.jobs.store.answer_task(task.task_id, answer=b"")
        if fresh:
            self.advance(task.job_id)
        return fresh

    def advance(self, job_id: str, *, force: bool = False) -> None:
        """Move on once every task of the stage is closed (answered, vetoed or expired)."""
        state = self._jobs.get(job_id)
        if state is None:
            return
        store, now = self.jobs.store, self.jobs.clock()
        closed, total = store.stage_counts(job_id, round=state.round, stage=Stage.PSI)
        if closed < total and not force:
            store.update_job(
                job_id,
                now=now,
                status_detail=f"{_stage_name(state.round)}: {closed} of {total} task(s) done",
                event=f"{_stage_name(state.round)}: {closed} of {total} task(s) done",
                stage=Stage.PSI,
                done=closed,
                expected=total,
            )
            self.jobs.notifier.notify(job=job_id)
            return
        job = store.get_job(job_id)
        if job.state.terminal:
            return
        try:
            if state.round == BLIND_ROUND:
                self._relay(job, state, now)
            else:
                self._finish(job, state, now)
        except Exception as exc:  # the job ends with a reason, never stays running
            log.error("overlap relay failed job=%s error=%s", job_id, type(exc).__name__)
            self.jobs._fail(
                job_id, f"the coordinator could not relay the overlap ({type(exc).__name__})", now
            )

    def charged(self, job_id: str) -> list[str]:
        """Nodes charged so far: a node pays the job's ρ when its first blinded list leaves it."""
        state = self._jobs.get(job_id)
        return sorted(n for n, book in state.blinded.items() if book.public) if state is not None else []

    def _relay(self, job: JobRecord, state: _Overlap, now: datetime) -> None:
        # The coordinator's budget mirror learns what stage 1 cost whom (``released_charges``).
        rho = job_rho(epsilon=state.spec.epsilon, delta=state.spec.delta)
        charged = self.charged(job.job_id)
        if charged:
            self.jobs.store.record_charges(job.job_id, round=BLIND_ROUND, rho=rho, nodes=charged, now=now)
        vetoes = {v.node_id: v for v in self.jobs.store.vetoes_for(job.job_id)}
        for i, (a, b) in enumerate(state.pairs):
            reasons = [self._why(state, n, i, vetoes) for n in (a, b)]
            if any(reasons):
                state.refused[i] = "; ".join(r for r in reasons if r)
            else:
                state.live.append(i)
        state.round = REBLIND_ROUND
        if not state.live:
            self._finish(job, state, now)
            return
        expect = {n: sum(1 for i in state.live if n in state.pairs[i]) for n in job.participants}
        queue: dict[str, list[bytes]] = {}
        for i in state.live:
            a, b = state.pairs[i]
            for sender, receiver in ((a, b), (b, a)):
                book = state.blinded[sender]
                frames = split(
                    FrameKind.BLINDED, i, book.elements(i), public=book.public[i], expect=expect[receiver]
                )
                queue.setdefault(receiver, []).extend(f.encode() for f in frames)
                book.drop(i)
        deadline = self._deadline(job, now)
        depth = max(len(q) for q in queue.values())
        for seq in range(depth):
            inputs = {n: q[seq] for n, q in queue.items() if seq < len(q)}
            self.jobs.add_store_tasks(
                job.job_id,
                round=REBLIND_ROUND,
                epoch=seq + 1,
                stage=Stage.PSI,
                node_ids=sorted(inputs),
                now=now,
                deadline=deadline,
                stage_inputs=inputs,
            )
        nodes = sorted(queue)
        parts = sum(len(q) for q in queue.values())
        self.jobs.store.update_job(
            job.job_id,
            now=now,
            round=REBLIND_ROUND,
            status_detail=f"reblind: relaying {parts} part(s) to {len(nodes)} node(s)",
            event=f"blind done: {len(state.live)} pair(s) go on, {len(state.refused)} refused; "
            f"relaying {parts} part(s)",
            stage=Stage.PSI,
        )
        self.jobs.notifier.notify(nodes, job=job.job_id)

    @staticmethod
    def _why(state: _Overlap, node: str, pair: int, vetoes: dict[str, Veto]) -> str:
        if node in vetoes:
            return f"{node} refused: {vetoes[node].reason}"
        book = state.blinded.get(node)
        if book is None or not book.whole(pair):
            return f"{node} did not answer"
        if pair in book.refused:
            return f"{node} refused: {book.refused[pair]}"
        return ""

    def _finish(self, job: JobRecord, state: _Overlap, now: datetime) -> None:
        rho = job_rho(epsilon=state.spec.epsilon, delta=state.spec.delta)
        # Each node sized its dummies by the pairs it accepted (sent a list for) in stage 1.
        accepted = {
            n: sum(1 for p in state.pairs_of(n) if p in book.public) for n, book in state.blinded.items()
        }
        rows = []
        for i, (a, b) in enumerate(state.pairs):
            if i in state.refused:
                rows.append(overlap.pair_row(a, b, status="refused", reason=state.refused[i]))
                continue
            books = [state.reblinded.get(n) for n in (a, b)]
            if any(bk is None or not bk.whole(i) for bk in books):
                rows.append(
                    overlap.pair_row(a, b, status="failed", reason="a node did not send its reblinded list")
                )
                continue
            count = count_matches(books[0].elements(i), books[1].elements(i))  # type: ignore[union-attr]
            plans = (
                plan_dummies(rho=rho, pairs=accepted[a], delta=state.spec.delta),
                plan_dummies(rho=rho, pairs=accepted[b], delta=state.spec.delta),
            )
            estimate, low, high = interval(count, plans)
            rows.append(overlap.pair_row(a, b, status="released", estimate=estimate, low=low, high=high))
        released = sum(1 for r in rows if r["status"] == "released")
        result = {
            "analysis": overlap.INFO.name,
            "identifier": state.params.identifier,
            "filters": {k: v.text() for k, v in sorted(state.params.filters.items())},
            "pairs": rows,
            "epsilon": state.spec.epsilon,
            "delta": state.spec.delta,
            "interval_level": 0.95,
            "bytes_received": dict(sorted(state.received_bytes.items())),
            "note": "estimate = matches minus both sides' expected dummies; negative estimates are noise",
        }
        if released == 0:
            reasons = "; ".join(f"{r['a']}-{r['b']}: {r.get('reason', '')}" for r in rows)
            self.jobs._fail(job.job_id, f"no pair could be counted: {reasons}", now)  # sends end notices
            return
        self.forget(job.job_id)
        self.jobs.store.update_job(
            job.job_id,
            now=now,
            state=JobState.SUCCEEDED,
            result_json=json.dumps(result, sort_keys=True),
            status_detail=f"done: {released} of {len(rows)} pair(s) counted",
            event=f"succeeded: {released} pair(s) counted, {len(state.refused)} refused",
        )
        # Nodes whose every pair a partner refused still hold their secrets: tell everyone it ended.
        self.jobs._send_end(job, job.participants, now)
        self.jobs.notifier.notify(job=job.job_id)
        log.info("overlap succeeded job=%s pairs=%d released=%d", job.job_id, len(rows), released)

    def _deadline(self, job: JobRecord, now: datetime) -> datetime:
        # A stage hashes and blinds whole customer lists (about a minute per million elements
        # and pair on two cores), so it gets the job's time, not one secure-aggregation stage's.
        return min(now + self.jobs.job_timeout, job.spec.deadline or now + self.jobs.job_timeout)

    def forget(self, job_id: str) -> bool:
        """Drop a job that ended (failed, cancelled); True if it was an overlap job."""
        self._shown.pop(job_id, None)
        return self._jobs.pop(job_id, None) is not None


def _stage_name(round_no: int) -> str:
    return "blind" if round_no == BLIND_ROUND else "reblind"
