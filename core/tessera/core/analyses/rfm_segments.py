"""``rfm_segments``: RFM segments across partners, a program of two rounds; labels stay home.

Population: the customers of the job's dataset (``transactions``: ``time`` in days since 1970,
``amount``) with at least one row on or before the public ``reference_date``; their recency,
frequency and monetary value are derived per customer (``customer_table.rfm``).

Round 1 — boundaries. ONE vector holds three histograms (R, F, M; ``bins`` bins each (default
128: the sensitivity does not grow with the bins, only the noise summed into a quantile does; on
CDNOW 48 bins misplaced 1.4% of customers at ε = 4 through boundary resolution, 128 about 0.8%,
scripts/bench_segments.py), equal-width
in ``log1p`` over ``[0, recency_max]``, ``[0, frequency_max]``, ``[0, monetary_max]``; values above
are clamped into the last bin). A customer adds 1 to one bin of each: L∞ = 1, L1 = 3, L2 = √3;
ρ₁ = ``boundary_share``·ρ (default 0.5: the boundaries decide every customer's segment, so
they are worth half the budget; on CDNOW local-label agreement with the noiseless boundaries is
98.0% at 0.3 and 98.8% at 0.5 at ε = 1, 95.4% and 97.9% at ε = 0.5, and the MAE of segment shares
falls with it, while the cell statistics' intervals widen by √(0.7/0.5) ≈ 1.18x). The driver reads the
consortium's quintiles of each axis from the noisy histograms (``rfm.quantiles_from_histogram``:
post-processing) and sends them to every node as round 2's public input.

Round 2 — the segment table. Each node scores its customers 1-5 per axis against those
boundaries and maps them to the 11 named segments (``rfm`` documents the grid), per public group
(``group_by``: a non-sensitive field, own or ``customers.<field>``, first value per customer).
Parts, each cell (group, segment), every customer in exactly one cell:

* ``count``: 1 — L∞ = L1 = L2 = 1;
* ``monetary``: the customer's monetary value clipped to ``[0, monetary_max]`` and centred on
  ``monetary_max/2`` (fixed point, 24 bits): L∞ = L1 = L2 = 2^23 - 1 units;
* ``churn`` (with ``churn_field``, a bool field such as ``customers.churned``): 1 in the cell's
  "labelled" coordinate if the customer has a label, and 1 in its "churned" coordinate if it is
  true: L∞ = 1, L1 = 2, L2 = √2. Customers without a label count in size and monetary only.

ρ₂ = ρ - ρ₁, split count 0.4 / monetary 0.3 / churn 0.3 (without churn: 0.55 / 0.45). The result
states every share. Released per cell: size, share of the group, mean monetary and churn rate
with 95% intervals; a cell whose noisy size is below ``min_cohort_size`` is suppressed whole, a
churn rate whose noisy labelled count is below it is withheld (post-processing, no budget).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses import rfm
from tessera.core.analyses import vector as v
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.analyses.program import Public, Step, rho_total
from tessera.core.analyses.ratios import ratio, share
from tessera.core.dp import fixed_point_scale, stochastic_round
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, Tier

INFO = AnalysisInfo(
    name="rfm_segments",
    description="RFM segments of the consortium: DP quintile boundaries, then a DP segment table",
    differentially_private=True,
    resumable=False,
    stages=v.DP_STAGES,
    min_nodes=3,
)
VALUE_BITS = 24
MAX_BINS = 512
_PARAMS = frozenset(
    {
        "reference_date",
        "time_field",
        "amount_field",
        "recency_max",
        "frequency_max",
        "monetary_max",
        "bins",
        "churn_field",
        "boundary_share",
    }
)
PARAMS = (
    _docs.ParamDoc(
        "reference_date", "text", "required", "YYYY-MM-DD", "recency is counted back from this day"
    ),
    _docs.ParamDoc("monetary_max", "number", "required", "amount units", "monetary values are clipped to it"),
    _docs.ParamDoc("recency_max", "number", "1095", "days", "recency histogram range (longer is clamped)"),
    _docs.ParamDoc("frequency_max", "number", "200", "purchases", "frequency histogram range"),
    _docs.ParamDoc("bins", "integer", "128", "bins", "log-scaled bins per axis for the boundaries"),
    _docs.ParamDoc("churn_field", "field", "-", "-", "a bool label for churn rates, e.g. customers.churned"),
    _docs.ParamDoc("boundary_share", "number", "0.5", "fraction of ε", "budget of the boundaries' round"),
    _docs.ParamDoc("time_field", "field", "time", "-", "the field holding each row's time"),
    _docs.ParamDoc("amount_field", "field", "amount", "-", "the field holding each row's amount"),
    *_docs.GROUPS,
)
_ROUND2_SPLIT = {"count": 0.4, "monetary": 0.3, "churn": 0.3}
_ROUND2_SPLIT_NO_CHURN = {"count": 0.55, "monetary": 0.45}


def max_rounds(spec: JobSpec) -> int:
    return 2


def start(spec: JobSpec) -> Public:
    return {}


def _positive(spec: JobSpec, name: str, default: float | None) -> float:
    value = p.number_param(spec, name, default=default)
    if not value > 0:
        raise InvalidRequest(f"parameter {name!r} must be above 0")
    return value


def _settings(spec: JobSpec, fields: Mapping[str, FieldSchema]) -> dict[str, Any]:
    """Everything both rounds read from the spec and the schemas (no data; fail closed)."""
    p.check_params(spec, _PARAMS)
    own = ct.own_fields(fields)
    key = p.customer_key(own)
    if key is None:
        raise InvalidRequest("rfm_segments reads rows per customer: its dataset needs a customer_key")
    names = {}
    for param, default in (("time_field", "time"), ("amount_field", "amount")):
        name = spec.params.get(param, default)
        if not isinstance(name, str):
            raise InvalidRequest(f"parameter {param!r} must name a field")
        schema = p.field_schema(own, name)
        if schema.type not in p.NUMERIC_TYPES | {"date"}:
            raise InvalidRequest(f"parameter {param!r} must name a numeric or date field")
        names[param] = name
    share_1 = p.number_param(spec, "boundary_share", default=0.5)
    if not 0 < share_1 < 1:
        raise InvalidRequest("parameter 'boundary_share' must be in (0, 1)")
    churn = spec.params.get("churn_field")
    if churn is not None and (
        not isinstance(churn, str) or ct.attribute_schema(spec, fields, churn).type != "bool"
    ):
        raise InvalidRequest("parameter 'churn_field' must name a bool field (e.g. customers.churned)")
    group, labels = _grouping(spec, fields)
    return {
        "reference_day": ct.day_param(spec, "reference_date"),
        "time": names["time_field"],
        "amount": names["amount_field"],
        "key": key,
        "join": ct.join_key(fields),
        "uppers": {
            "recency": _positive(spec, "recency_max", 1095.0),
            "frequency": _positive(spec, "frequency_max", 200.0),
            "monetary": _positive(spec, "monetary_max", None),
        },
        "bins": p.int_param(spec, "bins", default=128, low=2, high=MAX_BINS),
        "boundary_share": share_1,
        "churn": churn,
        "group_by": group,
        "groups": labels,
    }


def _grouping(spec: JobSpec, fields: Mapping[str, FieldSchema]) -> tuple[str | None, tuple[str, ...]]:
    name = spec.params.get("group_by")
    if name is None:
        if "groups" in spec.params:
            raise InvalidRequest("parameter 'groups' needs parameter 'group_by'")
        return None, (p.ALL,)
    if not isinstance(name, str) or not name:
        raise InvalidRequest("parameter 'group_by' must name a field")
    schema = ct.attribute_schema(spec, fields, name)
    if Tier(schema.tier) is not Tier.NON_SENSITIVE:
        raise PolicyViolation(
            f"field {name!r} cannot be a group-by key: only non_sensitive fields may group results",
            code="policy.group_by_tier",
        )
    if schema.type not in p.LABEL_TYPES:
        raise InvalidRequest("parameter 'group_by' must name a category or string field")
    return name, (*p.labels_param(spec, "groups"), p.OTHER)


def _layout(spec: JobSpec, s: dict[str, Any], round_no: int) -> dict[str, Any]:
    contribution = p.Contribution(s["key"], "rfm", None, 1).as_layout()
    return {
        "field": None,
        "round": round_no,
        "reference_date": spec.params["reference_date"],
        "reference_day": s["reference_day"],
        "time": s["time"],
        "amount": s["amount"],
        "key": s["key"],
        "join": s["join"],
        "uppers": s["uppers"],
        "bins": s["bins"],
        "churn": None if s["churn"] is None else ct.read_name(spec.dataset, s["churn"]),
        "group_by": None if s["group_by"] is None else ct.read_name(spec.dataset, s["group_by"]),
        "groups": s["groups"],
        "segments": rfm.SEGMENTS,
        "contribution": contribution,
    }


def _boundaries(public: Public, uppers: Mapping[str, float]) -> dict[str, tuple[float, ...]]:
    """Round 2's public boundaries, checked (the coordinator may lie: never trust the shape)."""
    raw = public.get("boundaries")
    if not isinstance(raw, Mapping) or set(raw) != set(rfm.AXES):
        raise InvalidRequest("round 2 needs 'boundaries' for recency, frequency and monetary")
    out = {}
    for axis in rfm.AXES:
        b = raw[axis]
        ok = isinstance(b, list) and len(b) == 4
        ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
        if not ok or not all(0 <= x <= uppers[axis] for x in b) or any(np.diff(b) < 0):
            raise InvalidRequest(f"the {axis} boundaries must be four non-decreasing numbers in range")
        out[axis] = tuple(float(x) for x in b)
    return out


