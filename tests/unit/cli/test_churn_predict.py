"""`tessera model predict` scores exactly what the evaluation round binned, from the card alone."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.core.analyses import churn_card, churn_model
from tessera.core.analyses import churn_features as cf
from tessera.core.analyses.churn_spec import SCORE_LOGIT_RANGE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "analyses"))
from _churn_helpers import FIELDS, nodes_of, population, spec, train

runner = CliRunner()


def test_predict_round_trip_gives_the_scores_the_evaluation_used(tmp_path: Path) -> None:
    nodes = nodes_of(population(9000, seed=4), 3)
    job = spec(epsilon=4.0, rounds=4)
    trace = train(job, nodes, noise=True, seed=2)
    card = churn_card.build_card({"job_id": "j1", "result": trace.result}, policy_hashes={})
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(card), encoding="utf-8")
    node = nodes[1]
    lines = ["customer,tenure,spend,region,churned"]
    lines += [
        f"{i},{float(node['tenure'][i])!r},{float(node['spend'][i])!r},{node['region'][i]},{int(node['churned'][i])}"
        for i in range(node["tenure"].size)
    ]
    data_path = tmp_path / "customers.csv"
    data_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = runner.invoke(
        app, ["model", "predict", "--model", str(card_path), str(data_path), "--id-column", "customer"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == node["tenure"].size
    scores = np.array([float(r["churn_score"]) for r in rows])
    ids = np.array([int(r["id"]) for r in rows], dtype=np.int64)
    # The evaluation round's vector of this node, exactly (no noise): the held-out customers'
    # scores binned per label. Binning the predicted scores of the same customers gives it back.
    eval_round = churn_model.max_rounds(job)
    plan = churn_model.plan(
        job, FIELDS, survivors_t=3, n_nodes=3, round_no=eval_round, public=trace.publics[-1]
    )
    expected = churn_model.exact(plan, node)
    hold = cf.held_out(ids, seed=card["model"]["split_seed"], share=card["model"]["holdout"])
    bins = card["model"]["score_bins"]
    cells = cf.score_bin(scores[hold], bins, SCORE_LOGIT_RANGE) + bins * node["churned"][hold].astype(
        np.int64
    )
    assert np.array_equal(np.bincount(cells, minlength=2 * bins), expected)
    # And the scores are the model's, to the last bit, for every customer.
    layout = {**plan.layout}
    people = cf.customers(layout, node, with_label=False)
    assert np.array_equal(cf.scores(layout, people), scores)


def test_predict_refuses_a_file_without_the_model_s_columns(tmp_path: Path) -> None:
    nodes = nodes_of(population(6000, seed=5), 3)
    trace = train(spec(epsilon=4.0, rounds=2), nodes, noise=True)
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps(trace.result), encoding="utf-8")
    data_path = tmp_path / "x.csv"
    data_path.write_text("tenure,region\n3,north\n", encoding="utf-8")
    result = runner.invoke(app, ["model", "predict", "--model", str(card_path), str(data_path)])
    assert result.exit_code == 1
    assert "no column 'spend'" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "kmeans"}), encoding="utf-8")
    result = runner.invoke(app, ["model", "predict", "--model", str(bad), str(data_path)])
    assert result.exit_code == 1
    assert "no churn model" in result.output


def test_the_card_and_the_job_result_render_as_tables(tmp_path: Path) -> None:
    from tessera.cli.job_cmd import render_result

    nodes = nodes_of(population(6000, seed=6), 3)
    trace = train(spec(epsilon=4.0, rounds=2), nodes, noise=True)
    rounds = [
        {"round": i + 1, "rho": r, "survivors": ["a", "b", "c"], "dropped": [], "metric": m}
        for i, (r, m) in enumerate(zip(trace.rho, trace.metrics, strict=True))
    ]
    body = {
        **trace.result,
        "rounds": rounds,
        "budget": {
            "rho_reserved": sum(trace.rho),
            "rho_used": sum(trace.rho),
            "epsilon_used": 4.0,
            "delta": 1e-6,
        },
    }
    card = churn_card.build_card({"job_id": "j9", "result": body}, policy_hashes={"a": "f" * 64})
    assert card["privacy"]["participants"]["a"]["epsilon"] == pytest.approx(4.0, rel=1e-3)
    assert card["privacy"]["participants"]["a"]["policy_hash"] == "f" * 64
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    result = runner.invoke(app, ["model", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        "held-out AUC" in result.output
        and "region=north" in result.output
        and "ffffffffffff" in result.output
    )
    render_result(
        {
            "job_id": "j9",
            "analysis": "churn_model",
            "status": "succeeded",
            "error": "",
            "vetoes": [],
            "result": body,
        }
    )


def test_the_cli_parses_churn_model_parameters_by_kind() -> None:
    from tessera.cli.analyses_cmd import param_kinds
    from tessera.cli.job_cmd import _param

    kinds = param_kinds("churn_model")
    assert _param("lower=0,1,0", kinds) == ("lower", (0.0, 1.0, 0.0))
    assert _param("features=rfm.recency,rfm.monetary", kinds) == ("features", ("rfm.recency", "rfm.monetary"))
    assert _param("categories=region=north,region=south", kinds) == (
        "categories",
        ("region=north", "region=south"),
    )
