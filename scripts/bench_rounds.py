"""End-to-end DP round benchmark: a coordinator and N `tessera node serve` processes on loopback.

Every federation is started the way `tessera demo` starts one (dev PKI, per-partner policies,
synthetic customers, real mTLS gRPC), then one `histogram` job on ``monthly_spend`` is timed from
submit to result, ``--runs`` times, for every vector length and number of dropouts asked for.

Dropouts are real: as soon as the job's event stream shows that stage ``--drop-stage`` was handed
out (``<stage>: asked``), k node processes are killed (``--drop-mode kill``, SIGKILL: a crash, the
connection closes) or frozen (``stop``, SIGSTOP: a hung machine, the connection stays open and
only heartbeat silence or the stage deadline tells the coordinator). ``share_keys`` drops nodes
before any input left them; ``consistency_check`` and ``unmask`` drop them after their masked
input was sent, so the coordinator must recover their masks (the costly path); a kill that lands
after a fast node already answered the named stage drops it at the next one. Killed nodes are
started again (same state folder) after the round, frozen ones get SIGCONT. The dropped figure
INCLUDES any wait for the coordinator to notice (nothing is subtracted); the wait itself is
measured from the job's event timestamps and reported apart.

Vector length: a length L above 4096 is laid out as G groups of ``region`` x L/G bins (a histogram
takes up to 2^20 cells). A config the analysis would refuse is checked with the analysis' own plan,
as the coordinator does on submit, and reported as ``not_run`` with the reason instead of hidden.
Each config runs on a fresh federation (``--reuse`` shares one per node count) after one untimed
warm-up round.

Progress goes to stderr, one JSON document to stdout. Not run by pytest.

    .venv/bin/python scripts/bench_rounds.py --nodes 3,10 --length 1000000 --runs 3 --dropouts 0,1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tessera.cli.analyst_client import AnalystClient
from tessera.cli.demo import (
    ANALYST,
    BASE_PARTNERS,
    _Proc,
    _spawn,
    _stop_all,
    _wait_enrolled,
    _wait_port,
    partner_names,
    policies_dir,
)
from tessera.cli.demo_data import write_customers
from tessera.client.vault.state import init_node_state
from tessera.core.analyses import histogram
from tessera.core.analyses.histogram import MAX_BINS
from tessera.core.errors import TesseraError
from tessera.core.pki import init_ca, issue
from tessera.core.policy import load_policy
from tessera.core.rounds import analysis_spec
from tessera.core.types import JobSpec

EPSILON, DELTA = 0.5, 1e-7  # within every example policy's per-job limits
DROPPED = re.compile(r"^(advertise_keys|share_keys|masked_input|consistency_check|unmask): .+ dropped$")
DROP_STAGES = ("share_keys", "masked_input", "consistency_check", "unmask")


def log(message: str) -> None:
    print(f"[bench_rounds {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def layout_for(length: int) -> tuple[int, int]:
    """(groups, bins) with groups * bins == length and bins <= MAX_BINS; groups counts 'other'."""
    groups = max(1, -(-length // MAX_BINS))
    while length % groups:
        groups += 1
    return groups, length // groups


def histogram_spec(length: int, *, max_dropouts: int) -> JobSpec:
    groups, bins = layout_for(length)
    params: dict[str, Any] = {
        "field": "monthly_spend",
        "lower": 0.0,
        "upper": 1000.0,
        "bins": bins,
        "max_dropouts": max_dropouts,
        "max_customers": 100_000,  # a public per-node cap; sizes the modular width of the sums
    }
    if groups > 1:
        # Public labels; 'other' (every real region not listed) is the last group.
        params |= {"group_by": "region", "groups": tuple(f"g{i:05d}" for i in range(groups - 1))}
    return JobSpec(
        analysis="histogram",
        dataset="customers",
        purpose="research",
        epsilon=EPSILON,
        delta=DELTA,
        params=params,
    )


class Federation:
    """Coordinator + N node processes under ``work``; ``close`` stops every one of them."""

    def __init__(self, work: Path, nodes: int, *, rows: int, stage_timeout: float, seed: int) -> None:
        self.work = work
        self.names = partner_names(nodes)
        self.stage_timeout = stage_timeout
        self.procs: list[_Proc] = []
        self.argv: dict[str, list[str]] = {}
        self.pki = work / "pki"
        init_ca(self.pki, consortium="tessera-bench")
        issue(self.pki, kind="coordinator", name="coordinator")
        for name in self.names:
            issue(self.pki, kind="node", name=name)
        issue(self.pki, kind="analyst", name=ANALYST, role="analyst")
        templates = policies_dir()
        for index, name in enumerate(self.names):
            doc = yaml.safe_load(
                (templates / f"{BASE_PARTNERS[index % len(BASE_PARTNERS)]}.yaml").read_text()
            )
            doc["partner"] = name
            doc["policy_id"] = f"{name}-bench"
            doc["allowed_partners"] = [n for n in self.names if n != name]
            # Many timed rounds in one period: widen the period budget (per-job limit unchanged).
            doc["privacy"]["epsilon_per_period"] = 1000.0
            node_dir = work / "nodes" / name
            node_dir.mkdir(parents=True)
            (node_dir / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            policy = load_policy(node_dir / "policy.yaml")
            write_customers(policy, "customers", node_dir / "customers.csv", rows=rows, seed=seed + index)
            init_node_state(node_dir / "state", policy).close()  # ledgers live in the node's state

    def start(self, timeout: float) -> str:
        port_file = self.work / "coordinator" / "port"
        port_file.parent.mkdir(parents=True, exist_ok=True)
        # fmt: off
        argv = [
            "coordinator", "serve", "--pki", str(self.pki), "--listen", "127.0.0.1:0",
            "--port-file", str(port_file),
            "--db", f"sqlite:///{self.work / 'coordinator' / 'coordinator.db'}",
            "--heartbeat-ms", "1000", "--stage-timeout", str(self.stage_timeout),
            "--log-file", str(self.work / "logs" / "coordinator.log"),
        ]
        # fmt: on
        coordinator = _spawn("coordinator", argv, self.work / "logs" / "coordinator.out")
        self.procs.append(coordinator)
        address = f"127.0.0.1:{_wait_port(coordinator, port_file, timeout)}"
        for name in self.names:
            node_dir = self.work / "nodes" / name
            # fmt: off
            argv = [
                "node", "serve", "--pki", str(self.pki), "--name", name,
                "--coordinator", address, "--policy", str(node_dir / "policy.yaml"),
                "--data", f"customers={node_dir / 'customers.csv'}",
                "--state-dir", str(node_dir / "state"),
                "--log-file", str(self.work / "logs" / f"node-{name}.log"),
            ]
            # fmt: on
            self.argv[name] = argv
            self.procs.append(_spawn(name, argv, self.work / "logs" / f"node-{name}.out"))
        return address

    def restart(self, name: str) -> None:
        """Start a killed node's process again (same state folder: its ledgers survive)."""
        old = self.node(name)
        old.process.wait()
        self.procs.remove(old)
        self.procs.append(_spawn(name, self.argv[name], self.work / "logs" / f"node-{name}.out"))

    def node(self, name: str) -> _Proc:
        return next(p for p in self.procs if p.name == name)

    def close(self) -> list[str]:
        for proc in self.procs:  # a frozen process cannot act on SIGTERM
            if proc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.process.pid, signal.SIGCONT)
        return _stop_all(list(reversed(self.procs)))