def plan(
    spec: JobSpec,
    fields: Mapping[str, FieldSchema],
    *,
    survivors_t: int,
    n_nodes: int,
    round_no: int = 1,
    public: Public | None = None,
) -> v.VectorPlan:
    """Round 1: three log-binned histograms; round 2: the segment table (no data; fail closed)."""
    p.check_round(survivors_t=survivors_t, n_nodes=n_nodes)
    s = _settings(spec, fields)
    rho = rho_total(spec)
    layout = _layout(spec, s, round_no)
    touched = [s["time"], s["amount"]]
    t = survivors_t
    if round_no == 1:
        rho_1 = s["boundary_share"] * rho
        size = 3 * s["bins"]
        part = v.make_part(
            "hist",
            start=0,
            stop=size,
            scale=1.0,
            linf_bound=1,
            l1=3,
            l2=math.sqrt(3),
            rho=rho_1,
            survivors_t=t,
        )
        parts: tuple[v.VectorPart, ...] = (part,)
        round_rho = rho_1
    elif round_no == 2:
        layout["boundaries"] = _boundaries(public or {}, s["uppers"])
        rho_2 = (1 - s["boundary_share"]) * rho
        split = _ROUND2_SPLIT if s["churn"] else _ROUND2_SPLIT_NO_CHURN
        cells = len(s["groups"]) * len(rfm.SEGMENTS)
        half = s["uppers"]["monetary"] / 2
        scale = fixed_point_scale(clip_bound=half, value_bits=VALUE_BITS)
        top = 2 ** (VALUE_BITS - 1) - 1
        count = v.make_part(
            "count", start=0, stop=cells, scale=1.0, linf_bound=1, rho=split["count"] * rho_2, survivors_t=t
        )
        money = v.make_part(
            "monetary",
            start=cells,
            stop=2 * cells,
            scale=scale,
            linf_bound=top,
            rho=split["monetary"] * rho_2,
            survivors_t=t,
        )
        parts = (count, money)
        size = 2 * cells
        if s["churn"]:
            churn = v.make_part(
                "churn",
                start=size,
                stop=size + 2 * cells,
                scale=1.0,
                linf_bound=1,
                l1=2,
                l2=math.sqrt(2),
                rho=split["churn"] * rho_2,
                survivors_t=t,
            )
            parts = (*parts, churn)
            size += 2 * cells
        layout["offset"] = half
        layout["split"] = {
            "round1": s["boundary_share"],
            **{k: (1 - s["boundary_share"]) * x for k, x in split.items()},
        }
        touched += [x for x in (s["churn"], s["group_by"]) if x is not None]
        round_rho = rho_2
    else:
        raise InvalidRequest(f"round {round_no} is outside this job's 2 rounds")
    join = [s["join"]] if any(ct.qualified(n)[0] == ct.JOINED for n in touched[2:]) else []
    return v.VectorPlan(
        analysis=INFO.name,
        dataset=spec.dataset,
        fields=p.touched(s["key"], *touched, *join),
        length=size,
        parts=parts,
        layout=layout,
        epsilon=spec.epsilon,
        delta=spec.delta,
        rho=round_rho,
        survivors_t=survivors_t,
        n_nodes=n_nodes,
    )


