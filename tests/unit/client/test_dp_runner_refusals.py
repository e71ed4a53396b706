"""The node refuses a DP task before any data is read or any budget is held — even when the
coordinator sends something it should not (too few nodes, a forged or foreign certificate, a
malformed or replayed stage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from tessera.cli.demo_data import write_customers
from tessera.client.datasource import CsvDataSource
from tessera.client.db import node_engine
from tessera.client.dp_runner import NodeIdentity
from tessera.client.outgoing import Outgoing, open_ledgers
from tessera.client.runner import TaskRunner
from tessera.core import pki, serde
from tessera.core.analyses.registry import get_vector_analysis
from tessera.core.pki import TlsFiles
from tessera.core.policy import load_policy
from tessera.core.rounds import RoundSetup, certificate_fingerprint
from tessera.core.types import JobSpec, Stage
from tessera.v1 import node_pb2

POLICY = Path(__file__).resolve().parents[3] / "policies" / "bank.yaml"
PEERS = ("bank", "retailer", "telco")
# What the coordinator answers when the node fetches its peers' certificates (set by ``_task``).
SERVED: dict[str, str] = {}


def _fetch(job_id: str, nodes: Sequence[str]) -> dict[str, str]:
    return {n: SERVED[n] for n in nodes if n in SERVED}


class ReadSpy(CsvDataSource):
    """The real CSV source, remembering whether anything was read."""

    reads = 0

    def read(self, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        self.reads += 1
        return super().read(dataset, fields)


@pytest.fixture
def node(pki_dir: Path, tmp_path: Path) -> tuple[TaskRunner, ReadSpy, object]:
    policy = load_policy(POLICY)
    csv = tmp_path / "customers.csv"
    write_customers(policy, "customers", csv, rows=30, seed=3)
    data = ReadSpy({"customers": csv}, policy)
    ledgers = open_ledgers(node_engine(f"sqlite:///{tmp_path / 'ledgers.db'}"), policy)
    identity = NodeIdentity.from_tls(TlsFiles.for_identity(pki_dir, "node", "bank"))
    runner = TaskRunner("bank", policy, data, identity, ledgers.budget, fetch_certificates=_fetch)
    return runner, data, ledgers


def _spec(**changes: object) -> JobSpec:
    base = {"analysis": "count", "dataset": "customers", "purpose": "research", "epsilon": 0.5, "delta": 1e-7}
    base.update(changes)
    return JobSpec(**base)  # type: ignore[arg-type]


def _task(
    pki_dir: Path,
    spec: JobSpec,
    *,
    participants: Sequence[str] = PEERS,
    certs: dict[str, bytes] | None = None,
    job_id: str = "job1",
    stage_input: bytes | None = None,
    stage: Stage = Stage.ADVERTISE_KEYS,
) -> node_pb2.Task:
    certs = certs or {n: (pki_dir / "nodes" / f"{n}.pem").read_bytes() for n in participants}
    SERVED.clear()
    SERVED.update((n, pem.decode()) for n, pem in certs.items())
    if stage_input is None:
        fields = {f.name: f for f in load_policy(POLICY).schema("customers").fields}
        plan = get_vector_analysis(spec.analysis).plan(
            spec, fields, survivors_t=len(participants), n_nodes=len(participants)
        )
        setup = RoundSetup(
            job_id=job_id,
            round_no=1,
            participants=tuple(participants),
            threshold=len(participants),
            bits=32,
            length=plan.length,
            fingerprints=tuple((n, certificate_fingerprint(certs[n].decode())) for n in participants),
            epoch=1,
            max_customers=1000,
        )
        stage_input = setup.to_bytes()
    return node_pb2.Task(
        task_id=f"{job_id}-t",
        job_id="job1",
        round=1,
        stage=serde.stage_to_pb(stage),
        spec=serde.job_spec_to_pb(spec),
        stage_input=stage_input,
        participants=list(participants),
    )


def _assert_refused(out: Outgoing, code: str, data: ReadSpy, ledgers: object) -> None:
    assert out.veto is not None and out.message is None, out
    assert out.veto.veto.code == code, out.veto.veto
    assert out.reservation is None and out.record.rho == 0
    assert data.reads == 0
    status = ledgers.budget.remaining()  # type: ignore[attr-defined]
    assert status.rho_reserved == 0 and status.rho_spent == 0


def test_a_valid_task_is_advertised_and_reserves_budget_without_reading_data(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    out = runner.handle(_task(pki_dir, _spec()))
    assert out.message is not None and out.message.WhichOneof("body") == "secagg"
    assert data.reads == 0
    assert ledgers.budget.remaining().rho_reserved > 0


def test_too_few_participants(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    out = runner.handle(_task(pki_dir, _spec(), participants=("bank", "telco")))
    _assert_refused(out, "policy.too_few_participants", data, ledgers)


def test_a_core_sensitive_field(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    spec = _spec(params={"group_by": "email", "groups": ("a",)})
    task = _task(pki_dir, _spec(), stage_input=None)
    task.spec.CopyFrom(serde.job_spec_to_pb(spec))
    _assert_refused(runner.handle(task), "policy.core_sensitive_field", data, ledgers)


def test_over_the_per_job_budget(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    task = _task(pki_dir, _spec())
    task.spec.epsilon = 0.9
    _assert_refused(runner.handle(task), "policy.epsilon_per_job_exceeded", data, ledgers)


def test_a_certificate_from_another_ca(node, pki_dir: Path, tmp_path: Path) -> None:
    runner, data, ledgers = node
    pki.init_ca(tmp_path / "evil")
    pki.issue(tmp_path / "evil", kind="node", name="telco")
    certs = {n: (pki_dir / "nodes" / f"{n}.pem").read_bytes() for n in PEERS}
    certs["telco"] = (tmp_path / "evil" / "nodes" / "telco.pem").read_bytes()
    _assert_refused(runner.handle(_task(pki_dir, _spec(), certs=certs)), "pki.invalid", data, ledgers)


def test_a_substituted_certificate(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    certs = {n: (pki_dir / "nodes" / f"{n}.pem").read_bytes() for n in PEERS}
    certs["telco"] = certs["retailer"]
    _assert_refused(runner.handle(_task(pki_dir, _spec(), certs=certs)), "crypto.failed", data, ledgers)


def test_a_malformed_stage_input(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    out = runner.handle(_task(pki_dir, _spec(), stage_input=b"\x00not json"))
    _assert_refused(out, "request.invalid", data, ledgers)


def test_a_setup_for_another_job(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    _assert_refused(
        runner.handle(_task(pki_dir, _spec(), job_id="other-job")), "request.invalid", data, ledgers
    )


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_a_later_stage_without_an_open_round(node, pki_dir: Path, stage: Stage) -> None:
    runner, data, ledgers = node
    out = runner.handle(_task(pki_dir, _spec(), stage=stage, stage_input=b"anything"))
    _assert_refused(out, "request.invalid", data, ledgers)


def test_a_replayed_roster_from_another_stage_is_refused_and_frees_the_budget(node, pki_dir: Path) -> None:
    runner, data, ledgers = node
    advertise = runner.handle(_task(pki_dir, _spec()))
    assert advertise.message is not None
    # The node's own advertisement handed back as if it were the share-keys roster.
    replay = _task(pki_dir, _spec(), stage=Stage.SHARE_KEYS, stage_input=advertise.message.secagg.data)
    _assert_refused(runner.handle(replay), "request.invalid", data, ledgers)


def test_an_unexpected_failure_costs_the_task_not_the_node(node, pki_dir: Path) -> None:
    runner, _data, _ledgers = node

    def broken(*args: object, **kwargs: object) -> object:
        raise ZeroDivisionError("a value that must not be echoed: 4111111111111111")

    runner.dp.handle = broken  # type: ignore[method-assign]
    out = runner.handle(_task(pki_dir, _spec()))
    assert out.veto is not None and out.veto.veto.code == "node.internal"
    assert "4111" not in out.veto.veto.reason