@contextlib.contextmanager
def resumed_after(fed: Federation, frozen: list[str], mode: str) -> Iterator[None]:
    try:
        yield
    finally:
        for name in frozen:
            if mode == "kill":
                fed.restart(name)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(fed.node(name).process.pid, signal.SIGCONT)


def _seconds(event: Any) -> float:
    return float(event.at.seconds) + float(event.at.nanos) / 1e9


def dropped_wait(events: Sequence[Any]) -> tuple[float, list[str]]:
    """Seconds the coordinator sat idle waiting for a deadline, and the '<stage>: X dropped' texts.

    The idle wait of a stage closed by its deadline is from the last event of that stage before
    the 'dropped' event (the last answer, or the stage's start) to the 'dropped' event.
    """
    wait, notes = 0.0, []
    for i, event in enumerate(events):
        if i > 0 and DROPPED.match(event.message):
            wait += _seconds(event) - _seconds(events[i - 1])
            notes.append(event.message)
    return wait, notes


def stage_seconds(events: Sequence[Any]) -> dict[str, float]:
    """Seconds each stage took, from the coordinator's event timestamps (stage start to next start).

    Boundaries: the first event opens advertise_keys (a job's first event is not an 'asked' one),
    each '<stage>: asked' event opens its stage, the final event closes the last one. Given one
    later round of a many-round job, whose first event is its 'masked_input: asked', the stages
    are that round's own (that time used to be counted as advertise_keys).
    """
    if not events:
        return {}

    def asked(event: Any) -> str | None:
        if event.message.endswith(" node(s)") and ": asked " in event.message:
            return str(event.message.split(":", 1)[0].split(", ")[-1])
        return None

    marks: list[tuple[str, float]] = [(asked(events[0]) or "advertise_keys", _seconds(events[0]))]
    for event in events[1:]:
        if (stage := asked(event)) is not None:
            marks.append((stage, _seconds(event)))
    marks.append(("end", _seconds(events[-1])))
    return {name: round(marks[i + 1][1] - at, 3) for i, (name, at) in enumerate(marks[:-1])}


