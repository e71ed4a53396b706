"""DP jobs over real gRPC and mTLS: one secure-aggregation round, budgets, dropouts, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from federation import DroppingAgent, Federation, open_policy, spend_elsewhere, wait_for

from tessera.client.agent import SEND_ATTEMPTS, NodeAgent
from tessera.core.errors import Conflict
from tessera.core.types import JobSpec

EPS, DELTA = 0.5, 1e-7  # within every example policy's per-job limits
NODES = {"bank": "bank", "telco": "telco", "retailer": "retailer", "stranger": "telco"}  # name -> base policy


def _run(fed: Federation, spec: JobSpec) -> dict:
    with fed.analyst() as client:
        job_id = client.submit(spec)
        list(client.watch(job_id, timeout_s=60))
        return client.result_document(job_id)


def _count(**params: object) -> JobSpec:
    return JobSpec(
        analysis="count", dataset="customers", purpose="research", epsilon=EPS, delta=DELTA, params=params
    )


def _spent(fed: Federation, name: str) -> float:
    return fed.ledgers(name).budget.remaining().rho_spent


def _masked_entries(fed: Federation, name: str) -> list:
    return [e for e in fed.ledgers(name).egress.entries() if e.record.stage == "masked_input"]


@pytest.fixture
def fed(pki_dir: Path, tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rows=300)
    federation.start_coordinator(stage_timeout=3.0)
    yield federation
    federation.close()


def _start(
    fed: Federation,
    names: tuple[str, ...],
    *,
    drop: dict[str, str] | None = None,
    privacy: dict[str, float] | None = None,
) -> None:
    for name in names:
        changes = {} if privacy is None else {"privacy": privacy}
        policy = open_policy(NODES[name], name, fed.work, **changes)
        if drop and name in drop:
            agent_class = type(f"Drop{name}", (DroppingAgent,), {"drop_at": drop[name]})
            fed.start_node(name, policy=policy, agent_class=agent_class)
        else:
            fed.start_node(name, policy=policy)


# ε = 2 for the count by region: at the policies' 0.5 a cell's noise has sd 9.6, and the empty
# "other" cell (true count 0) cleared the cohort floor of 25 in about one run of 190
# (P(noise >= 25) = 0.5%); at 2 the sd is 2.6 and clearing the floor takes a 9-sd draw.
WIDE = {"epsilon_per_job": 2.0, "epsilon_per_period": 8.0, "period_days": 30, "delta": DELTA}


def test_count_by_region_is_released_charged_and_recorded(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"), privacy=WIDE)
    regions = ("north", "south", "east", "west", "central")
    doc = _run(fed, replace(_count(group_by="region", groups=regions), epsilon=2.0))
    assert doc["status"] == "succeeded", doc
    result = doc["result"]
    assert sorted(result["survivors"]) == ["bank", "retailer", "telco"]
    cells = {c["group"]: c for c in result["cells"]}
    assert set(cells) == {*regions, "other"}
    # Nobody lives in "other": its noisy count falls below the minimum cohort and is withheld.
    assert cells["other"]["suppressed"] is True and cells["other"]["count"] is None
    total = sum(c["count"]["value"] or 0 for c in cells.values() if not c["suppressed"])
    # 900 customers in five released cells of noise sd 2.6: the total's sd is 5.8, so 40 is 6.9 sd,
    # and a node or a region lost or counted twice (>= 180) still fails it.
    assert abs(total - 900) < 40
    for name in ("bank", "telco", "retailer"):
        assert _spent(fed, name) > 0
        (entry,) = _masked_entries(fed, name)
        # The customer key is read too (to bound each customer), and recorded as touched.
        assert entry.record.rho > 0 and entry.record.fields == ("region", "customer_id")
        assert fed.ledgers(name).egress.verify().ok
        # The reservation entry names who asked, as the message entries do.
        entries = [e.record for e in fed.ledgers(name).egress.entries() if e.record.job_id == doc["job_id"]]
        assert {(r.stage, r.analyst) for r in entries if r.stage == "budget.reserve"} == {
            ("budget.reserve", entry.record.analyst)
        }
        assert entry.record.analyst


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "masked_input", "unmask"])
def test_a_node_dropping_at_any_stage_still_gives_the_right_sum(fed: Federation, stage: str) -> None:
    _start(fed, tuple(NODES), drop={"stranger": stage})
    doc = _run(fed, _count(max_dropouts=1))
    assert doc["status"] == "succeeded", doc
    survivors = set(doc["result"]["survivors"])
    # Dropping before sending the masked input leaves the node out; after, its input counts.
    expected = {"bank", "telco", "retailer"} | ({"stranger"} if stage == "unmask" else set())
    assert survivors == expected
    (cell,) = doc["result"]["cells"]
    assert abs(cell["count"]["value"] - 300 * len(expected)) < 60
    assert (_spent(fed, "stranger") > 0) == (stage == "unmask")


@pytest.mark.parametrize("stage", ["share_keys", "unmask"])
def test_a_node_that_died_mid_job_is_told_the_job_ended(fed: Federation, stage: str) -> None:
    # It reserved the job's budget at advertise-keys and never saw the job's last unmask, whether
    # it died before its masked input (not even listed as dropped from the sum) or after it
    # (counted and charged): without an end notice its reservation would stay held until it
    # expires.
    _start(fed, tuple(NODES), drop={"stranger": stage})
    doc = _run(fed, _count(max_dropouts=1))
    assert doc["status"] == "succeeded", doc
    assert ("stranger" in doc["result"]["survivors"]) == (stage == "unmask")
    fed.stop_node("stranger")
    fed.start_node("stranger", policy=open_policy(NODES["stranger"], "stranger", fed.work))  # same ledgers

    def released() -> bool:
        return all(r.state.value != "reserved" for r in fed.ledgers("stranger").budget.history())

    wait_for(released)
    assert (_spent(fed, "stranger") > 0) == (stage == "unmask")  # what its masked input cost stays spent


def test_too_many_dropouts_fail_cleanly_and_charge_nobody_who_sent_nothing(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"), drop={"retailer": "share_keys"})
    doc = _run(fed, _count())
    assert doc["status"] == "failed"
    assert "share" in doc["error"] or "threshold" in doc["error"]
    for name in ("bank", "telco"):
        assert _spent(fed, name) == 0
        assert _masked_entries(fed, name) == []


def test_core_sensitive_field_and_too_few_nodes_are_refused_before_anything_runs(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    with fed.analyst() as client:
        with pytest.raises(Exception, match="core_sensitive"):
            client.submit(_count(group_by="email", groups=("a",)))
        with pytest.raises(Conflict, match="at least 3"):
            client.submit(
                JobSpec(
                    analysis="count",
                    dataset="customers",
                    purpose="research",
                    epsilon=EPS,
                    delta=DELTA,
                    participants=("bank", "telco"),
                )
            )
    for name in ("bank", "telco", "retailer"):
        assert _spent(fed, name) == 0
        assert fed.ledgers(name).egress.entries() == []


TIGHT = {"epsilon_per_job": 0.5, "epsilon_per_period": 0.8, "period_days": 30, "delta": 1e-6}


def test_the_coordinator_mirror_refuses_a_job_a_node_can_no_longer_afford(fed: Federation) -> None:
    fed.start_node("bank", policy=open_policy("bank", "bank", fed.work, privacy=TIGHT))
    _start(fed, ("telco", "retailer"))
    # zCDP composes tightly: two releases at epsilon 0.5 fit a period of 0.8; a third does not.
    for _ in range(2):
        doc = _run(fed, _count())
        assert doc["status"] == "succeeded", (doc["error"], doc["vetoes"])
    with fed.analyst() as client:
        views = {b.node_id: b for b in client.budgets()}  # one budget per node, all datasets
        assert len(views) == len(client.budgets()) and views["bank"].releases == 2
        assert 0 < views["bank"].epsilon_left < 0.5
        with pytest.raises(Conflict, match="budget"):
            client.submit(_count())
    assert len(_masked_entries(fed, "bank")) == 2


def test_the_node_vetoes_over_budget_before_touching_data(fed: Federation) -> None:
    fed.start_node("bank", policy=open_policy("bank", "bank", fed.work, privacy=TIGHT))
    _start(fed, ("telco", "retailer"))
    # Spending the coordinator never saw (the node is the authority on its own budget).
    budget = fed.ledgers("bank").budget
    for job in ("elsewhere-1", "elsewhere-2"):
        budget.release(budget.reserve(job_id=job, dataset="customers", epsilon=0.5, delta=1e-7))
        spend_elsewhere(fed, "bank", job + "-spent", dataset="customers", epsilon=0.5, delta=1e-7)
    spent = _spent(fed, "bank")
    refused = _run(fed, _count())
    assert refused["status"] == "failed"
    assert any(v["node_id"] == "bank" and v["code"] == "budget.period_exhausted" for v in refused["vetoes"])
    assert _spent(fed, "bank") == spent
    assert [e for e in _masked_entries(fed, "bank") if e.record.job_id == refused["job_id"]] == []
    # The coordinator's abort notice frees the others' reservations at once (not after an hour).
    for name in ("telco", "retailer"):
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)
        assert _spent(fed, name) == 0 and _masked_entries(fed, name) == []


def test_result_json_is_stable_and_carries_intervals(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    spec = JobSpec(
        analysis="mean",
        dataset="customers",
        purpose="research",
        epsilon=EPS,
        delta=DELTA,
        params={"field": "monthly_spend", "lower": 0.0, "upper": 200.0},
    )
    doc = _run(fed, spec)
    assert doc["status"] == "succeeded", doc
    (cell,) = doc["result"]["cells"]
    low, high = cell["mean"]["ci95"]
    assert low <= cell["mean"]["value"] <= high
    json.dumps(doc)
    wait_for(lambda: True)


def test_a_csv_node_that_cannot_tell_its_customers_apart_vetoes_and_spends_nothing(fed: Federation) -> None:
    import yaml

    datasets = yaml.safe_load((Path(__file__).parents[2] / "policies" / "bank.yaml").read_text())["datasets"]
    del datasets["customers"]["customer_key"]
    fed.start_node("bank", policy=open_policy("bank", "bank", fed.work, datasets=datasets))
    _start(fed, ("telco", "retailer"))
    refused = _run(fed, _count(group_by="region", groups=("north", "south")))
    assert refused["status"] == "failed"
    (veto,) = [v for v in refused["vetoes"] if v["node_id"] == "bank"]
    assert veto["code"] == "policy.customer_key_required" and "customer_key" in veto["reason"]
    assert _spent(fed, "bank") == 0 and _masked_entries(fed, "bank") == []


def test_an_absurd_bound_never_leaves_a_job_running(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    spec = JobSpec(
        analysis="sum",
        dataset="customers",
        purpose="research",
        epsilon=EPS,
        delta=DELTA,
        params={"field": "monthly_spend", "lower": 0.0, "upper": 1e308},
    )
    try:
        doc = _run(fed, spec)
    except Exception as exc:  # refused up front is as good as ended
        assert "upper" in str(exc) or "bound" in str(exc) or "finite" in str(exc)
        return
    assert doc["status"] in ("succeeded", "failed"), doc
    for name in ("bank", "telco", "retailer"):
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)


def test_a_population_above_the_declared_cap_is_vetoed_not_wrapped(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    doc = _run(fed, _count(max_customers=10))  # each node holds 300 customers
    assert doc["status"] == "failed"
    assert {v["code"] for v in doc["vetoes"]} == {"node.population_too_large"}
    for name in ("bank", "telco", "retailer"):
        assert _masked_entries(fed, name) == []
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)
        assert fed.ledgers(name).budget.remaining().rho_spent == 0


def test_the_store_gets_every_task_of_every_stage_and_no_stage_input(fed: Federation) -> None:
    # A stage's tasks are held in memory while it is open and written when it closes; inputs are
    # never written (a roster or set-up names every participant: n^2 bytes per stage).
    _start(fed, ("bank", "telco", "retailer"))
    doc = _run(fed, _count(group_by="region", groups=("north", "south")))
    assert doc["status"] == "succeeded", doc
    assert fed.store is not None
    tasks = fed.store.tasks_for(doc["job_id"])
    by_stage: dict[str, set[tuple[str, str]]] = {}
    for task in tasks:
        by_stage.setdefault(task.stage.value, set()).add((task.node_id, task.state.value))
    stages = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
    assert set(by_stage) == set(stages)
    for stage in stages:
        assert by_stage[stage] == {(n, "answered") for n in ("bank", "retailer", "telco")}, stage
    assert all(t.stage_input == b"" and t.round_input == b"" for t in tasks)


def test_peer_certificates_cross_the_wire_once_per_node_process(fed: Federation) -> None:
    # The set-up pins certificates by fingerprint; a node fetches and verifies the ones it has
    # not seen, so a second job (a new epoch) fetches nothing.
    _start(fed, ("bank", "telco", "retailer"))
    for _ in range(2):
        assert _run(fed, _count())["status"] == "succeeded"
    for name in ("bank", "telco", "retailer"):
        assert fed.agents[name].runner.dp.peers.verified == 3, name


class _SilentAgent(NodeAgent):
    """A node that stays connected and heartbeating but never answers advertise_keys (a hang)."""

    def _answer(self, stub: Any, task: Any) -> None:
        from tessera.core import serde

        if serde.stage_from_pb(task.stage).value == "advertise_keys":
            return
        super()._answer(stub, task)


def test_only_a_participant_of_a_running_job_gets_its_certificates(fed: Federation) -> None:
    from tessera.client.agent import RPC_TIMEOUT_S
    from tessera.v1 import node_pb2

    def ask(name: str, job_id: str) -> dict[str, str]:
        agent = fed.agents[name]
        assert agent._stub is not None
        request = node_pb2.PeerCertificatesRequest(job_id=job_id, node_ids=["bank", "telco", "stranger"])
        answer = agent._stub.PeerCertificates(request, timeout=RPC_TIMEOUT_S, metadata=agent._metadata)
        return {c.node_id: c.cert_pem for c in answer.certificates}

    _start(fed, ("bank", "telco"))
    fed.start_node("retailer", policy=open_policy("retailer", "retailer", fed.work), agent_class=_SilentAgent)
    with fed.analyst() as client:
        job_id = client.submit(_count())  # stays at advertise_keys: the retailer never answers
        _start(fed, ("stranger",))  # connected after the job chose its participants
        assert set(ask("bank", job_id)) == {"bank", "telco"}  # the stranger's is not the job's
        for job in (job_id, "no-such-job"):
            with pytest.raises(grpc.RpcError) as refused:
                ask("stranger", job)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_vetoes_that_leave_too_few_nodes_fail_the_job_at_once(fed: Federation) -> None:
    # Three nodes, quorum three: once bank vetoes, no answer of the silent retailer can save the
    # round, so the job fails now instead of waiting out a stage deadline of a minute.
    port = fed.port
    fed.stop_coordinator()
    fed.start_coordinator(port=port, stage_timeout=60.0)
    fed.start_node("bank", policy=open_policy("bank", "bank", fed.work, privacy=TIGHT))
    fed.start_node("retailer", policy=open_policy("retailer", "retailer", fed.work), agent_class=_SilentAgent)
    _start(fed, ("telco",))
    for job in ("elsewhere-1", "elsewhere-2"):  # bank's period is spent elsewhere: it vetoes
        spend_elsewhere(fed, "bank", job, dataset="customers", epsilon=0.5, delta=1e-7)
    started = time.monotonic()
    with fed.analyst() as client:
        job_id = client.submit(_count())
        list(client.watch(job_id, timeout_s=50))
        doc = client.result_document(job_id)
    assert doc["status"] == "failed"
    assert time.monotonic() - started < 30  # not the 60 s stage deadline
    assert [v["code"] for v in doc["vetoes"]] == ["budget.period_exhausted"]
    assert "advertise_keys" in doc["error"] and "no node was charged" in doc["error"]
    for name in ("telco", "retailer"):  # the end notice frees what the others reserved
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)


class LosingAgent(NodeAgent):
    """A node whose first ``lose_times`` sends of its stage-``lose_at`` answer time out (recorded
    and charged by the ledger, then lost on the way, as under load)."""

    lose_at: str = ""
    lose_times: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost = 0
        self.sent: list[bytes] = []
        self.streams = 0

    def _serve_tasks(self, stub: Any) -> None:
        self.streams += 1
        super()._serve_tasks(stub)

    def _deliver(self, stub: Any, out: Any) -> None:
        message = out.message
        if message is not None and message.secagg.codec.endswith("/" + self.lose_at):
            if self.lost < self.lose_times:
                self.lost += 1
                stub = _TimingOut(stub)
            else:
                self.sent.append(message.SerializeToString())
        super()._deliver(stub, out)


class _Deadline(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


class _TimingOut:
    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def SubmitRoundMessage(self, message: Any, timeout: float) -> Any:
        raise _Deadline()


def _losing(fed: Federation, stage: str, times: int) -> LosingAgent:
    _start(fed, ("bank", "retailer"))
    losing = type("Losing", (LosingAgent,), {"lose_at": stage, "lose_times": times})
    agent = fed.start_node("telco", policy=open_policy("telco", "telco", fed.work), agent_class=losing)
    assert isinstance(agent, LosingAgent)
    return agent


def _sent_once_charged_once(fed: Federation, agent: LosingAgent, stage: str, attempts: int) -> None:
    assert len(agent.sent) == 1
    entries = [e for e in fed.ledgers("telco").egress.entries() if e.record.stage == stage]
    # Recorded at every attempt (each may have left), always the same payload; charged once.
    assert len(entries) == attempts and len({e.payload_sha256 for e in entries}) == 1
    assert _spent(fed, "telco") == pytest.approx(_spent(fed, "bank")) and _spent(fed, "bank") > 0
    assert fed.ledgers("telco").egress.verify().ok


@pytest.mark.parametrize("stage", ["share_keys", "masked_input"])
def test_an_answer_that_times_out_goes_again_on_the_same_stream(fed: Federation, stage: str) -> None:
    # Under load the acknowledgement of an answer can take longer than the call's deadline. The
    # node sends the same bytes again on the same connection: rebuilding its task stream would
    # leave it "gone" to a stage that waits on it (1,000-node harness: hundreds dropped so).
    agent = _losing(fed, stage, times=1)
    doc = _run(fed, _count())
    assert doc["status"] == "succeeded", (doc["error"], doc["vetoes"])
    assert sorted(doc["result"]["survivors"]) == ["bank", "retailer", "telco"]
    assert agent.lost == 1 and agent.streams == 1
    _sent_once_charged_once(fed, agent, stage, attempts=2)


@pytest.mark.parametrize("stage", ["share_keys", "masked_input"])
def test_an_answer_lost_on_its_way_is_sent_again_unchanged_and_charged_once(
    fed: Federation, stage: str
) -> None:
    # When every attempt fails the stream is rebuilt and the coordinator sends the task again. The
    # node must send the same bytes, not compute an answer again: its SecAgg keys are past that
    # stage, and it used to veto "this node cannot take part in stage share_keys now".
    agent = _losing(fed, stage, times=SEND_ATTEMPTS)
    doc = _run(fed, _count())
    assert doc["status"] == "succeeded", (doc["error"], doc["vetoes"])
    assert sorted(doc["result"]["survivors"]) == ["bank", "retailer", "telco"]
    assert agent.lost == SEND_ATTEMPTS and agent.streams == 2
    _sent_once_charged_once(fed, agent, stage, attempts=SEND_ATTEMPTS + 1)
