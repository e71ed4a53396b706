#!/usr/bin/env python3
"""Load harness: N simulated nodes against a real coordinator process; prints one JSON document.

Everything is real except the number of machines: the coordinator is `tessera coordinator serve`
(its own process, SQLite store, mTLS on loopback); every node is the real ``NodeAgent`` (its own
certificate, channel, heartbeat, task stream, ``TaskRunner``, budget and egress ledgers, secure
aggregation and DP noise), many nodes per worker process (threads), ``--workers`` processes.
Certificates come from the dev PKI helpers (``tessera.core.pki``) and are cached under
``--cache`` so a second run with as many nodes or fewer issues none.

Scenarios (``--scenario``):

* ``connect``: N nodes connected plus ``--watches`` open job watches (on a job that never ends)
  for ``--seconds``; heartbeat round trips (every node's real heartbeat, timed in the agent)
  p50/p99/max, refused calls by status, coordinator RSS, threads and CPU seconds.
* ``round``: one DP histogram job of ``--length`` values per run over N nodes; ``--drop`` of the
  nodes die (stop answering, close their connection) when a task of ``--drop-stage`` reaches
  them (``masked_input``: before sending it; ``consistency_check`` or ``unmask``: after their
  masked input went out), ``--slow`` of them answer every task ``--slow-seconds`` late. Wall
  seconds submit to result, coordinator CPU seconds, stage times from the job's events. Killed
  nodes are restarted (fresh agents, same ledgers) between runs.
* ``storm``: every node's connection is cut at once, ``--storms`` times: seconds until every node
  has re-enrolled, refused calls, heartbeat p99 around the storm.

Not run by pytest. Progress goes to stderr. Examples:

    .venv/bin/python scripts/load_harness.py --scenario connect --nodes 1000 --watches 100
    .venv/bin/python scripts/load_harness.py --scenario round --nodes 100 --length 100000 \\
        --drop 0.1 --drop-stage consistency_check --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera-load"
ANALYSTS = 4  # analyst certificates the watches are spread over (each capped per peer)
MUTE = "mute-node"  # enrolled, never answers: holds a job open for the watches
PROBES = tuple(f"probe-{i}" for i in range(10))  # heartbeat-only nodes in a quiet process
EPSILON, DELTA = 0.5, 1e-7
TEMPLATES = 8  # distinct customer files, shared read-only by the nodes


def log(message: str) -> None:
    print(f"[load_harness {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def node_names(n: int) -> list[str]:
    return [f"n{i:05d}" for i in range(n)]


# -- certificates and node files ------------------------------------------------------------------


def ensure_pki(cache: Path, nodes: Sequence[str]) -> Path:
    """A dev consortium under ``cache``; issues only the certificates it does not hold yet."""
    from tessera.core import pki

    root = cache / "pki"
    if not (root / "ca.pem").exists():
        pki.init_ca(root, consortium="tessera-load")
    wanted: list[tuple[str, str, str | None]] = [("coordinator", "coordinator", None), ("node", MUTE, None)]
    wanted += [("analyst", f"load-analyst-{i}", "analyst") for i in range(ANALYSTS)]
    wanted += [("node", name, None) for name in (*nodes, *PROBES)]
    started, issued = time.perf_counter(), 0
    for kind, name, role in wanted:
        if not (root / f"{kind}s" / f"{name}.pem").exists():
            pki.issue(root, kind=kind, name=name, role=role, days=3650)
            issued += 1
    if issued:
        log(f"issued {issued} certificate(s) in {time.perf_counter() - started:.1f}s (cached in {root})")
    return root


def node_policy_doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "policies" / "bank.yaml").read_text())
    doc["partner"] = name
    doc["policy_id"] = f"{name}-load"
    doc["allowed_partners"] = ["*"]
    doc["privacy"]["epsilon_per_period"] = 10_000.0  # many timed jobs in one period
    doc["min_cohort_size"] = 1
    return doc


def ensure_templates(cache: Path, rows: int) -> list[Path]:
    from tessera.cli.demo_data import write_customers
    from tessera.core.policy import load_policy

    folder = cache / f"customers-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    policy_path = folder / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(node_policy_doc("template"), sort_keys=False))
    policy = load_policy(policy_path)
    out = []
    for i in range(TEMPLATES):
        path = folder / f"customers-{i}.csv"
        if not path.exists():
            write_customers(policy, "customers", path, rows=rows, seed=1000 + i)
        out.append(path)
    return out


# -- the node side (worker processes) -------------------------------------------------------------


def _agent_class() -> type:
    from tessera.client.agent import NodeAgent
    from tessera.core import serde
    from tessera.core.grpc_status import status_name
    from tessera.v1 import node_pb2

    class HarnessAgent(NodeAgent):  # type: ignore[misc,valid-type]
        """The real agent, with its heartbeats timed and a way to die or dawdle at a stage."""

        rtts: list[float]
        errors: Counter[str]
        drop_at = ""
        slow_s = 0.0
        dead = False
        enrolments = 0

        def _enrol(self, stub: Any) -> float:
            interval = float(super()._enrol(stub))
            self.enrolments += 1
            return interval

        def _heartbeat(self, stub: Any, interval: float, stop: threading.Event) -> None:
            request = node_pb2.HeartbeatRequest(node_version="load", policy_hash=self.policy.policy_hash)
            # Spread the first beat over the interval, as independent machines would be.
            if stop.wait(random.uniform(0, interval)):
                return
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    reply = stub.Heartbeat(request, timeout=interval * 2)
                    self.rtts.append(time.perf_counter() - started)
                    if reply.re_enrol:
                        self._enrol(stub)
                except grpc.RpcError as exc:
                    self.errors[f"heartbeat:{exc.code().name}"] += 1  # type: ignore[attr-defined]
                if stop.wait(interval):
                    return

        def _serve_tasks(self, stub: Any) -> None:
            # Why a node's task stream ended, counted: the coordinator sees only that it closed.
            try:
                super()._serve_tasks(stub)
            except grpc.RpcError:
                raise  # counted by _log_rpc_error
            except Exception as exc:
                self.errors[f"task:{type(exc).__name__}"] += 1
                raise
            self.errors["stream:ended by the coordinator"] += 1

        def _deliver(self, stub: Any, out: Any) -> None:
            try:
                super()._deliver(stub, out)
            except grpc.RpcError as exc:
                self.errors[f"send:{status_name(exc) or 'UNKNOWN'}"] += 1
                raise

        def _answer(self, stub: Any, task: Any) -> None:
            if task.task_id in self._unsent:
                self.errors["task:answer sent again"] += 1
            stage = serde.stage_from_pb(task.stage).value
            if self.drop_at and stage == self.drop_at:
                self.dead = True  # a crash: no answer, the connection goes away
                self.stop()
                return
            if self.slow_s and stage != "abort":
                time.sleep(self.slow_s)  # a slow machine, on purpose
            super()._answer(stub, task)

        def _log_rpc_error(self, exc: grpc.RpcError) -> None:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            if not self._stop.is_set() and code != "CANCELLED":
                self.errors[f"stream:{code}"] += 1
            super()._log_rpc_error(exc)

    return HarnessAgent


def _share_epoch_setup() -> None:
    """Let the nodes of this process share the epoch each builds from the same set-up.

    ``RoundSetup.config`` is a pure function of the set-up and the node's security parameters (the
    masking graph and the parameter digest over every neighbour pair): 0.2-0.3 s of Python per
    node at 1,000 participants, which a node on its own machine pays once per epoch but 250 nodes
    under one GIL pay 250 times over.
    """
    from tessera.core.rounds import RoundSetup

    if getattr(RoundSetup.config, "shared", False):
        return
    build = RoundSetup.config
    lock = threading.Lock()  # the first node builds, the others wait and take its epoch
    built: dict[tuple[Any, Any], Any] = {}

    def config(setup: Any, security: Any = None) -> Any:
        with lock:
            key = (setup, security)
            if key not in built:
                if len(built) > 16:
                    built.clear()
                built[key] = build(setup, security)
            return built[key]

    config.shared = True  # type: ignore[attr-defined]
    RoundSetup.config = config  # type: ignore[method-assign]


class Worker:
    """One worker process: many agents (two threads each), driven over a pipe."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.cls = _agent_class()
        self.rtts: list[float] = []
        self.errors: Counter[str] = Counter()
        self.agents: dict[str, Any] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.work = Path(cfg["work"])
        # The agents of this process share what their peer-certificate checks found (keyed by
        # certificate fingerprint; a pure function of certificate, CA and time). A node on its own
        # machine checks its 1,000 peers once, in about half a second; 250 nodes here would make
        # that a quarter of a million checks on two shared cores, starving every heartbeat.
        self.peer_certificates: dict[str, Any] = {}
        self.peer_lock = threading.Lock()  # the first node fetches and checks; the others wait
        from cryptography.hazmat.primitives.serialization import Encoding

        from tessera.core.pki import load_certificate

        ca = load_certificate(Path(cfg["pki"]) / "ca.pem", "CA certificate")
        self.ca_der = ca.public_bytes(Encoding.DER)
        _share_epoch_setup()

    def start(self, name: str) -> None:
        from tessera.client.agent import NodeConfig
        from tessera.client.datasource import CsvDataSource
        from tessera.client.db import node_engine
        from tessera.client.outgoing import open_ledgers
        from tessera.core.pki import TlsFiles
        from tessera.core.policy import load_policy

        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        policy_path = folder / "policy.yaml"
        if not policy_path.exists():
            policy_path.write_text(yaml.safe_dump(node_policy_doc(name), sort_keys=False))
        policy = load_policy(policy_path)
        csv = Path(self.cfg["templates"][int(name[1:]) % len(self.cfg["templates"])])
        config = NodeConfig(
            node_id=name,
            coordinator=self.cfg["address"],
            tls=TlsFiles.for_identity(Path(self.cfg["pki"]), "node", name),
            backoff_max_s=5.0,
        )
        ledgers = open_ledgers(node_engine(f"sqlite:///{folder / 'ledgers.db'}"), policy)
        agent = self.cls(config, policy, CsvDataSource({"customers": csv}, policy), ledgers)
        agent.rtts, agent.errors = self.rtts, self.errors
        # (its CA is set too: a node that has not seen the CA yet would empty the shared cache)
        peers = agent.runner.dp.peers
        peers._kept, peers._ca, peers._lock = self.peer_certificates, self.ca_der, self.peer_lock
        thread = threading.Thread(target=agent.run, name=f"node-{name}", daemon=True)
        thread.start()
        self.agents[name], self.threads[name] = agent, thread

    def kill(self, name: str) -> None:
        agent = self.agents.get(name)
        if agent is not None:
            agent.stop()
            self.threads[name].join(timeout=10)

    def handle(self, cmd: str, arg: Any) -> Any:
        if cmd == "start":
            ramp = float(self.cfg.get("ramp_s", 0.0)) / max(1, len(arg))
            for name in arg:
                self.start(name)
                if ramp:
                    time.sleep(ramp)  # spread connection set-up like machines coming up
            return len(arg)
        if cmd == "enrolled":
            return sum(1 for a in self.agents.values() if a.enrolled.is_set() and not a.dead)
        if cmd == "enrolments":
            return {n: a.enrolments for n, a in self.agents.items()}
        if cmd == "arm":  # {name: stage}
            for name, stage in arg.items():
                self.agents[name].drop_at = stage
            return len(arg)
        if cmd == "slow":  # {name: seconds}
            for name, seconds in arg.items():
                self.agents[name].slow_s = seconds
            return len(arg)
        if cmd == "restart_dead":
            dead = [n for n, a in self.agents.items() if a.dead or a._stop.is_set()]
            for name in dead:
                self.kill(name)
                self.start(name)
            return dead
        if cmd == "restart":
            for name in arg:
                self.kill(name)
                self.start(name)
            return len(arg)
        if cmd == "kill":
            for name in arg:
                self.kill(name)
                self.agents[name].dead = True
            return len(arg)
        if cmd == "storm":  # cut every connection at once; the agents reconnect by themselves
            for agent in self.agents.values():
                call = agent._call
                if call is not None:
                    call.cancel()
            return len(self.agents)
        if cmd == "stats":
            rtts, self.rtts[:] = list(self.rtts), []
            errors = dict(self.errors)
            self.errors.clear()
            return {"rtts": rtts, "errors": errors}
        if cmd == "ledgers":
            return {name: ledger_check(agent) for name, agent in self.agents.items()}
        raise ValueError(f"unknown command {cmd}")

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for thread in self.threads.values():
            thread.join(timeout=10)