def one_round(
    client: AnalystClient,
    fed: Federation,
    spec: JobSpec,
    *,
    drop: int,
    victims: list[str],
    stage: str = "share_keys",
    mode: str = "kill",
) -> dict[str, Any]:
    frozen: list[str] = []
    events: list[Any] = []
    started, wall = time.perf_counter(), time.time()
    trigger = re.compile(rf"^round \d+ of \d+, {stage}: asked|^{stage}: asked")
    with resumed_after(fed, frozen, mode):
        job_id = client.submit(spec)
        for event in client.watch(job_id, timeout_s=20 * fed.stage_timeout + 120):
            events.append(event)
            if drop and not frozen and trigger.match(event.message):
                for name in victims[:drop]:
                    sig = signal.SIGKILL if mode == "kill" else signal.SIGSTOP
                    os.kill(fed.node(name).process.pid, sig)
                    frozen.append(name)
        doc = client.result_document(job_id)
        seconds = time.perf_counter() - started
        ended = time.time()
    wait, notes = dropped_wait(events)
    # Same host, same clock: what happened before the job's first event (the submit call) and
    # after its last one (unmasking, release document, GetResult and its JSON).
    first, last = (_seconds(events[0]), _seconds(events[-1])) if events else (wall, ended)
    result = doc["result"] or {}
    return {
        "status": doc["status"],
        "seconds": seconds,
        "deadline_wait_seconds": wait,
        "seconds_excluding_wait": seconds - wait,
        "stage_seconds": stage_seconds(events),
        "before_first_event_seconds": round(first - wall, 3),
        "after_last_event_seconds": round(ended - last, 3),
        "dropped_by_harness": frozen,
        "drop_stage": stage if drop else None,
        "drop_mode": mode if drop else None,
        "dropped": result.get("dropped", []),
        "survivors": len(result.get("survivors", [])),
        "drop_events": notes,
        "error": doc["error"],
    }


def _median(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r["status"] == "succeeded"]
    return round(statistics.median(values), 3) if values else None


