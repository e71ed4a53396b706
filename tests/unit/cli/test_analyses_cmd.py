"""`tessera analyses` and typed `--param` lists (issue 12, item 12)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tessera.cli.analyses_cmd import param_kinds
from tessera.cli.job_cmd import _param
from tessera.cli.main import app
from tessera.core import serde
from tessera.core.analyses import quantiles
from tessera.core.errors import ConfigError
from tessera.core.types import JobSpec


def test_quantile_levels_from_the_command_line_reach_the_analysis() -> None:
    name, value = _param("levels=0.25,0.5,0.75", param_kinds("quantiles"))
    assert (name, value) == ("levels", (0.25, 0.5, 0.75))
    wire = serde.param_from_pb(serde.param_to_pb(value))
    spec = JobSpec(analysis="quantiles", dataset="customers", purpose="research", params={"levels": wire})
    assert quantiles._levels(spec) == (0.25, 0.5, 0.75)
    assert _param("levels=0.9", param_kinds("quantiles"))[1] == (0.9,)
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        _param("levels=low,high", param_kinds("quantiles"))
    # Group labels stay text even when they look like numbers.
    assert _param("groups=1,2,3", param_kinds("count"))[1] == ("1", "2", "3")
    assert _param("bins=12", param_kinds("histogram"))[1] == 12


def test_analyses_lists_every_analysis_with_its_parameters() -> None:
    result = CliRunner().invoke(app, ["analyses", "--json"])
    assert result.exit_code == 0, result.output
    doc = {entry["analysis"]: entry for entry in json.loads(result.output)}
    assert set(doc) >= {"inventory", "count", "sum", "mean", "histogram", "quantiles", "mean_descent"}
    levels = {p["name"]: p for p in doc["quantiles"]["params"]}["levels"]
    assert (levels["kind"], levels["default"], levels["unit"]) == ("numbers", "0.25,0.5,0.75", "fractions")
    assert {p["name"] for p in doc["sum"]["params"]} >= {"field", "lower", "upper", "group_by", "groups"}
    text = CliRunner().invoke(app, ["analyses"], env={"COLUMNS": "80"}).output
    assert max(len(line) for line in text.splitlines()) <= 80 and "levels (numbers; default" in text


def test_segment_analyses_document_their_parameters_and_parse_lists() -> None:
    from tessera.core.analyses import cohort_retention, funnel, kmeans_spec, rfm_segments

    for module, accepted in (
        (funnel, funnel._PARAMS),
        (cohort_retention, cohort_retention._PARAMS),
        (rfm_segments, rfm_segments._PARAMS | {"group_by", "groups"}),
        (kmeans_spec, kmeans_spec._PARAMS),
    ):
        assert {p.name for p in module.PARAMS} == set(accepted)
    assert _param("lower=0,1,0", param_kinds("kmeans"))[1] == (0.0, 1.0, 0.0)
    assert _param("features=rfm.recency,rfm.monetary", param_kinds("kmeans"))[1] == (
        "rfm.recency",
        "rfm.monetary",
    )
    assert _param("steps=visit,cart", param_kinds("funnel"))[1] == ("visit", "cart")
    assert _param("cohorts=3", param_kinds("cohort_retention"))[1] == 3
    doc = {e["analysis"]: e for e in json.loads(CliRunner().invoke(app, ["analyses", "--json"]).output)}
    assert {"rfm_segments", "kmeans", "funnel", "cohort_retention"} <= set(doc)