def _table(plan: v.VectorPlan, data: Mapping[str, Any]) -> ct.Rfm:
    layout = plan.layout
    return ct.rfm(
        data,
        key=layout["key"],
        time=layout["time"],
        amount=layout["amount"],
        reference_day=layout["reference_day"],
    )


def _attribute(plan: v.VectorPlan, data: Mapping[str, Any], name: str, table: ct.Rfm) -> np.ndarray:
    return ct.layout_attribute(data, name, table.population, plan.layout)


def _cells(plan: v.VectorPlan, data: Mapping[str, Any]) -> tuple[ct.Rfm, v.IntArray]:
    """Round 2: each customer's RFM values and its cell ``group·S + segment``."""
    layout = plan.layout
    table = _table(plan, data)
    segment = rfm.segments(table.recency, table.frequency, table.monetary, dict(layout["boundaries"]))
    labels = tuple(layout["groups"])
    if layout["group_by"] is None:
        group = np.zeros(table.population.size, dtype=np.int64)
    else:
        group = p.label_index(_attribute(plan, data, layout["group_by"], table), labels[:-1])
        group[group < 0] = len(labels) - 1
    return table, group * len(rfm.SEGMENTS) + segment


def _round1(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.IntArray:
    table = _table(plan, data)
    bins = int(plan.layout["bins"])
    out = np.zeros(plan.length, dtype=np.int64)
    for i, axis in enumerate(rfm.AXES):
        b = rfm.log_bins(getattr(table, axis), upper=plan.layout["uppers"][axis], bins=bins)
        out[i * bins : (i + 1) * bins] = np.bincount(b, minlength=bins)
    return out


def _round2(plan: v.VectorPlan, data: Mapping[str, Any], rng: np.random.Generator | None) -> np.ndarray:
    table, cell = _cells(plan, data)
    cells = len(plan.layout["groups"]) * len(rfm.SEGMENTS)
    half = plan.layout["offset"]
    centred = np.clip(np.clip(table.monetary, 0.0, 2 * half) - half, -half, half)
    exact = rng is None
    out = np.zeros(plan.length, dtype=np.float64 if exact else np.int64)
    out[:cells] = np.bincount(cell, minlength=cells)
    if exact:
        out[cells : 2 * cells] = np.bincount(cell, weights=centred, minlength=cells)
    else:
        assert rng is not None
        np.add.at(
            out[cells : 2 * cells],
            cell,
            stochastic_round(centred, scale=plan.part("monetary").scale, rng=rng),
        )
    if plan.layout["churn"] is not None:
        label = _attribute(plan, data, plan.layout["churn"], table).astype(np.float64)
        known = ~np.isnan(label)
        out[2 * cells : 3 * cells] = np.bincount(cell[known], minlength=cells)
        out[3 * cells : 4 * cells] = np.bincount(cell[known & (label > 0.5)], minlength=cells)
    return out


def local_vector(plan: v.VectorPlan, data: Mapping[str, Any], *, rng: np.random.Generator) -> v.IntArray:
    """The node's vector of the plan's round (int64, no noise)."""
    if plan.layout["round"] == 1:
        return _round1(plan, data)
    return np.asarray(_round2(plan, data, rng), dtype=np.int64)


def exact(plan: v.VectorPlan, data: Mapping[str, Any]) -> v.FloatArray:
    """The unnoised vector (monetary unquantised): the truth of tests and benchmarks."""
    if plan.layout["round"] == 1:
        return _round1(plan, data).astype(np.float64)
    return np.asarray(_round2(plan, data, None), dtype=np.float64)


def release(plan: v.VectorPlan, total: Any, *, summands: int, min_cohort_size: int) -> dict[str, Any]:
    """Round 1: the three noisy histograms; round 2: the segment table (see the module docstring)."""
    noisy = v.check_total(plan, total, summands=summands).astype(np.float64)
    doc = v.header(plan, summands=summands, min_cohort_size=min_cohort_size)
    doc["round"] = plan.layout["round"]
    if plan.layout["round"] == 1:
        bins = int(plan.layout["bins"])
        half = v.half_width(plan, plan.part("hist"), summands=summands)
        doc["histograms"] = {}
        for i, axis in enumerate(rfm.AXES):
            counts = noisy[i * bins : (i + 1) * bins]
            doc["histograms"][axis] = {
                "edges": rfm.log_edges(plan.layout["uppers"][axis], bins).tolist(),
                "counts": [float(x) if x >= min_cohort_size else None for x in counts],
                "ci95_half_width": half,
            }
        return doc
    return _segment_table(plan, noisy, doc, summands=summands, min_cohort_size=min_cohort_size)


def _segment_table(
    plan: v.VectorPlan, noisy: v.FloatArray, doc: dict[str, Any], *, summands: int, min_cohort_size: int
) -> dict[str, Any]:
    layout = plan.layout
    s_count = len(rfm.SEGMENTS)
    cells = len(layout["groups"]) * s_count
    var_c = v.variance(plan, plan.part("count"), summands=summands)
    var_m = v.variance(plan, plan.part("monetary"), summands=summands)
    var_l = v.variance(plan, plan.part("churn"), summands=summands) if layout["churn"] else 0.0
    half_c = v.half_width(plan, plan.part("count"), summands=summands)
    offset, upper = layout["offset"], 2 * layout["offset"]
    doc["boundaries"] = {k: list(b) for k, b in layout["boundaries"].items()}
    for g, group in enumerate(layout["groups"]):
        counts = noisy[g * s_count : (g + 1) * s_count]
        total = float(np.clip(counts, 0, None).sum())
        for s, name in enumerate(rfm.SEGMENTS):
            i = g * s_count + s
            c = float(noisy[i])
            size, suppressed = v.count_estimate(c, half_c, min_cohort_size=min_cohort_size)
            cell: dict[str, Any] = {"group": group, "segment": name, "size": size, "suppressed": suppressed}
            if not suppressed:
                m = float(noisy[cells + i]) / plan.part("monetary").scale  # centred sum
                cell["share"] = share(max(c, 0.0), total, var_cell=var_c, cells=s_count)
                mean = ratio(m, c, var_a=var_m, var_b=var_c, lower=-offset, upper=offset)
                if mean is not None:
                    mean = {"value": mean["value"] + offset, "ci95": [x + offset for x in mean["ci95"]]}
                cell["mean_monetary"] = mean
                if layout["churn"]:
                    labelled, churned = float(noisy[2 * cells + i]), float(noisy[3 * cells + i])
                    cell["churn_rate"] = (
                        None
                        if labelled < min_cohort_size
                        else ratio(churned, labelled, var_a=var_l, var_b=var_l, lower=0.0, upper=1.0)
                    )
            doc["cells"].append(cell)
    doc["monetary_max"] = upper
    doc["split"] = dict(layout["split"])
    return doc


def step(spec: JobSpec, *, round_no: int, public: Public, released: dict[str, Any]) -> Step:
    """Round 1 -> the quintile boundaries (public); round 2 -> the final result with the model."""
    if round_no == 1:
        boundaries = {}
        for axis in rfm.AXES:
            h = released["histograms"][axis]
            counts = [0.0 if x is None else float(x) for x in h["counts"]]
            upper = float(h["edges"][-1])
            boundaries[axis] = list(
                rfm.quantiles_from_histogram(counts, upper=upper, integer=axis in rfm.INTEGER_AXES)
            )
        metric = {f"{axis}_median": boundaries[axis][1] for axis in rfm.AXES}
        return Step(next_public={"boundaries": boundaries}, result=None, metric=metric)
    rho = rho_total(spec)
    split = released.get("split") or {}
    result = {
        "analysis": INFO.name,
        "dataset": spec.dataset,
        "epsilon": spec.epsilon,
        "delta": spec.delta,
        "rho": rho,
        "group_by": released["group_by"],
        "segments": released["cells"],
        "min_cohort_size": released["min_cohort_size"],
        "budget_split": split,
        "model": {
            "kind": "rfm",
            "reference_date": spec.params["reference_date"],
            "time_field": spec.params.get("time_field", "time"),
            "amount_field": spec.params.get("amount_field", "amount"),
            "boundaries": released["boundaries"],
            "grid": "R x FM, FM = (F + M + 1) // 2 (see tessera.core.analyses.rfm)",
        },
        "rounds_run": 2,
    }
    return Step(next_public=None, result=result, metric={"segments": float(len(rfm.SEGMENTS))})


def label_customers(model: Mapping[str, Any], data: Mapping[str, Any], *, key: str) -> dict[int, str]:
    """The node's local half: each of its customers' segment under a released model (never sent).

    ``data`` holds the node's rows of the job's dataset: ``key`` (customer ids) and the model's time
    and amount fields. Customers without a row on or before the reference date get no segment.
    """
    if model.get("kind") != "rfm":
        raise InvalidRequest("this model is not an rfm_segments result")
    reference = ct.day_param(JobSpec(analysis=INFO.name, params={"d": model["reference_date"]}), "d")
    table = ct.rfm(
        data, key=key, time=model["time_field"], amount=model["amount_field"], reference_day=reference
    )
    boundaries = _boundaries(model, {axis: math.inf for axis in rfm.AXES})
    index = rfm.segments(table.recency, table.frequency, table.monetary, boundaries)
    return {
        int(cid): rfm.SEGMENTS[s]
        for cid, s in zip(table.population.ids.tolist(), index.tolist(), strict=True)
    }
