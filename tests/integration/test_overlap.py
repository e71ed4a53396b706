"""overlap over real gRPC and mTLS: exact counts without noise, intervals with it, what leaves
each node (captured), and every refusal path."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federation import DroppingAgent, Federation, open_policy

import tessera.client.overlap_runner as overlap_runner
import tessera.server.overlap_job as overlap_job
from tessera.client.agent import NodeAgent
from tessera.client.vault.blind_index import BlindIndexer
from tessera.core.psi import group
from tessera.core.psi.noise import DummyPlan, job_rho, plan_dummies
from tessera.core.types import JobSpec
from tessera.v1 import common_pb2

PARTNERS = ("bank", "telco", "retailer")
SHARED_BT, SHARED_BR, SHARED_TR, SHARED_ALL = 12, 6, 4, 3


def _people() -> dict[str, list[dict[str, str]]]:
    """Known overlaps; a shared customer is written differently on each side (case, spaces)."""
    rows: dict[str, list[dict[str, str]]] = {n: [] for n in PARTNERS}

    def add(owners: tuple[str, ...], tag: str, count: int) -> None:
        for i in range(count):
            for k, owner in enumerate(owners):
                email = f"{tag}{i}@Example.com" if k % 2 else f"  {tag}{i}@example.COM "
                number = f"7700{900000 + sum(map(ord, tag)) % 1000 * 100 + i:06d}"[-10:]
                phone = f"+44 {number[:4]} {number[4:]}" if k % 2 else f"+44{number}"
                rows[owner].append({"email": email, "phone": phone})

    add(("bank", "telco"), "bt", SHARED_BT)
    add(("bank", "retailer"), "br", SHARED_BR)
    add(("telco", "retailer"), "tr", SHARED_TR)
    add(PARTNERS, "all", SHARED_ALL)
    for n in PARTNERS:
        add((n,), f"only{n}", 25)
    return rows


TRUE = {
    ("bank", "telco"): SHARED_BT + SHARED_ALL,
    ("bank", "retailer"): SHARED_BR + SHARED_ALL,
    ("retailer", "telco"): SHARED_TR + SHARED_ALL,
}


class CapturingAgent(NodeAgent):
    """A real node that keeps every task input it receives and every message it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[bytes] = []
        self.sent: list[bytes] = []

    def _answer(self, stub: Any, task: Any) -> None:
        self.received.append(bytes(task.stage_input))
        super()._answer(stub, task)

    def _deliver(self, stub: Any, out: Any) -> None:
        if not out.more and out.message is not None:
            self.sent.append(out.message.SerializeToString())
        super()._deliver(stub, out)


def _write(work: Path, name: str, people: list[dict[str, str]]) -> Path:
    path = work / name / "customers.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["customer_id", "email", "phone", "region"])
        writer.writeheader()
        for i, person in enumerate(people):
            writer.writerow({"customer_id": f"{name}-{i}", "region": "north" if i % 2 else "south", **person})
    return path


def _policy(fed: Federation, name: str, **overlap: Any) -> Any:
    rules = {"partners": {"*": ["email", "phone"]}, "max_jobs_per_period": 50} | overlap
    return open_policy(
        "bank",
        name,
        fed.work,
        allowed_analyses=["inventory", "count", "overlap"],
        overlap=rules,
        privacy={"epsilon_per_job": 2.0, "epsilon_per_period": 100.0, "period_days": 30, "delta": 1e-6},
    )


@pytest.fixture
def fed(pki_dir: Path, tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'coordinator.db'}")
    federation.start_coordinator()
    yield federation
    federation.close()


def _start(fed: Federation, policies: dict[str, Any] | None = None) -> None:
    people = _people()
    for name in PARTNERS:
        _write(fed.work, name, people[name])
        fed.start_node(
            name, policy=(policies or {}).get(name) or _policy(fed, name), agent_class=CapturingAgent
        )


def _run(fed: Federation, **params: Any) -> dict:
    spec = JobSpec(
        analysis="overlap",
        purpose="research",
        epsilon=params.pop("epsilon", 1.0),
        delta=1e-6,
        params=params,
    )
    with fed.analyst() as client:
        job_id = client.submit(spec)
        events = list(client.watch(job_id, timeout_s=60))
        assert events[-1].state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED)
        return client.result_document(job_id)


def _table(doc: dict) -> dict[tuple[str, str], dict]:
    return {(r["a"], r["b"]): r for r in doc["result"]["pairs"]}