def precheck(nodes: int, length: int, drop: int) -> str:
    """Why the coordinator would refuse this round, from the analysis' own plan ('' if it would not).

    Saves starting N processes only to be told no; the coordinator runs the same plan on submit.
    """
    if drop > 0 and nodes - drop < max(3, nodes // 2 + 1):
        # The quorum is at least a strict majority and at least 3 (the coordinator's and the
        # policies' floor), so such a round could only fail.
        return "skipped: k dropouts would leave fewer than max(3, n//2+1) nodes"
    fields = {f.name: f for f in load_policy(policies_dir() / "bank.yaml").schema("customers").fields}
    spec = analysis_spec(histogram_spec(length, max_dropouts=max(drop, 1)))
    try:
        histogram.plan(spec, fields, survivors_t=nodes - max(drop, 1), n_nodes=nodes)
    except TesseraError as exc:
        return f"refused: {exc.code}: {exc.message}"
    return ""


def bench_federation(
    args: argparse.Namespace, nodes: int, work: Path, configs: Sequence[tuple[int, int, str]]
) -> list[dict[str, Any]]:
    """Start one federation of ``nodes`` and time every (length, dropouts) config on it."""
    log(f"{nodes} nodes: writing PKI, policies and data ({args.rows} customers each)")
    fed = Federation(work, nodes, rows=args.rows, stage_timeout=args.stage_timeout, seed=args.seed)
    out: list[dict[str, Any]] = []
    jobs_before = 0
    try:
        t0 = time.perf_counter()
        address = fed.start(timeout=args.start_timeout)
        with AnalystClient.from_pki(address, fed.pki, ANALYST, timeout_s=120.0) as client:
            _wait_enrolled(client, fed.names, fed.procs, args.start_timeout)
            log(f"{nodes} nodes enrolled in {time.perf_counter() - t0:.1f}s")
            # Freeze from the end of the list: the first three always stay and keep a quorum.
            victims = list(reversed(fed.names))
            for length, drop, stage in configs:
                groups, bins = layout_for(length)
                row: dict[str, Any] = {"nodes": nodes, "length": length, "dropouts": drop}
                row |= {"drop_stage": stage or None, "drop_mode": args.drop_mode if drop else None}
                row |= {"groups": groups, "bins": bins, "max_dropouts": max(drop, 1)}
                spec = histogram_spec(length, max_dropouts=max(drop, 1))
                runs: list[dict[str, Any]] = []
                try:
                    if args.warmup:
                        one_round(client, fed, spec, drop=0, victims=victims)
                        jobs_before += 1
                    for run in range(args.runs):
                        how = {"drop": drop, "victims": victims, "stage": stage, "mode": args.drop_mode}
                        runs.append(one_round(client, fed, spec, **how))
                        runs[-1]["jobs_before_on_coordinator"] = jobs_before
                        if drop and args.drop_mode == "kill":
                            _wait_enrolled(client, fed.names, fed.procs, args.start_timeout)
                        jobs_before += 1
                        last = runs[-1]
                        log(
                            f"n={nodes} L={length} k={drop}@{stage or '-'} run {run + 1}: {last['status']} "
                            f"{last['seconds']:.2f}s (deadline wait {last['deadline_wait_seconds']:.2f}s)"
                        )
                except TesseraError as exc:
                    # A refusal at submit or a failure the coordinator reports: recorded, not hidden.
                    row["error"] = f"{exc.code}: {exc.message}"
                    log(f"n={nodes} L={length}: error ({exc.message})")
                row |= {
                    "median_seconds": _median(runs, "seconds"),
                    "median_deadline_wait_seconds": _median(runs, "deadline_wait_seconds"),
                    "median_seconds_excluding_wait": _median(runs, "seconds_excluding_wait"),
                    "runs": runs,
                }
                out.append(row)
    finally:
        killed = fed.close()
        if killed:
            log(f"had to SIGKILL: {', '.join(killed)}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=ints, default=[3, 10, 50])
    parser.add_argument("--length", type=ints, default=[1_000_000, 65_536])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dropouts", type=ints, default=[0, 1, 3])

    def stages(text: str) -> list[str]:
        chosen = [x for x in text.split(",") if x]
        unknown = set(chosen) - set(DROP_STAGES)
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown stage(s) {sorted(unknown)}; use {DROP_STAGES}")
        return chosen

    parser.add_argument(
        "--drop-stage",
        type=stages,
        default=["share_keys", "masked_input", "consistency_check"],
        help="stages at which the k nodes drop (each is its own config)",
    )
    parser.add_argument("--drop-mode", choices=("kill", "stop"), default="kill")
    parser.add_argument("--rows", type=int, default=200, help="synthetic customers per node")
    parser.add_argument("--stage-timeout", type=float, default=5.0, help="coordinator's seconds per stage")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument(
        "--reuse", action="store_true", help="one federation per node count instead of one per config"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep work files (logs) in this folder")
    args = parser.parse_args(argv)
    if any(n < 3 for n in args.nodes):
        parser.error("--nodes must all be at least 3")
    # Ctrl-C raises KeyboardInterrupt into the try/finally that stops every process; SIGTERM too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for nodes in args.nodes:
        configs: list[tuple[int, int, str]] = []
        for length in args.length:
            for drop in args.dropouts:
                why = precheck(nodes, length, drop)
                if why:
                    log(f"n={nodes} L={length} k={drop}: {why}")
                    rows.append({"nodes": nodes, "length": length, "dropouts": drop, "not_run": why})
                elif drop == 0:
                    configs.append((length, drop, ""))
                else:
                    configs.extend((length, drop, stage) for stage in args.drop_stage)
        # A fresh federation per config unless --reuse: a coordinator slows down as it keeps
        # the results of earlier large jobs (see jobs_before_on_coordinator).
        batches = [configs] if args.reuse else [[c] for c in configs]
        for index, batch in enumerate(b for b in batches if b):
            with contextlib.ExitStack() as stack:
                if args.keep is None:
                    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-bench-")))
                else:
                    work = args.keep.resolve() / f"n{nodes}-{index}"
                    work.mkdir(parents=True, exist_ok=False)
                rows.extend(bench_federation(args, nodes, work, batch))
    doc = {
        "benchmark": "bench_rounds",
        "what": "wall seconds per DP histogram round, submit to result, medians of runs",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "epsilon": EPSILON,
        "delta": DELTA,
        "rows_per_node": args.rows,
        "stage_timeout_seconds": args.stage_timeout,
        "fresh_federation_per_config": not args.reuse,
        "warmup_round_per_config": args.warmup,
        "drop_mode": args.drop_mode,
        "note": (
            "with dropouts the figure includes the coordinator noticing the drop (a killed node's "
            "closed connection plus the stream grace, 0.5 s by default; a frozen one's heartbeat "
            "silence or the stage deadline); "
            "median_seconds_excluding_wait subtracts the idle wait measured from the job events; "
            ""
            "jobs_before_on_coordinator shows how many jobs the same coordinator ran earlier"
        ),
        "target_3_nodes_1e6_seconds": 2.0,
        "results": rows,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
