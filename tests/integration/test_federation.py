"""Coordinator and three nodes over real gRPC and mTLS: jobs end to end, vetoes, bad input."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from federation import DroppingAgent, Federation, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.client.agent import NodeAgent
from tessera.core import serde
from tessera.core.errors import AuthError, Conflict, InvalidRequest, NotFound
from tessera.core.pki import TlsFiles, channel_credentials
from tessera.core.types import JobSpec, JobState
from tessera.v1 import common_pb2, node_pb2, node_pb2_grpc

PARTNERS = ("bank", "telco", "retailer")


@pytest.fixture(scope="module")
def fed(pki_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    work = tmp_path_factory.mktemp("federation")
    federation = Federation(pki_dir=pki_dir, work=work, db_url=f"sqlite:///{work / 'coordinator.db'}")
    federation.start_coordinator()
    for name in PARTNERS:
        federation.start_node(name)
    yield federation
    federation.close()


def _run(fed: Federation, spec: JobSpec) -> dict:
    with fed.analyst() as client:
        job_id = client.submit(spec)
        events = list(client.watch(job_id, timeout_s=30))
        assert events and events[-1].state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
        return client.result_document(job_id)


def _node_stub(fed: Federation, name: str) -> tuple[grpc.Channel, node_pb2_grpc.NodeServiceStub]:
    creds = channel_credentials(TlsFiles.for_identity(fed.pki_dir, "node", name))
    channel = grpc.secure_channel(fed.address, creds)
    return channel, node_pb2_grpc.NodeServiceStub(channel)


def test_inventory_reports_every_node_schema_and_never_values(fed: Federation) -> None:
    doc = _run(fed, JobSpec(analysis="inventory", dataset="customers", purpose="research"))
    assert doc["status"] == "succeeded", doc
    nodes = doc["result"]["nodes"]
    assert sorted(nodes) == sorted(PARTNERS)
    bank_fields = {f["name"]: f["tier"] for f in nodes["bank"]["datasets"][0]["fields"]}
    assert bank_fields["email"] == "core_sensitive"
    assert bank_fields["region"] == "non_sensitive"
    assert nodes["bank"]["policy"]["policy_hash"] == fed.policy("bank").policy_hash
    # What left each node is on its egress ledger, chained, with no privacy charge.
    for name in PARTNERS:
        ledger = fed.ledgers(name).egress
        entries = [e for e in ledger.entries() if e.record.job_id == doc["job_id"]]
        assert [e.record.stage for e in entries] == ["local_report"] and entries[0].record.rho == 0
        assert ledger.verify().ok
    # No value and no row count of any node's data appears in the result.
    text = json.dumps(doc)
    for name in PARTNERS:
        with (fed.work / name / "customers.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert str(len(rows)) not in json.dumps(nodes[name]["datasets"])
        for row in rows[:5]:
            for column in ("email", "phone", "name", "customer_id"):
                assert row[column] not in text


def test_egress_names_the_analyst_and_heads_are_anchored_at_the_coordinator(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tessera.node")
    doc = _run(fed, JobSpec(analysis="inventory", dataset="customers", purpose="research"))
    # Each node logs one line per job and stage it served: ids, stage, outcome — never data.
    line = f"task job={doc['job_id']} round=1 stage=local_report outcome=sent"
    # (a node logs after its answer was accepted, which may be just after the job ended)
    wait_for(lambda: [r.getMessage() for r in caplog.records].count(line) == len(PARTNERS))
    assert not [r for r in caplog.records if doc["job_id"] in r.getMessage() and r.getMessage() != line]
    assert fed.store is not None
    submitter = fed.store.get_job(doc["job_id"]).submitted_by
    for name in PARTNERS:
        ledger = fed.ledgers(name).egress
        entries = [e for e in ledger.entries() if e.record.job_id == doc["job_id"]]
        assert [e.record.analyst for e in entries] == [submitter]
        head = ledger.head()
        # The next heartbeats carry the head; the coordinator keeps it and the node stores its answer.
        wait_for(lambda ledger=ledger, head=head: any(a[:2] == head for a in ledger.anchors()))
        assert (head[0], head[1]) in [(s, h) for s, h, _ in fed.store.egress_anchors(name)]
        assert ledger.verify().ok


def test_node_vetoes_a_dataset_its_policy_does_not_classify(fed: Federation) -> None:
    # The example policies classify customers, transactions and events, not payroll.
    doc = _run(fed, JobSpec(analysis="inventory", dataset="payroll", purpose="research"))
    assert doc["status"] == "failed"
    assert {v["node_id"] for v in doc["vetoes"]} == set(PARTNERS)
    assert {v["code"] for v in doc["vetoes"]} == {"policy.unknown_dataset"}
    # Every decision names the policy it was taken under (the compliance officer's link to the file).
    assert {v["node_id"]: v["policy_hash"] for v in doc["vetoes"]} == {
        name: fed.policy(name).policy_hash for name in PARTNERS
    }
    assert "payroll" in doc["error"]


def test_hopeless_job_is_refused_before_any_node_is_asked(fed: Federation) -> None:
    with fed.analyst() as client, pytest.raises(Conflict, match="allow"):
        client.submit(JobSpec(analysis="inventory", purpose="fraud"))


def test_unknown_analysis_and_unknown_job(fed: Federation) -> None:
    with fed.analyst() as client:
        with pytest.raises(InvalidRequest, match="unknown analysis"):
            client.submit(JobSpec(analysis="telepathy"))
        with pytest.raises(NotFound):
            client.result_document("does-not-exist")
        with pytest.raises(InvalidRequest, match="never enrolled"):
            client.submit(JobSpec(analysis="inventory", purpose="research", participants=("ghost",)))


def test_roles_limit_what_analysts_may_do(fed: Federation) -> None:
    with fed.analyst("auditor") as auditor:
        with pytest.raises(AuthError):
            auditor.submit(JobSpec(analysis="inventory", purpose="research"))
        assert any(e.action == "job.submit" for e in auditor.audit())
    with fed.analyst("analyst") as analyst, pytest.raises(AuthError):
        analyst.audit()


def test_nodes_listing_shows_online_nodes_and_policies(fed: Federation) -> None:
    with fed.analyst() as client:
        nodes = {n.node_id: n for n in client.nodes()}
    assert set(PARTNERS) <= set(nodes)
    assert all(nodes[p].online for p in PARTNERS)
    assert nodes["telco"].policy.policy_id == "telco-v1"


def test_oversized_and_malformed_messages_get_errors_not_crashes(fed: Federation) -> None:
    channel, stub = _node_stub(fed, "telco")
    with channel:
        huge = node_pb2.RoundMessage(
            task_id="x", secagg=node_pb2.OpaqueStage(data=b"\0" * (65 * 1024 * 1024))
        )
        with pytest.raises(grpc.RpcError) as too_big:
            stub.SubmitRoundMessage(huge, timeout=30)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        raw = channel.unary_unary("/tessera.v1.NodeService/SubmitRoundMessage")
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xfe not a protobuf", timeout=10)
        assert garbage.value.code() != grpc.StatusCode.OK
        with pytest.raises(grpc.RpcError) as no_task:
            stub.SubmitRoundMessage(
                node_pb2.RoundMessage(task_id="nope", stage=common_pb2.STAGE_LOCAL_REPORT)
            )
        assert no_task.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )


def test_a_second_process_under_a_connected_name_is_refused(fed: Federation) -> None:
    # telco's agent is connected; another process holding telco's certificate must not enrol
    # (and overwrite its policy) nor open a second task stream (and receive every task too).
    channel, telco = _node_stub(fed, "telco")
    other = (("tessera-instance", "another-process"),)
    policy = serde.policy_summary_to_pb(fed.policy("telco").summary())
    with channel:
        with pytest.raises(grpc.RpcError) as enrol:
            telco.Enrol(node_pb2.EnrolRequest(node_version="x", policy=policy), timeout=10, metadata=other)
        assert enrol.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already connected from another process" in (enrol.value.details() or "")
        stream = telco.ReceiveTasks(node_pb2.ReceiveTasksRequest(), timeout=10, metadata=other)
        with pytest.raises(grpc.RpcError) as tasks:
            next(stream)
        assert tasks.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with fed.analyst() as client:
        assert {n.node_id: n for n in client.nodes()}["telco"].node_version != "x"


class _SilentNode(DroppingAgent):
    drop_at = "local_report"  # connected when the job is planned, gone before it answers


def test_a_node_cannot_answer_another_nodes_task_and_replays_change_nothing(fed: Federation) -> None:
    fed.stop_node("bank")
    fed.start_node("bank", agent_class=_SilentNode)
    try:
        with fed.analyst() as client:
            job_id = client.submit(JobSpec(analysis="inventory", dataset="customers", purpose="research"))
            wait_for(lambda: client.job(job_id).status_detail.startswith("waiting for 1 "))
            fed.stop_node("bank")
            bank_task = f"{job_id}-r1-local_report-bank"
            forged = node_pb2.RoundMessage(
                task_id=bank_task,
                job_id=job_id,
                round=1,
                stage=common_pb2.STAGE_LOCAL_REPORT,
                inventory=node_pb2.InventoryReport(node_version="0"),
            )
            channel, telco = _node_stub(fed, "telco")
            with channel:
                with pytest.raises(grpc.RpcError) as other:
                    telco.SubmitRoundMessage(forged, timeout=10)
                assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
            channel, bank = _node_stub(fed, "bank")
            with channel:
                wrong_round = node_pb2.RoundMessage()
                wrong_round.CopyFrom(forged)
                wrong_round.round = 2
                with pytest.raises(grpc.RpcError) as rebound:
                    bank.SubmitRoundMessage(wrong_round, timeout=10)
                assert rebound.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert client.job(job_id).state == common_pb2.JOB_STATE_RUNNING
            fed.start_node("bank")  # the open task is delivered when the node comes back
            wait_for(lambda: client.job(job_id).state == common_pb2.JOB_STATE_SUCCEEDED)
            channel, telco = _node_stub(fed, "telco")
            with channel:
                replay = node_pb2.RoundMessage(
                    task_id=f"{job_id}-r1-local_report-telco",
                    job_id=job_id,
                    round=1,
                    stage=common_pb2.STAGE_LOCAL_REPORT,
                    inventory=node_pb2.InventoryReport(node_version="0"),
                )
                assert telco.SubmitRoundMessage(replay, timeout=10).accepted is False
            assert json.loads(client.result(job_id).result_json)["nodes"]["telco"]["node_version"] != "0"
    finally:
        if isinstance(fed.agents.get("bank"), _SilentNode):
            fed.stop_node("bank")
        if "bank" not in fed.agents:
            fed.start_node("bank")


def test_stage_deadline_fails_the_job_naming_the_silent_node(pki_dir: Path, tmp_path: Path) -> None:
    fed = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    try:
        fed.start_coordinator(stage_timeout=1.0)
        for name in PARTNERS:
            # retailer is connected when the job is planned and stops when its task arrives
            fed.start_node(name, agent_class=_SilentNode if name == "retailer" else NodeAgent)
        doc = _run(fed, JobSpec(analysis="inventory", purpose="research"))
        assert doc["status"] == "failed"
        assert "retailer" in doc["error"] and "deadline" in doc["error"]
    finally:
        fed.close()


def test_nodes_survive_a_coordinator_restart(pki_dir: Path, tmp_path: Path) -> None:
    fed = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    try:
        port = fed.start_coordinator()
        for name in PARTNERS:
            fed.start_node(name)
        fed.stop_coordinator()
        wait_for(lambda: not any(a.enrolled.is_set() for a in fed.agents.values()))
        fed.start_coordinator(port=port)
        wait_for(lambda: all(a.enrolled.is_set() for a in fed.agents.values()))
        doc = _run(
            fed,
            JobSpec(
                analysis="inventory", purpose="research", deadline=datetime.now(UTC) + timedelta(minutes=1)
            ),
        )
        assert doc["status"] == "succeeded"
    finally:
        fed.close()


def test_past_deadline_is_refused(fed: Federation) -> None:
    with fed.analyst() as client, pytest.raises(InvalidRequest, match="past"):
        client.submit(
            JobSpec(
                analysis="inventory", purpose="research", deadline=datetime.now(UTC) - timedelta(seconds=1)
            )
        )
    assert JobState.SUCCEEDED.terminal


HEALTH_PROBE = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
ca, cert, key, target = sys.argv[1:5]
creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
with grpc.secure_channel(target, creds) as channel:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError as exc:
        print("REFUSED", exc.code().name)
        sys.exit(3)
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
"""


def test_standard_health_check_from_another_process(fed: Federation, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tessera.core import pki

    def probe(ca: Path, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", HEALTH_PROBE, str(ca), str(cert), str(key), fed.address],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ours = probe(
        fed.pki_dir / "ca.pem", fed.pki_dir / "nodes" / "bank.pem", fed.pki_dir / "nodes" / "bank.key"
    )
    assert ours.returncode == 0 and ours.stdout.strip() == "SERVING", ours.stderr
    pki.init_ca(tmp_path / "foreign")
    pki.issue(tmp_path / "foreign", kind="node", name="bank")
    foreign = tmp_path / "foreign" / "nodes"
    theirs = probe(fed.pki_dir / "ca.pem", foreign / "bank.pem", foreign / "bank.key")
    assert theirs.returncode == 3 and "REFUSED" in theirs.stdout
