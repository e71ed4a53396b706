"""Reading a ``kmeans`` job: its parameters, refusals, budget split and round kinds, and the
checks of each round's public input (no data; identical on every node and the coordinator).
``kmeans`` documents the analysis."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses.program import Public, rho_total
from tessera.core.errors import InvalidRequest
from tessera.core.types import FieldSchema, JobSpec

VALUE_BITS = 24
MAX_K = 64
MAX_FEATURES = 16
MAX_ITERATIONS = 50
GRID_CELLS = 4096
MIN_MOVE_COUNT = 5.0
STATS_SPLIT = {"count": 0.2, "sum": 0.4, "square": 0.4}
LLOYD_SPLIT = {"count": 0.2, "sum": 0.8}
_PARAMS = frozenset(
    {
        "features",
        "lower",
        "upper",
        "log_features",
        "k",
        "iterations",
        "init",
        "seed",
        "clip_sd",
        "stats_share",
        "init_share",
        "population",
        "reference_date",
        "time_field",
        "amount_field",
    }
)


PARAMS = (
    _docs.ParamDoc("features", "texts", "required", "-", "numeric fields, customers.<field> or rfm.recency…"),
    _docs.ParamDoc("lower", "numbers", "required", "feature units", "each feature's clip bound below"),
    _docs.ParamDoc("upper", "numbers", "required", "feature units", "each feature's clip bound above"),
    _docs.ParamDoc("log_features", "texts", "-", "-", "features taken as log1p (lower bound at least 0)"),
    _docs.ParamDoc("k", "integer", "required", "clusters", "how many clusters, 2 to 64"),
    _docs.ParamDoc("iterations", "integer", "5", "rounds", "DP Lloyd iterations"),
    _docs.ParamDoc("init", "choice", "grid", "-", "grid (DP coreset of a grid) or random"),
    _docs.ParamDoc("seed", "integer", "0", "-", "seed of the public randomness (starts, k-means++)"),
    _docs.ParamDoc("clip_sd", "number", "3", "sd", "standardised features are clipped to ± this"),
    _docs.ParamDoc("stats_share", "number", "0.15", "fraction of ε", "budget of the statistics round"),
    _docs.ParamDoc("init_share", "number", "0.15", "fraction of ε", "budget of the grid round"),
    _docs.ParamDoc("population", "integer", "-", "customers", "a public estimate: checks k before any round"),
    _docs.ParamDoc("reference_date", "text", "-", "YYYY-MM-DD", "for rfm.* features: counted back from it"),
    _docs.ParamDoc("time_field", "field", "time", "-", "for rfm.* features: each row's time"),
    _docs.ParamDoc("amount_field", "field", "amount", "-", "for rfm.* features: each row's amount"),
)


def _names(spec: JobSpec, name: str, *, required: bool) -> tuple[str, ...]:
    value = spec.params.get(name, None if required else ())
    if not isinstance(value, tuple) or not all(isinstance(x, str) and x for x in value):
        raise InvalidRequest(f"parameter {name!r} must be a list of field names")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"parameter {name!r} names a field twice")
    return tuple(str(x) for x in value)


def _floats(spec: JobSpec, name: str, d: int) -> tuple[float, ...]:
    value = spec.params.get(name)
    items: tuple[Any, ...] = value if isinstance(value, tuple) else ()
    ok = len(items) == d and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in items
    )
    if not ok:
        raise InvalidRequest(f"parameter {name!r} must list one finite number per feature ({d})")
    return tuple(float(x) for x in items)


def _share(spec: JobSpec, name: str, default: float) -> float:
    value = p.number_param(spec, name, default=default)
    if not 0 < value < 1:
        raise InvalidRequest(f"parameter {name!r} must be in (0, 1)")
    return value


def grid_size(d: int) -> int:
    """Cells per axis of the initialisation grid: 8, or fewer so that ``g^d <= 4096``."""
    g = 8
    while g > 1 and g**d > GRID_CELLS:
        g -= 1
    return g


def _schema(spec: JobSpec, fields: Mapping[str, FieldSchema], features: tuple[str, ...]) -> dict[str, Any]:
    """The schema checks of the features (fail closed) and how a node reads them."""
    own = ct.own_fields(fields)
    key = p.customer_key(own)
    for name in features:
        if name in ct.RFM:
            continue
        dataset, _ = ct.qualified(name)
        if key is not None and (dataset is None or dataset == spec.dataset):
            raise InvalidRequest(
                f"feature {name!r}: this dataset has many rows per customer; name customer fields as "
                "customers.<field> or derived ones as rfm.recency, rfm.frequency, rfm.monetary"
            )
        if ct.attribute_schema(spec, fields, name).type not in p.NUMERIC_TYPES | {"date"}:
            raise InvalidRequest(f"feature {name!r} must be a numeric field")
    out: dict[str, Any] = {"key": key, "join": ct.join_key(fields), "time": None, "amount": None}
    if any(f in ct.RFM for f in features):
        if key is None:
            raise InvalidRequest("rfm.* features derive from rows per customer: use a transactions dataset")
        for param, default in (("time_field", "time"), ("amount_field", "amount")):
            named = spec.params.get(param, default)
            if not isinstance(named, str) or p.field_schema(own, named).type not in p.NUMERIC_TYPES | {
                "date"
            }:
                raise InvalidRequest(f"parameter {param!r} must name a numeric or date field")
            out[param.removesuffix("_field")] = named
        out["reference_day"] = ct.day_param(spec, "reference_date")
    return out


def settings(spec: JobSpec, fields: Mapping[str, FieldSchema] | None = None) -> dict[str, Any]:
    """What every round reads from the spec (and, given ``fields``, the schemas); fail closed."""
    p.check_params(spec, _PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("kmeans does not group its results")
    features = _names(spec, "features", required=True)
    d = len(features)
    if not 1 <= d <= MAX_FEATURES:
        raise InvalidRequest(f"parameter 'features' must name 1 to {MAX_FEATURES} features")
    lower, upper = _floats(spec, "lower", d), _floats(spec, "upper", d)
    if any(lo >= hi for lo, hi in zip(lower, upper, strict=True)):
        raise InvalidRequest("each feature's lower bound must be below its upper bound")
    logs = _names(spec, "log_features", required=False)
    if set(logs) - set(features):
        raise InvalidRequest("parameter 'log_features' may only name features")
    log = tuple(f in logs for f in features)
    if any(flag and lo < 0 for flag, lo in zip(log, lower, strict=True)):
        raise InvalidRequest("a log1p feature needs a lower bound of at least 0")
    k = p.int_param(spec, "k", default=None, low=2, high=MAX_K)
    init = spec.params.get("init", "grid")
    if init not in ("grid", "random"):
        raise InvalidRequest("parameter 'init' must be 'grid' or 'random'")
    g = grid_size(d)
    if init == "grid" and (g < 2 or k > g**d):
        raise InvalidRequest(f"{k} clusters need more cells than the {d}-feature initialisation grid holds")
    stats = _share(spec, "stats_share", 0.15)
    if init == "random" and "init_share" in spec.params:
        raise InvalidRequest("parameter 'init_share' applies to init 'grid' only")
    init_share = _share(spec, "init_share", 0.15) if init == "grid" else 0.0
    if stats + init_share >= 1:
        raise InvalidRequest(
            "the rounds' budget shares add up to the job's total or more: nothing is left to iterate"
        )
    clip = p.number_param(spec, "clip_sd", default=3.0)
    if not 0.5 <= clip <= 10:
        raise InvalidRequest("parameter 'clip_sd' must be between 0.5 and 10")
    iterations = p.int_param(spec, "iterations", default=5, low=1, high=MAX_ITERATIONS)
    rho = rho_total(spec)
    s: dict[str, Any] = {
        "features": features,
        "read": tuple(f if f in ct.RFM else ct.read_name(spec.dataset, f) for f in features),
        "lower": lower,
        "upper": upper,
        "log": log,
        "t_lower": tuple(math.log1p(lo) if f else lo for f, lo in zip(log, lower, strict=True)),
        "t_upper": tuple(math.log1p(hi) if f else hi for f, hi in zip(log, upper, strict=True)),
        "k": k,
        "init": init,
        "grid": g,
        "seed": p.int_param(spec, "seed", default=0, low=0, high=2**31 - 1),
        "clip": clip,
        "iterations": iterations,
        "budget": {
            "stats": stats * rho,
            "init": init_share * rho,
            "per_iteration": (1 - stats - init_share) * rho / iterations,
            "iterations": iterations,
            "stats_parts": dict(STATS_SPLIT),
            "iteration_parts": dict(LLOYD_SPLIT),
        },
    }
    if fields is not None:
        s |= _schema(spec, fields, features)
    if "population" in spec.params:
        population = p.int_param(spec, "population", default=None, low=1, high=2**40)
        check_clusters(s, population=float(population))
    return s


def check_clusters(s: Mapping[str, Any], *, population: float) -> None:
    """Refuse ``k`` clusters the budget cannot resolve (see the module docstring)."""
    d = len(s["features"])
    rho_sum = LLOYD_SPLIT["sum"] * s["budget"]["per_iteration"]
    sigma_z = s["clip"] * math.sqrt(d) / math.sqrt(2 * rho_sum)
    need = 10 * sigma_z
    if s["k"] * need > population:
        raise InvalidRequest(
            f"too many clusters for the budget: each of the {s['k']} clusters needs about {need:.0f} "
            f"customers for its centroid's noise to stay below 0.1 sd, and the consortium holds about "
            f"{population:.0f}; ask for fewer clusters, fewer iterations or a larger epsilon"
        )


def max_rounds(spec: JobSpec) -> int:
    iterations = p.int_param(spec, "iterations", default=5, low=1, high=MAX_ITERATIONS)
    return 1 + (spec.params.get("init", "grid") == "grid") + iterations


def kind(s: Mapping[str, Any], round_no: int) -> str:
    if round_no == 1:
        return "stats"
    if round_no == 2 and s["init"] == "grid":
        return "grid"
    first_lloyd = 3 if s["init"] == "grid" else 2
    if not first_lloyd <= round_no < first_lloyd + s["iterations"]:
        raise InvalidRequest(f"round {round_no} is outside this job's rounds")
    return "lloyd"


def _numbers(value: Any, n: int, lo: float, hi: float) -> tuple[float, ...] | None:
    ok = isinstance(value, list) and len(value) == n
    ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi for x in value)
    return tuple(float(x) for x in value) if ok else None


def check_public(s: Mapping[str, Any], kind_: str, public: Public) -> dict[str, Any]:
    """The round's public input, checked: the coordinator may lie, so nothing is trusted."""
    if kind_ == "stats":
        return {}
    d = len(s["features"])
    mean, sd = [], []
    raw_mean, raw_sd = public.get("mean"), public.get("sd")
    for j in range(d):
        lo, hi = s["t_lower"][j], s["t_upper"][j]
        m = _numbers(raw_mean, d, -math.inf, math.inf)
        w = _numbers(raw_sd, d, 0.0, math.inf)
        if m is None or w is None or not lo <= m[j] <= hi or not 0 < w[j] <= hi - lo:
            raise InvalidRequest("the round's public 'mean' and 'sd' must be one in-range number per feature")
        mean.append(m[j])
        sd.append(w[j])
    out: dict[str, Any] = {"mean": tuple(mean), "sd": tuple(sd)}
    if kind_ == "lloyd":
        raw = public.get("centroids")
        rows = [_numbers(r, d, -s["clip"], s["clip"]) for r in raw] if isinstance(raw, list) else []
        if len(rows) != s["k"] or any(r is None for r in rows):
            raise InvalidRequest("the round's public 'centroids' must be k points inside the clipped box")
        out["centroids"] = tuple(rows)
    return out