def ledger_check(agent: Any) -> dict[str, Any]:
    """Open reservations and doubly charged rounds in one node's budget ledger."""
    history = agent.ledgers.budget.history()
    open_jobs = [r.job_id for r in history if r.state.value == "reserved"]
    double = [
        (r.job_id, round_no)
        for r in history
        for round_no, count in Counter(c.round_no for c in r.charges).items()
        if count > 1
    ]
    return {"reservations": len(history), "open": open_jobs, "charged_twice": double}


def worker_main(conn: Connection, cfg: dict[str, Any]) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us over the pipe
    # Real nodes run on machines of their own: here they share two cores with the coordinator,
    # so they yield to it (the figures then measure the coordinator, not the harness).
    os.nice(int(cfg.get("nice", 0)))
    worker = Worker(cfg)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                break
            try:
                conn.send(("ok", worker.handle(cmd, arg)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        worker.stop()
        conn.send(("ok", None))


def probe_main(conn: Connection, cfg: dict[str, Any]) -> None:
    """A lightly loaded process of a few probe nodes timing their heartbeats: what a node on its
    own machine sees, apart from the harness's hundreds of agents per process."""
    from tessera.core import serde
    from tessera.core.pki import TlsFiles, channel_credentials
    from tessera.core.policy import load_policy
    from tessera.v1 import node_pb2, node_pb2_grpc

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(int(cfg.get("nice", 0)))
    stop = threading.Event()
    rtts: list[float] = []
    errors: Counter[str] = Counter()
    policy = load_policy(Path(cfg["policy"]))
    interval = cfg["interval_s"]

    def beat(name: str) -> None:
        creds = channel_credentials(TlsFiles.for_identity(Path(cfg["pki"]), "node", name))
        with grpc.secure_channel(cfg["address"], creds) as channel:
            stub = node_pb2_grpc.NodeServiceStub(channel)
            summary = serde.policy_summary_to_pb(policy.summary())
            stub.Enrol(node_pb2.EnrolRequest(node_version="probe", policy=summary), timeout=60)
            request = node_pb2.HeartbeatRequest(node_version="probe", policy_hash=policy.policy_hash)
            stop.wait(random.uniform(0, interval))
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    stub.Heartbeat(request, timeout=interval * 2)
                    rtts.append(time.perf_counter() - started)
                except grpc.RpcError as exc:
                    errors[f"heartbeat:{exc.code().name}"] += 1  # type: ignore[attr-defined]
                stop.wait(interval)

    threads = [threading.Thread(target=beat, args=(n,), daemon=True) for n in cfg["names"]]
    for thread in threads:
        thread.start()
    while True:
        cmd, _ = conn.recv()
        if cmd == "stats":
            conn.send(("ok", {"rtts": list(rtts), "errors": dict(errors)}))
            rtts.clear()
            errors.clear()
        else:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
            conn.send(("ok", None))
            return


# -- the harness ---------------------------------------------------------------------------------


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds, RSS (MiB) and threads of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "cpu_seconds": cpu,
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "threads": int(status["Threads"]),
    }


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 2)

    return {"count": len(ordered), "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": round(1000 * ordered[-1], 2)}  # fmt: skip


