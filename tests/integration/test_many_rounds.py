"""Jobs of many rounds over real gRPC and mTLS: chained rounds, one reservation, drops, restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from federation import DroppingAgent, Federation, open_policy, wait_for

from tessera.core.analyses.program import rho_total
from tessera.core.types import JobSpec

EPS, DELTA = 0.5, 1e-7
NODES = {"bank": "bank", "telco": "telco", "retailer": "retailer", "stranger": "telco"}


def _descent(rounds: int, **params: object) -> JobSpec:
    base: dict[str, object] = {"field": "monthly_spend", "lower": 0.0, "upper": 200.0, "rounds": rounds}
    return JobSpec(
        analysis="mean_descent",
        dataset="customers",
        purpose="research",
        epsilon=EPS,
        delta=DELTA,
        params=base | params,
    )


def _run(fed: Federation, spec: JobSpec, timeout: float = 120) -> dict:
    with fed.analyst() as client:
        job_id = client.submit(spec)
        list(client.watch(job_id, timeout_s=timeout))
        return client.result_document(job_id)


def _charges(fed: Federation, name: str, job_id: str) -> list[float]:
    return [
        e.record.rho
        for e in fed.ledgers(name).egress.entries()
        if e.record.job_id == job_id and e.record.stage == "masked_input"
    ]


@pytest.fixture
def fed(pki_dir: Path, tmp_path: Path) -> Iterator[Federation]:
    federation = Federation(pki_dir=pki_dir, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", rows=300)
    federation.start_coordinator(stage_timeout=3.0)
    yield federation
    federation.close()


def _start(
    fed: Federation, names: tuple[str, ...], *, drop: dict[str, tuple[str, int]] | None = None
) -> None:
    for name in names:
        policy = open_policy(NODES[name], name, fed.work)
        if drop and name in drop:
            stage, round_no = drop[name]
            attrs = {"drop_at": stage, "drop_round": round_no}
            fed.start_node(name, policy=policy, agent_class=type(f"Drop{name}", (DroppingAgent,), attrs))
        else:
            fed.start_node(name, policy=policy)


def test_rounds_chain_on_released_results_and_charges_add_up(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    spec = _descent(6)
    doc = _run(fed, spec)
    assert doc["status"] == "succeeded", doc
    result = doc["result"]
    assert result["rounds_run"] == 6 and len(result["rounds"]) == 6
    # Every round started from the previous round's released theta (public post-processing).
    thetas = [r["theta"][0] for r in result["round_results"]]
    steps = [r["metric"]["theta_mean"] for r in result["rounds"]]
    assert thetas[1:] == pytest.approx(steps[:-1])
    assert 0 < result["estimate"] < 200
    per_round = rho_total(spec) / 6
    for name in ("bank", "telco", "retailer"):
        charges = _charges(fed, name, doc["job_id"])
        assert charges == pytest.approx([per_round] * 6)
        status = fed.ledgers(name).budget.remaining()
        assert status.rho_spent == pytest.approx(sum(charges))
        assert status.rho_reserved == 0
        assert fed.ledgers(name).egress.verify().ok
    assert result["budget"]["rho_used"] == pytest.approx(rho_total(spec))


def test_a_job_that_stops_early_frees_the_budget_it_did_not_use(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    spec = _descent(20, learning_rate=1.0, tolerance=0.2)
    doc = _run(fed, spec)
    assert doc["status"] == "succeeded", doc
    run = doc["result"]["rounds_run"]
    assert run < 20
    for name in ("bank", "telco", "retailer"):
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)
        spent = fed.ledgers(name).budget.remaining().rho_spent
        assert spent == pytest.approx(run * rho_total(spec) / 20)


def test_a_node_killed_mid_job_leaves_and_the_job_goes_on(fed: Federation) -> None:
    _start(fed, tuple(NODES), drop={"stranger": ("masked_input", 3)})
    doc = _run(fed, _descent(6, max_dropouts=1))
    assert doc["status"] == "succeeded", doc
    result = doc["result"]
    assert result["out_of_job"] == ["stranger"]
    assert [len(r["survivors"]) for r in result["rounds"]] == [4, 4, 3, 3, 3, 3]
    assert len(_charges(fed, "bank", doc["job_id"])) == 6


def test_the_job_resumes_after_the_coordinator_restarts(fed: Federation) -> None:
    _start(fed, ("bank", "telco", "retailer"))
    spec = _descent(8)
    with fed.analyst() as client:
        job_id = client.submit(spec)
    assert fed.store is not None
    wait_for(lambda: len([r for r in fed.store.rounds_for(job_id) if r.state == "released"]) >= 3, 60)
    port = fed.port
    fed.stop_coordinator()
    fed.start_coordinator(port=port, stage_timeout=3.0)
    with fed.analyst() as client:
        list(client.watch(job_id, timeout_s=120))
        doc = client.result_document(job_id)
    assert doc["status"] == "succeeded", doc
    assert [r["round"] for r in doc["result"]["rounds"]] == list(range(1, 9))
    per_round = rho_total(spec) / 8
    for name in ("bank", "telco", "retailer"):
        # A round in flight at the restart ran again with fresh keys and was charged once.
        status = fed.ledgers(name).budget.remaining()
        assert status.rho_spent == pytest.approx(8 * per_round)
        wait_for(lambda name=name: fed.ledgers(name).budget.remaining().rho_reserved == 0)
    json.dumps(doc)


def test_a_restarted_node_rejoins_at_a_later_round_with_fresh_keys(fed: Federation) -> None:
    _start(fed, tuple(NODES))
    assert fed.store is not None
    store = fed.store
    with fed.analyst() as client:
        job_id = client.submit(_descent(60, max_dropouts=1))

        def released() -> list:
            return [r for r in store.rounds_for(job_id) if r.state == "released"]

        wait_for(lambda: len(released()) >= 2, 60)
        fed.stop_node("stranger")
        wait_for(lambda: any(len(r.survivors) == 3 for r in released()), 60)
        fed.start_node("stranger", policy=open_policy("telco", "stranger", fed.work))
        list(client.watch(job_id, timeout_s=180))
        doc = client.result_document(job_id)
    assert doc["status"] == "succeeded", doc
    sizes = [len(r["survivors"]) for r in doc["result"]["rounds"]]
    first_gap = sizes.index(3)
    assert 4 in sizes[first_gap:], sizes  # back in after its restart
    events = [e.message for e in client_events(fed, job_id)]
    assert any("rejoin" in m for m in events)


def client_events(fed: Federation, job_id: str) -> list:
    assert fed.store is not None
    return fed.store.events_after(job_id, 0)