@pytest.fixture
def no_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero dummies on both sides (nodes run in this process): the counts must then be exact."""
    zero = DummyPlan(rho=1.0, pairs=1, sigma=0.01, cap=0, tail_delta=0.0)
    monkeypatch.setattr(overlap_runner, "plan_dummies", lambda **_: zero)
    monkeypatch.setattr(overlap_job, "plan_dummies", lambda **_: zero)


@pytest.mark.parametrize("identifier", ["email", "phone"])
def test_counts_are_exact_without_noise_and_normalised(
    fed: Federation, no_noise: None, identifier: str
) -> None:
    _start(fed)
    doc = _run(fed, identifier=identifier)
    assert doc["status"] == "succeeded", doc
    table = _table(doc)
    for pair, truth in TRUE.items():
        row = table[tuple(sorted(pair))]
        assert row["status"] == "released" and row["estimate"] == truth, (pair, row)


def test_lists_in_many_parts_count_the_same(
    fed: Federation, no_noise: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tessera.core.psi.wire as wire

    monkeypatch.setattr(wire, "PART_ELEMENTS", 7)  # every list in several messages and tasks
    _start(fed)
    with fed.analyst() as client:
        job_id = client.submit(JobSpec(analysis="overlap", purpose="research", epsilon=1.0, delta=1e-6))
        events = list(client.watch(job_id, timeout_s=60))
        doc = client.result_document(job_id)
    assert doc["status"] == "succeeded", doc
    for pair, truth in TRUE.items():
        assert _table(doc)[tuple(sorted(pair))]["estimate"] == truth
    assert any("sent part" in e.message for e in events) or len(events) > 4
    relayed = fed.store.tasks_for(job_id, round=2)  # type: ignore[union-attr]
    assert len(relayed) > 3 * 2  # one task per relayed part


def test_filters_select_customers_on_each_side(fed: Federation, no_noise: None) -> None:
    _start(fed)
    doc = _run(fed, identifier="email", filter=("bank:region=north",))
    assert doc["status"] == "succeeded", doc
    table = _table(doc)
    # Only bank is filtered: its shared customers on odd rows (region north) remain.
    people = _people()["bank"]
    north = {p["email"].strip().lower() for i, p in enumerate(people) if i % 2}
    telco = {p["email"].strip().lower() for p in _people()["telco"]}
    assert table[("bank", "telco")]["estimate"] == len(north & telco)
    assert table[("retailer", "telco")]["estimate"] == TRUE[("retailer", "telco")]


def test_noisy_counts_cover_the_truth_and_no_message_carries_an_identifier(fed: Federation) -> None:
    _start(fed)
    doc = _run(fed, identifier="email")
    assert doc["status"] == "succeeded", doc
    # The dummies' noise is truncated at ±T per side: the estimate is never further than 2T from
    # the truth (the 95% intervals' coverage is tested with seeded noise in the unit tests).
    cap = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=2, delta=1e-6).cap
    for pair, truth in TRUE.items():
        row = _table(doc)[tuple(sorted(pair))]
        low, high = row["interval"]
        assert abs(row["estimate"] - truth) <= 2 * cap and low < high, (pair, row)
    # Everything each node received (relayed by the coordinator) and everything it sent (what
    # the coordinator received) is searched for every identifier in every form we can name.
    people = _people()
    indexer = BlindIndexer(bytes(range(32)))
    needles: set[bytes] = set()
    for rows in people.values():
        for person in rows:
            for kind in ("email", "phone"):
                raw = person[kind]
                norm = indexer.normalise(kind, raw)
                needles |= {
                    raw.encode(),
                    norm.encode(),
                    indexer.index(kind, raw),
                    indexer.index_hex(kind, raw).encode(),
                }
                needles |= {group.element_digest(kind, norm), group.hash_to_group(kind, norm)}
    for name in PARTNERS:
        agent = fed.agents[name]
        assert isinstance(agent, CapturingAgent)
        blobs = agent.received + agent.sent
        assert sum(len(b) for b in blobs) > 32 * 40
        for blob in blobs:
            for needle in needles:
                assert needle not in blob, name
    # The charge is on each node's own ledger, once, with the job's epsilon.
    for name in PARTNERS:
        history = fed.ledgers(name).budget.history(job_id=doc["job_id"])
        assert len(history) == 1 and history[0].rho_spent > 0


def test_refusals_show_per_pair(fed: Federation, no_noise: None) -> None:
    policies = {
        # retailer matches only with bank, and only on email
        "retailer": _policy(fed, "retailer", partners={"bank": ["email"]}),
        "telco": _policy(fed, "telco", max_jobs_per_period=1),
    }
    _start(fed, policies)
    doc = _run(fed, identifier="email")
    table = _table(doc)
    assert table[("retailer", "telco")]["status"] == "refused"
    assert (
        "only" in table[("retailer", "telco")]["reason"]
        or "does not match" in table[("retailer", "telco")]["reason"]
    )
    assert table[("bank", "retailer")]["estimate"] == TRUE[("bank", "retailer")]
    assert table[("bank", "telco")]["estimate"] == TRUE[("bank", "telco")]
    # phone is not allowed between bank and retailer: that pair is refused, the other goes on
    # ... except that telco has used its one overlap job of the period: its pairs are refused.
    doc = _run(fed, identifier="phone")
    assert doc["status"] == "failed", doc
    assert "per 30 days" in doc["error"] and "matches with partner bank only on email" in doc["error"]


def test_over_budget_is_refused(fed: Federation) -> None:
    _start(fed)
    doc = _run(fed, identifier="email", epsilon=5.0)
    assert doc["status"] == "failed"
    assert "epsilon" in doc["error"]


def test_a_spent_period_budget_refuses_the_next_job(fed: Federation) -> None:
    tight = {
        name: open_policy(
            "bank",
            name,
            fed.work,
            allowed_analyses=["overlap"],
            overlap={"partners": {"*": ["email"]}, "max_jobs_per_period": 50},
            privacy={"epsilon_per_job": 1.0, "epsilon_per_period": 1.2, "period_days": 30, "delta": 1e-6},
        )
        for name in PARTNERS
    }
    _start(fed, tight)
    assert _run(fed, identifier="email")["status"] == "succeeded"
    doc = _run(fed, identifier="email")
    assert doc["status"] == "failed"
    assert "budget" in doc["error"] or "period" in doc["error"], doc["error"]
    for name in PARTNERS:  # the refused job reserved nothing that stays held
        assert all(r.state.value != "reserved" for r in fed.ledgers(name).budget.history())


def test_a_vault_node_sends_nothing_of_its_blind_index(fed: Federation, tmp_path: Path) -> None:
    """bank matches from its real vault (decrypting its PII tokens): no message leaving it or
    reaching its partners holds any of its blind indexes (hex or raw) or identifiers."""
    import sqlalchemy as sa

    from tessera.cli.demo import ingest_raw
    from tessera.client.overlap_source import VaultIdentifiers
    from tessera.client.vault._model import Identifier, LookupIndex
    from tessera.client.vault.state import open_node_state

    people = _people()
    policy = _policy(fed, "bank")
    ingest_raw(tmp_path / "bank-vault", policy, {"customers": _write(fed.work, "bank", people["bank"])})
    state = open_node_state(tmp_path / "bank-vault", policy)
    try:
        with state.engine.connect() as conn:
            indexes = list(conn.scalars(sa.select(Identifier.index))) + list(
                conn.scalars(sa.select(LookupIndex.index))
            )
        assert len(indexes) >= len(people["bank"])

        class VaultAgent(CapturingAgent):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["identifiers"] = VaultIdentifiers(state.engine, state.keys.cipher(), policy)
                super().__init__(*args, **kwargs)

        fed.start_node("bank", policy=policy, agent_class=VaultAgent)
        for name in ("telco", "retailer"):
            _write(fed.work, name, people[name])
            fed.start_node(name, policy=_policy(fed, name), agent_class=CapturingAgent)
        doc = _run(fed, identifier="email")
        assert doc["status"] == "succeeded", doc
        cap = plan_dummies(rho=job_rho(epsilon=1.0, delta=1e-6), pairs=2, delta=1e-6).cap
        assert abs(_table(doc)[("bank", "telco")]["estimate"] - TRUE[("bank", "telco")]) <= 2 * cap
        needles = {i.encode() for i in indexes} | {bytes.fromhex(i) for i in indexes}
        needles |= {p["email"].strip().lower().encode() for p in people["bank"]}
        for name in PARTNERS:
            agent = fed.agents[name]
            assert isinstance(agent, CapturingAgent)
            for blob in agent.received + agent.sent:
                assert not any(n in blob for n in needles), name
    finally:
        fed.close()
        state.close()


@pytest.mark.parametrize("drop_round", [1, 2])
def test_a_node_that_dies_mid_job_fails_its_pairs_at_once_and_the_others_go_on(
    fed: Federation, no_noise: None, drop_round: int
) -> None:
    # Its tasks' deadline is the whole job's (30 minutes): the job must not wait for it.
    people = _people()
    for name in PARTNERS:
        _write(fed.work, name, people[name])
        agent_class = (
            type("DropTelco", (DroppingAgent,), {"drop_at": "psi", "drop_round": drop_round})
            if name == "telco"
            else NodeAgent
        )
        fed.start_node(name, policy=_policy(fed, name), agent_class=agent_class)
    started = time.monotonic()
    doc = _run(fed, identifier="email")
    assert time.monotonic() - started < 30
    assert doc["status"] == "succeeded", doc
    table = _table(doc)
    assert table[("bank", "retailer")]["estimate"] == TRUE[("bank", "retailer")]
    for pair in (("bank", "telco"), ("retailer", "telco")):
        assert table[pair]["status"] in ("refused", "failed"), table[pair]


def test_the_coordinator_budget_mirror_counts_what_overlap_charged(fed: Federation) -> None:
    from datetime import UTC, datetime

    from tessera.server.budget_mirror import node_budgets

    _start(fed)
    assert _run(fed, identifier="email")["status"] == "succeeded"
    assert fed.store is not None
    views = {v.node_id: v for v in node_budgets(fed.store, fed.store.list_nodes(), now=datetime.now(UTC))}
    for name in PARTNERS:
        spent = fed.ledgers(name).budget.remaining().rho_spent
        assert spent > 0 and views[name].rho_spent == pytest.approx(spent), name