class Harness:
    """Coordinator process + worker processes; ``close`` stops them all."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.names = node_names(args.nodes)
        self.cache = Path(args.cache)
        self.pki = ensure_pki(self.cache, self.names)
        self.templates = ensure_templates(self.cache, args.rows)
        self.coordinator: Any = None
        self.workers: list[tuple[Any, Connection, list[str]]] = []
        self.probe: tuple[Any, Connection] | None = None
        self.address = ""

    def start_coordinator(self) -> None:
        from tessera.cli.demo import _spawn, _wait_port

        port_file = self.work / "coordinator.port"
        # fmt: off
        argv = [
            "coordinator", "serve", "--pki", str(self.pki), "--listen", "127.0.0.1:0",
            "--port-file", str(port_file), "--db", f"sqlite:///{self.work / 'coordinator.db'}",
            "--heartbeat-ms", str(self.args.heartbeat_ms), "--stage-timeout", str(self.args.stage_timeout),
            "--log-file", str(self.work / "coordinator.log"), "--log-level", "warning",
        ]
        # fmt: on
        self.coordinator = _spawn("coordinator", argv, self.work / "coordinator.out")
        self.address = f"127.0.0.1:{_wait_port(self.coordinator, port_file, 60)}"

    @property
    def pid(self) -> int:
        return int(self.coordinator.process.pid)

    def start_nodes(self) -> None:
        ctx = mp.get_context("spawn")
        per = math.ceil(len(self.names) / self.args.workers)
        cfg = {
            "address": self.address,
            "pki": str(self.pki),
            "work": str(self.work / "nodes"),
            "templates": [str(t) for t in self.templates],
            "ramp_s": self.args.ramp_seconds,
            "nice": self.args.nice,
        }
        for i in range(self.args.workers):
            names = self.names[i * per : (i + 1) * per]
            if not names:
                continue
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(child, cfg), name=f"load-worker-{i}", daemon=True)
            process.start()
            self.workers.append((process, parent, names))
        self.ask_all("start", lambda names: names)
        self.wait_enrolled(len(self.names))

    def start_probe(self) -> None:
        folder = self.work / "probe"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "policy.yaml").write_text(yaml.safe_dump(node_policy_doc("probe"), sort_keys=False))
        cfg = {
            "address": self.address,
            "pki": str(self.pki),
            "policy": str(folder / "policy.yaml"),
            "names": list(PROBES),
            "interval_s": self.args.heartbeat_ms / 1000.0,
            "nice": self.args.nice,
        }
        parent, child = mp.get_context("spawn").Pipe()
        process = mp.get_context("spawn").Process(target=probe_main, args=(child, cfg), daemon=True)
        process.start()
        self.probe = (process, parent)

    def probe_stats(self) -> tuple[list[float], dict[str, int]]:
        if self.probe is None:
            return [], {}
        doc = self.ask(self.probe[1], "stats")
        return doc["rtts"], doc["errors"]

    def ask(self, conn: Connection, cmd: str, arg: Any = None) -> Any:
        conn.send((cmd, arg))
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(f"worker failed: {value}")
        return value

    def ask_all(self, cmd: str, arg_for: Any = None) -> list[Any]:
        for _, conn, names in self.workers:
            conn.send((cmd, arg_for(names) if callable(arg_for) else arg_for))
        out = []
        for _, conn, _ in self.workers:
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"worker failed: {value}")
            out.append(value)
        return out

    def wait_enrolled(self, count: int, timeout: float | None = None) -> float:
        started = time.perf_counter()
        deadline = started + (timeout or self.args.start_timeout)
        while time.perf_counter() < deadline:
            if self.coordinator.process.poll() is not None:
                raise RuntimeError("the coordinator exited; see its log in the work folder")
            if sum(self.ask_all("enrolled")) >= count:
                return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"fewer than {count} nodes enrolled in time")

    def stats(self) -> tuple[list[float], Counter[str]]:
        rtts: list[float] = []
        errors: Counter[str] = Counter()
        for doc in self.ask_all("stats"):
            rtts.extend(doc["rtts"])
            errors.update(doc["errors"])
        return rtts, errors

    def analyst(self, index: int = 0) -> Any:
        from tessera.cli.analyst_client import AnalystClient

        return AnalystClient.from_pki(self.address, self.pki, f"load-analyst-{index}", timeout_s=120.0)

    def close(self) -> None:
        from tessera.cli.demo import _stop_all

        if self.probe is not None:
            self.workers.append((*self.probe, []))
        for process, conn, _ in self.workers:
            with contextlib.suppress(Exception):
                conn.send(("stop", None))
                if conn.poll(30):
                    conn.recv()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        if self.coordinator is not None:
            _stop_all([self.coordinator])


def enrol_mute(h: Harness) -> None:
    """Enrol a node that never answers, so that a job naming only it stays open."""
    from tessera.core import serde
    from tessera.core.pki import TlsFiles, channel_credentials
    from tessera.core.policy import load_policy
    from tessera.v1 import node_pb2, node_pb2_grpc

    folder = h.work / MUTE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(yaml.safe_dump(node_policy_doc(MUTE), sort_keys=False))
    policy = load_policy(folder / "policy.yaml")
    creds = channel_credentials(TlsFiles.for_identity(h.pki, "node", MUTE))
    with grpc.secure_channel(h.address, creds) as channel:
        node_pb2_grpc.NodeServiceStub(channel).Enrol(
            node_pb2.EnrolRequest(node_version="load", policy=serde.policy_summary_to_pb(policy.summary())),
            timeout=30,
        )


@contextlib.contextmanager
def open_watches(h: Harness, count: int) -> Iterator[dict[str, int]]:
    """``count`` open WatchJob streams on a job that does not end, spread over the analysts."""
    from tessera.core.types import JobSpec
    from tessera.v1 import analyst_pb2, analyst_pb2_grpc

    state = {"open": 0, "refused": 0}
    if count <= 0:
        yield state
        return
    enrol_mute(h)
    with h.analyst() as client:
        job_id = client.submit(
            JobSpec(analysis="inventory", dataset="customers", purpose="research", participants=(MUTE,))
        )
    calls: list[Any] = []
    threads: list[threading.Thread] = []
    opened = threading.Semaphore(0)

    def follow(call: Any) -> None:
        try:
            for _ in call:
                opened.release()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                state["refused"] += 1
                opened.release()

    from tessera.core.pki import TlsFiles, channel_credentials

    channels = [
        grpc.secure_channel(
            h.address, channel_credentials(TlsFiles.for_identity(h.pki, "analyst", f"load-analyst-{i}"))
        )
        for i in range(ANALYSTS)
    ]
    try:
        for i in range(count):
            stub = analyst_pb2_grpc.AnalystServiceStub(channels[i % ANALYSTS])
            call = stub.WatchJob(analyst_pb2.WatchJobRequest(job_id=job_id))
            calls.append(call)
            thread = threading.Thread(target=follow, args=(call,), daemon=True)
            thread.start()
            threads.append(thread)
        for _ in range(count):
            opened.acquire(timeout=30)
        state["open"] = count - state["refused"]
        yield state
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()


def scenario_connect(h: Harness) -> dict[str, Any]:
    started = time.perf_counter()
    h.start_nodes()
    enrolled_s = time.perf_counter() - started
    log(f"{len(h.names)} nodes enrolled in {enrolled_s:.1f}s")
    h.start_probe()
    with open_watches(h, h.args.watches) as watches:
        time.sleep(h.args.heartbeat_ms / 1000.0 * 2)  # let the probes enrol and settle
        h.stats()  # forget the ramp-up
        h.probe_stats()
        before = proc_stats(h.pid)
        log(f"{watches['open']} watches open; measuring heartbeats for {h.args.seconds:.0f}s")
        time.sleep(h.args.seconds)  # measuring window of a benchmark, not synchronisation
        after = proc_stats(h.pid)
        rtts, errors = h.stats()
        probe_rtts, probe_errors = h.probe_stats()
    return {
        "nodes": len(h.names),
        "watches_open": watches["open"],
        "watches_refused": watches["refused"],
        "enrol_all_seconds": round(enrolled_s, 2),
        "heartbeat_interval_ms": h.args.heartbeat_ms,
        # Every agent's own heartbeats: includes the harness's own contention (hundreds of agent
        # threads per worker process, sharing the two cores with the coordinator).
        "heartbeat_rtt_all_agents": percentiles(rtts),
        # Ten probe nodes in a process of their own (what a node on its own machine would see,
        # still sharing the two cores): the figure the target is about.
        "heartbeat_rtt_probes": percentiles(probe_rtts),
        "refused_or_failed_calls": dict(errors) | {f"probe:{k}": v for k, v in probe_errors.items()},
        "coordinator": {
            "rss_mib": round(after["rss_mib"], 1),
            "threads": after["threads"],
            "cpu_seconds_in_window": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
            "cpu_share_of_one_core": round(
                (after["cpu_seconds"] - before["cpu_seconds"]) / h.args.seconds, 3
            ),
        },
    }


def histogram_spec(length: int, *, max_dropouts: int) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rounds import histogram_spec as spec_for  # type: ignore[import-not-found]

    return spec_for(length, max_dropouts=max_dropouts)


def _seconds(event: Any) -> float:
    return float(event.at.seconds) + float(event.at.nanos) / 1e9


def one_round(
    h: Harness, client: Any, spec: Any, victims: Sequence[str], slow: Sequence[str]
) -> dict[str, Any]:
    stage = h.args.drop_stage
    for _, conn, names in h.workers:
        mine = {n: stage for n in victims if n in names}
        if mine:
            h.ask(conn, "arm", mine)
        slow_here = {n: h.args.slow_seconds for n in slow if n in names}
        if slow_here:
            h.ask(conn, "slow", slow_here)
    h.stats()  # the nodes' call failures of this round only
    cpu0 = proc_stats(h.pid)["cpu_seconds"]
    started = time.perf_counter()
    job_id = client.submit(spec)
    events = list(client.watch(job_id, timeout_s=h.args.stage_timeout * 20 + 300))
    doc = client.result_document(job_id)
    wall = time.perf_counter() - started
    cpu = proc_stats(h.pid)["cpu_seconds"] - cpu0
    result = doc["result"] or {}
    marks = [("start", _seconds(events[0]))] if events else []
    for event in events[1:]:
        if ": asked " in event.message:
            marks.append((event.message.split(":", 1)[0].split(", ")[-1], _seconds(event)))
    if events:
        marks.append(("end", _seconds(events[-1])))
    stages = {f"{i}:{name}": round(marks[i + 1][1] - at, 3) for i, (name, at) in enumerate(marks[:-1])}
    _, errors = h.stats()
    return {
        "status": doc["status"],
        "wall_seconds": round(wall, 3),
        "coordinator_cpu_seconds": round(cpu, 3),
        "survivors": len(result.get("survivors", [])),
        "dropped": len(result.get("dropped", [])),
        "stage_seconds": stages,
        "drop_events": [e.message for e in events if e.message.endswith(" dropped")],
        "node_call_failures": dict(errors),
        "error": doc["error"],
    }


def scenario_round(h: Harness) -> dict[str, Any]:
    h.start_nodes()
    n = len(h.names)
    k = round(h.args.drop * n)
    victims = h.names[n - k :] if k else []
    slow = h.names[: round(h.args.slow * n)] if h.args.slow else []
    spec = histogram_spec(h.args.length, max_dropouts=max(1, k))
    runs = []
    warmup: dict[str, Any] | None = None
    with h.analyst() as client:
        if h.args.warmup:
            # Not in the medians: the nodes' first epoch also fetches and checks every peer's
            # certificate (once per node process), which later jobs do not repeat.
            log("warm-up round (no drops; not in the medians)")
            warmup = one_round(h, client, spec, [], [])
            log(
                f"warm-up: {warmup['status']} wall {warmup['wall_seconds']:.2f}s "
                f"coordinator cpu {warmup['coordinator_cpu_seconds']:.2f}s"
            )
        for run in range(h.args.runs):
            row = one_round(h, client, spec, victims, slow)
            runs.append(row)
            log(
                f"run {run + 1}: {row['status']} wall {row['wall_seconds']:.2f}s "
                f"coordinator cpu {row['coordinator_cpu_seconds']:.2f}s dropped {row['dropped']}"
            )
            if victims:
                restarted = [n for names in h.ask_all("restart_dead") for n in names]
                h.wait_enrolled(n)
                log(f"restarted {len(restarted)} killed node(s)")
    ok = [r for r in runs if r["status"] == "succeeded"]

    def med(key: str) -> float | None:
        return round(statistics.median(r[key] for r in ok), 3) if ok else None

    return {
        "nodes": n,
        "length": h.args.length,
        "dropped_nodes": k,
        "drop_stage": h.args.drop_stage if k else None,
        "slow_nodes": len(slow),
        "slow_seconds": h.args.slow_seconds if slow else None,
        "median_wall_seconds": med("wall_seconds"),
        "median_coordinator_cpu_seconds": med("coordinator_cpu_seconds"),
        "coordinator_rss_mib": round(proc_stats(h.pid)["rss_mib"], 1),
        "warmup": warmup,
        "runs": runs,
    }


def scenario_storm(h: Harness) -> dict[str, Any]:
    h.start_nodes()
    storms = []
    for i in range(h.args.storms):
        h.stats()
        before = {n: c for doc in h.ask_all("enrolments") for n, c in doc.items()}
        cpu0 = proc_stats(h.pid)["cpu_seconds"]
        started = time.perf_counter()
        h.ask_all("storm")
        while True:
            now = {n: c for doc in h.ask_all("enrolments") for n, c in doc.items()}
            if all(now[n] > before[n] for n in before):
                break
            if time.perf_counter() - started > h.args.start_timeout:
                raise RuntimeError("nodes did not all come back after the storm")
            time.sleep(0.1)
        back = time.perf_counter() - started
        time.sleep(2.0)  # a short window after the storm for the heartbeat figures
        rtts, errors = h.stats()
        storms.append(
            {
                "all_back_seconds": round(back, 2),
                "coordinator_cpu_seconds": round(proc_stats(h.pid)["cpu_seconds"] - cpu0, 2),
                "heartbeat_rtt": percentiles(rtts),
                "refused_or_failed_calls": dict(errors),
            }
        )
        log(f"storm {i + 1}: every node back in {back:.2f}s")
    return {
        "nodes": len(h.names),
        "storms": storms,
        "coordinator_rss_mib": round(proc_stats(h.pid)["rss_mib"], 1),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--scenario", choices=("connect", "round", "storm"), default="connect")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=4, help="node processes (nodes are spread over them)")
    p.add_argument("--watches", type=int, default=0, help="open job watches (connect)")
    p.add_argument("--seconds", type=float, default=30.0, help="measuring window (connect)")
    p.add_argument("--length", type=int, default=100_000, help="values per vector (round)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--drop", type=float, default=0.0, help="fraction of nodes that die in each round")
    p.add_argument(
        "--drop-stage",
        default="consistency_check",
        choices=("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask"),
        help="they die when a task of this stage reaches them",
    )
    p.add_argument("--slow", type=float, default=0.0, help="fraction of nodes that answer late")
    p.add_argument("--slow-seconds", type=float, default=1.0)
    p.add_argument("--storms", type=int, default=3)
    p.add_argument("--rows", type=int, default=30, help="synthetic customers per node")
    p.add_argument("--heartbeat-ms", type=int, default=2000)
    p.add_argument("--stage-timeout", type=float, default=120.0)
    p.add_argument("--ramp-seconds", type=float, default=5.0, help="spread each worker's node start-up")
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--nice", type=int, default=5, help="niceness of the node processes (0: none)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="certificates and customer files")
    p.add_argument("--keep", type=Path, default=None, help="keep the work folder (logs, databases) here")
    return p


def run(args: argparse.Namespace, body: Any) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-load-")))
        else:
            work = args.keep.resolve()
            work.mkdir(parents=True, exist_ok=True)
        h = Harness(args, work)
        stack.callback(h.close)
        h.start_coordinator()
        started = time.perf_counter()
        doc: dict[str, Any] = body(h)
        doc["total_seconds"] = round(time.perf_counter() - started, 1)
        return doc


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    body = {"connect": scenario_connect, "round": scenario_round, "storm": scenario_storm}[args.scenario]
    doc = {
        "benchmark": "load_harness",
        "scenario": args.scenario,
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "workers": args.workers,
        "node_processes_niceness": args.nice,
        "heartbeat_ms": args.heartbeat_ms,
        **run(args, body),
    }
    doc["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
