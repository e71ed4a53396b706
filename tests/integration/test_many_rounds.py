"""Jobs of many rounds over real gRPC and mTLS: chained rounds, one reservation, drops, restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from federation import DroppingAgent, Federation, open_policy, wait_for

from tessera.client.datasource import CsvDataSource
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


def test_the_job_resumes_after_the_coordinator_restarts(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read = CsvDataSource.read

    def counted(self: CsvDataSource, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        reads.append(dataset)
        return read(self, dataset, fields)

    monkeypatch.setattr(CsvDataSource, "read", counted)
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
    # The restart put the job in a fresh key epoch; each node still read its data once (one
    # snapshot per job), not once per epoch.
    assert reads == ["customers"] * 3
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


CDNOW = Path(__file__).resolve().parents[3] / "shared" / "data" / "cdnow" / "CDNOW_sample.txt"


def _cdnow_split(work: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """The CDNOW 1/10th sample as each partner's transactions CSV (customers dealt round-robin)."""
    import os

    if not CDNOW.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must find the CDNOW data at {CDNOW}")
        pytest.skip(f"CDNOW data not found at {CDNOW} (it lives in ../shared beside the checkout)")
    files = {n: work / n / "cdnow.csv" for n in names}
    handles = {}
    for name, path in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        handles[name] = path.open("w", encoding="utf-8")
        handles[name].write("customer_id,time,amount,channel,category\n")
    for line in CDNOW.read_text(encoding="ascii").splitlines():
        cols = line.split()
        if len(cols) < 5:
            continue
        when = f"{cols[2][:4]}-{cols[2][4:6]}-{cols[2][6:]}"
        handles[names[int(cols[0]) % len(names)]].write(f"C{cols[0]},{when},{cols[4]},,\n")
    for handle in handles.values():
        handle.close()
    return files


def test_clv_is_fitted_over_real_grpc_on_cdnow_split_across_partners(fed: Federation) -> None:
    names = ("bank", "telco", "retailer")
    files = _cdnow_split(fed.work, names)
    for name in names:
        privacy = {"epsilon_per_job": 4.0, "epsilon_per_period": 100.0, "period_days": 30, "delta": 1e-6}
        policy = open_policy(NODES[name], name, fed.work, privacy=privacy)
        fed.start_node(name, policy=policy, data={"transactions": files[name]})
    spec = JobSpec(
        analysis="clv_fit",
        dataset="transactions",
        purpose="research",
        epsilon=4.0,
        delta=1e-6,
        params={"calibration_end": "1997-09-30", "holdout_end": "1998-06-30"},
    )
    doc = _run(fed, spec, timeout=300)
    assert doc["status"] == "succeeded", doc
    result = doc["result"]
    assert result["rounds_run"] >= 8 and len(result["rounds"]) == len(result["round_results"])
    bg = result["bgnbd"]
    # The paper's fit on these 2,357 customers: r 0.243, alpha 4.414, a 0.793, b 2.426 (without
    # noise this job gives 0.250 and 4.74). At eps 4 the DP Newton steps still wander, and the fit
    # has a heavy tail: in 2,000 seeded in-memory runs of this job (3 nodes, _clv_helpers.run)
    # alpha was off 4.74 by more than x2 in 3.8% of runs, x3 in 0.8%, x4 in 0.25% (at most x4.8),
    # r off 0.25 by more than x2 in 0.24% (at most x2.6). A tail falling like m^-4 put the former
    # 0.5 < alpha < 40 (x8.5) at about 1e-4 failures a run; x20 is about 4e-6, r's x5 below 1e-6.
    # So this checks the order of magnitude only; scripts/bench_clv.py measures the accuracy.
    assert 0.05 < bg["r"]["value"] < 1.5 and 0.25 < bg["alpha"]["value"] < 100
    # The cohort's DP count (sd 45 here) holds every node's customers: one node's missing is 786 off.
    assert abs(result["customers"] - 2357) < 250
    assert result["budget"]["rho_used"] == pytest.approx(rho_total(spec))
    # The program's own split (per round and phase) survives beside the job's trailer.
    assert sum(r["rho"] for r in result["budget_split"]) == pytest.approx(rho_total(spec))
    for name in names:
        assert fed.ledgers(name).budget.remaining().rho_spent == pytest.approx(rho_total(spec))


def test_rfm_segments_and_kmeans_run_over_real_grpc_on_cdnow(fed: Federation) -> None:
    names = ("bank", "telco", "retailer")
    files = _cdnow_split(fed.work, names)
    for name in names:
        privacy = {"epsilon_per_job": 4.0, "epsilon_per_period": 100.0, "period_days": 30, "delta": 1e-6}
        allowed = ["count", "rfm_segments", "kmeans"]
        policy = open_policy(NODES[name], name, fed.work, privacy=privacy, allowed_analyses=allowed)
        fed.start_node(name, policy=policy, data={"transactions": files[name]})

    def job(analysis: str, **params: object) -> JobSpec:
        return JobSpec(
            analysis=analysis,
            dataset="transactions",
            purpose="research",
            epsilon=4.0,
            delta=1e-6,
            params=params,  # type: ignore[arg-type]
        )

    rfm = _run(fed, job("rfm_segments", reference_date="1998-06-30", monetary_max=1000.0), timeout=120)
    assert rfm["status"] == "succeeded", rfm
    assert len(rfm["result"]["rounds"]) == 2
    assert rfm["result"]["rounds"][1]["metric"]["segments"] == 11  # the named segments, all released
    assert rfm["result"]["segments"] and rfm["result"]["model"]
    km = _run(
        fed,
        job(
            "kmeans",
            features=("rfm.recency", "rfm.frequency", "rfm.monetary"),
            lower=(0.0, 0.0, 0.0),
            upper=(600.0, 50.0, 2000.0),
            log_features=("rfm.monetary",),
            reference_date="1998-06-30",
            k=4,
            iterations=3,
        ),
        timeout=120,
    )
    assert km["status"] == "succeeded", km
    assert len(km["result"]["clusters"]) == 4 and len(km["result"]["model"]["centroids_z"]) == 4
    assert km["result"]["rounds_run"] == 2 + 3  # statistics, start, then three Lloyd iterations
    spent = fed.ledgers("bank").budget.remaining().rho_spent
    assert spent == pytest.approx(2 * rho_total(job("count")))
