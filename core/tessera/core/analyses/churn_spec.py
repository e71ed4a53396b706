"""Reading a ``churn_model`` job: its parameters, refusals, budget and round kinds, and the checks of
each round's public input (no data; identical on every node and the coordinator).
``churn_model`` documents the analysis."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tessera.core.analyses import customer_table as ct
from tessera.core.analyses import param_docs as _docs
from tessera.core.analyses import params as p
from tessera.core.analyses.program import Public, rho_total
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.types import FieldSchema, JobSpec, Tier

VALUE_BITS = 24
MAX_FEATURES = 32
MAX_CATEGORIES = 256
MAX_TRAIN_ROUNDS = 200
OPTIMIZERS = ("fedavg", "fedadam", "fedyogi")
# Within the preprocessing round: the counts (customers, positives, categories) and the moments.
PREP_SPLIT = {"counts": 0.3, "moments": 0.7}
DEFAULTS: dict[str, Any] = {
    "rounds": 30,
    "optimizer": "fedadam",
    "server_lr": 0.15,
    "client_lr": 1.0,
    "l2": 1e-4,
    "clip_sd": 4.0,
    "clip_quantile": 0.95,
    "clip_rate": 0.3,
    "holdout": 0.2,
    "split_seed": "tessera-churn",
    "score_bins": 25,
    "min_category_count": 20.0,
    "prep_share": 0.1,
    "eval_share": 0.1,
    "clip_share": 0.05,
    "time_field": "time",
    "amount_field": "amount",
}
_PARAMS = frozenset(
    {
        "label",
        "features",
        "lower",
        "upper",
        "log_features",
        "categories",
        "reference_date",
        "label_end",
        "initial_clip",
    }
    | set(DEFAULTS)
)
SCORE_LOGIT_RANGE = 5.0  # scores are binned on equal logit widths over [-5, 5] (ends open)
# A label derived from the rows themselves: 1 when the customer has no row after the reference
# day up to ``label_end`` (churned), 0 when it has one. Features then come from before the day.
NO_PURCHASE_AFTER = (
    "rfm.no_purchase_after"  # scores are binned on equal logit widths over [-8, 8] (ends open)
)

PARAMS = (
    _docs.ParamDoc(
        "label", "field", "required", "-", "the 0/1 churn label (customers.churned, or rfm.no_purchase_after)"
    ),
    _docs.ParamDoc(
        "label_end", "text", "-", "-", "rfm.no_purchase_after: the last day looked at (YYYY-MM-DD)"
    ),
    _docs.ParamDoc(
        "features",
        "texts",
        "required",
        "-",
        "customers.<field>, own fields or rfm.recency/frequency/monetary",
    ),
    _docs.ParamDoc("lower", "numbers", "required", "field units", "one clip bound per NUMERIC feature"),
    _docs.ParamDoc("upper", "numbers", "required", "field units", "one clip bound per NUMERIC feature"),
    _docs.ParamDoc("log_features", "texts", "-", "-", "numeric features to log1p before standardising"),
    _docs.ParamDoc("categories", "texts", "-", "-", "public categories as feature=value (others: 'other')"),
    _docs.ParamDoc("reference_date", "text", "required with rfm.*", "-", "RFM as of this day (YYYY-MM-DD)"),
    _docs.ParamDoc("rounds", "integer", "30", "rounds", "DP gradient rounds (the budget covers them all)"),
    _docs.ParamDoc("optimizer", "choice", "fedadam", "-", "server step: fedavg, fedadam or fedyogi (flwr)"),
    _docs.ParamDoc("server_lr", "number", "0.15", "-", "the server optimiser's step size (eta)"),
    _docs.ParamDoc("client_lr", "number", "1.0", "-", "the virtual client's step on the mean gradient"),
    _docs.ParamDoc("l2", "number", "1e-4", "-", "ridge penalty on the coefficients (not the intercept)"),
    _docs.ParamDoc("holdout", "number", "0.2", "share", "customers held out for the evaluation"),
    _docs.ParamDoc("score_bins", "integer", "25", "bins", "bins of the DP score histograms"),
    _docs.ParamDoc("clip_quantile", "number", "0.95", "-", "adaptive clipping's target quantile of norms"),
)


def _names(spec: JobSpec, name: str, *, required: bool) -> tuple[str, ...]:
    value = spec.params.get(name, None if required else ())
    if isinstance(value, str) and value:
        value = (value,)
    if not isinstance(value, tuple) or not all(isinstance(x, str) and x for x in value):
        raise InvalidRequest(f"parameter {name!r} must be a list of names")
    if len(set(value)) != len(value):
        raise InvalidRequest(f"parameter {name!r} names something twice")
    return tuple(str(x) for x in value)


def _floats(spec: JobSpec, name: str, d: int) -> tuple[float, ...]:
    value = spec.params.get(name, () if d == 0 else None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (float(value),)
    items: tuple[Any, ...] = value if isinstance(value, tuple) else ()
    ok = len(items) == d and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in items
    )
    if not ok:
        raise InvalidRequest(f"parameter {name!r} must list one finite number per numeric feature ({d})")
    return tuple(float(x) for x in items)


def _share(spec: JobSpec, name: str) -> float:
    value = p.number_param(spec, name, default=DEFAULTS[name])
    if not 0 < value < 1:
        raise InvalidRequest(f"parameter {name!r} must be in (0, 1)")
    return value


def _positive(spec: JobSpec, name: str, high: float) -> float:
    value = p.number_param(spec, name, default=DEFAULTS.get(name))
    if not 0 < value <= high:
        raise InvalidRequest(f"parameter {name!r} must be in (0, {high:g}]")
    return value


def _kinds(
    spec: JobSpec, fields: Mapping[str, FieldSchema] | None, features: tuple[str, ...]
) -> tuple[bool, ...]:
    """Which features are categorical: from the schemas, or (without them) from ``categories``."""
    if fields is None:
        listed = {c.partition("=")[0] for c in _names(spec, "categories", required=False)}
        return tuple(f in listed for f in features)
    out = []
    for name in features:
        if name in ct.RFM:
            out.append(False)
            continue
        schema = ct.attribute_schema(spec, fields, name)
        out.append(schema.type in p.LABEL_TYPES)
    return tuple(out)


def _check_schema(spec: JobSpec, fields: Mapping[str, FieldSchema], s: Mapping[str, Any]) -> dict[str, Any]:
    """The schema checks of label and features (fail closed) and how a node reads them."""
    own = ct.own_fields(fields)
    key = p.customer_key(own)
    for name in (s["label"], *s["features"]):
        if name in ct.RFM or name == NO_PURCHASE_AFTER:
            continue
        dataset, _ = ct.qualified(name)
        # The customers dataset is one row per customer (One ID merges duplicates; a customer's
        # first row with a value counts): its own fields are per-customer attributes.
        mine = dataset is None or dataset == spec.dataset
        if key is not None and mine and spec.dataset != ct.JOINED:
            raise InvalidRequest(
                f"field {name!r}: this dataset has many rows per customer; name customer fields as "
                "customers.<field> or derived ones as rfm.recency, rfm.frequency, rfm.monetary"
            )
        schema = ct.attribute_schema(spec, fields, name)  # unknown, key and core_sensitive refused
        numeric = schema.type in p.NUMERIC_TYPES | {"date"}
        if name == s["label"] and schema.type not in p.NUMERIC_TYPES:
            raise InvalidRequest(f"the label {name!r} must be a bool or 0/1 number field")
        if not numeric and schema.type not in p.LABEL_TYPES:
            raise InvalidRequest(f"feature {name!r} must be numeric, boolean or categorical")
        if Tier(schema.tier) is Tier.CORE_SENSITIVE:  # attribute_schema refuses it; never rely on one
            raise PolicyViolation(f"field {name!r} is core_sensitive", code="policy.core_sensitive_field")
    out: dict[str, Any] = {"key": key, "join": ct.join_key(fields), "time": None, "amount": None}
    if any(f in ct.RFM for f in s["features"]) or s["label"] == NO_PURCHASE_AFTER:
        if key is None:
            raise InvalidRequest("rfm.* values derive from rows per customer: use a transactions dataset")
        for param in ("time_field", "amount_field"):
            named = spec.params.get(param, DEFAULTS[param])
            if not isinstance(named, str) or p.field_schema(own, named).type not in p.NUMERIC_TYPES | {
                "date"
            }:
                raise InvalidRequest(f"parameter {param!r} must name a numeric or date field")
            out[param.removesuffix("_field")] = named
    return out


def settings(spec: JobSpec, fields: Mapping[str, FieldSchema] | None = None) -> dict[str, Any]:
    """What every round reads from the spec (and, given ``fields``, the schemas); fail closed."""
    p.check_params(spec, _PARAMS)
    if "group_by" in spec.params:
        raise InvalidRequest("churn_model does not group its results")
    label = spec.params.get("label")
    if (
        not isinstance(label, str)
        or not label
        or label in ct.RFM
        or (label.startswith("rfm.") and label != NO_PURCHASE_AFTER)
    ):
        raise InvalidRequest("parameter 'label' is required and must name the 0/1 churn field")
    features = _names(spec, "features", required=True)
    if not 1 <= len(features) <= MAX_FEATURES:
        raise InvalidRequest(f"parameter 'features' must name 1 to {MAX_FEATURES} features")
    if label in features:
        raise InvalidRequest("the label cannot also be a feature")
    categorical = _kinds(spec, fields, features)
    numeric = tuple(f for f, cat in zip(features, categorical, strict=True) if not cat)
    cats = tuple(f for f, cat in zip(features, categorical, strict=True) if cat)
    lower, upper = _floats(spec, "lower", len(numeric)), _floats(spec, "upper", len(numeric))
    if any(lo >= hi for lo, hi in zip(lower, upper, strict=True)):
        raise InvalidRequest("each numeric feature's lower bound must be below its upper bound")
    logs = _names(spec, "log_features", required=False)
    if set(logs) - set(numeric):
        raise InvalidRequest("parameter 'log_features' may only name numeric features")
    log = tuple(f in logs for f in numeric)
    if any(flag and lo < 0 for flag, lo in zip(log, lower, strict=True)):
        raise InvalidRequest("a log1p feature needs a lower bound of at least 0")
    levels: dict[str, list[str]] = {f: [] for f in cats}
    for item in _names(spec, "categories", required=False):
        feature, eq, value = item.partition("=")
        if not eq or not value or feature not in levels:
            raise InvalidRequest(
                f"category {item!r} must be written feature=value for a categorical feature of the job"
            )
        if value == p.OTHER:
            raise InvalidRequest("the category 'other' is reserved for everything not listed")
        levels[feature].append(value)
    if sum(len(v) for v in levels.values()) > MAX_CATEGORIES:
        raise InvalidRequest(f"at most {MAX_CATEGORIES} categories in all")
    optimizer = spec.params.get("optimizer", DEFAULTS["optimizer"])
    if optimizer not in OPTIMIZERS:
        raise InvalidRequest(f"parameter 'optimizer' must be one of {', '.join(OPTIMIZERS)}")
    rounds = p.int_param(spec, "rounds", default=DEFAULTS["rounds"], low=1, high=MAX_TRAIN_ROUNDS)
    prep, ev, clip_share = _share(spec, "prep_share"), _share(spec, "eval_share"), _share(spec, "clip_share")
    if prep + ev >= 1:
        raise InvalidRequest("the preprocessing and evaluation shares leave nothing to train with")
    rho = rho_total(spec)
    per_round = (1 - prep - ev) * rho / rounds
    clip_sd = p.number_param(spec, "clip_sd", default=DEFAULTS["clip_sd"])
    if not 1 <= clip_sd <= 10:
        raise InvalidRequest("parameter 'clip_sd' must be between 1 and 10")
    width = 1 + len(numeric) + len(cats)  # a customer's encoded row has at most this many ±clip_sd entries
    initial = p.number_param(spec, "initial_clip", default=0.5 * math.sqrt(width))
    if not 1e-3 <= initial <= 1e3:
        raise InvalidRequest("parameter 'initial_clip' must be between 0.001 and 1000")
    split_seed = spec.params.get("split_seed", DEFAULTS["split_seed"])
    if not isinstance(split_seed, str) or not split_seed:
        raise InvalidRequest("parameter 'split_seed' must be a non-empty text")
    s: dict[str, Any] = {
        "label": label,
        "features": features,
        "numeric": numeric,
        "categorical": cats,
        "read": tuple(f if f in ct.RFM else ct.read_name(spec.dataset, f) for f in numeric),
        "read_categorical": tuple(ct.read_name(spec.dataset, f) for f in cats),
        "read_label": label if label == NO_PURCHASE_AFTER else ct.read_name(spec.dataset, label),
        "lower": lower,
        "upper": upper,
        "log": log,
        "t_lower": tuple(math.log1p(lo) if f else lo for f, lo in zip(log, lower, strict=True)),
        "t_upper": tuple(math.log1p(hi) if f else hi for f, hi in zip(log, upper, strict=True)),
        "levels": tuple(tuple(levels[f]) for f in cats),
        "rounds": rounds,
        "optimizer": optimizer,
        "server_lr": _positive(spec, "server_lr", 10.0),
        "client_lr": _positive(spec, "client_lr", 100.0),
        "l2": p.number_param(spec, "l2", default=DEFAULTS["l2"]),
        "clip_sd": clip_sd,
        "initial_clip": initial,
        "clip_quantile": _share(spec, "clip_quantile"),
        "clip_rate": _positive(spec, "clip_rate", 2.0),
        "holdout": _share(spec, "holdout"),
        "split_seed": split_seed,
        "score_bins": p.int_param(spec, "score_bins", default=DEFAULTS["score_bins"], low=4, high=400),
        "min_category_count": p.number_param(
            spec, "min_category_count", default=DEFAULTS["min_category_count"]
        ),
        "reference_day": None,
        "budget": {
            "rho_total": rho,
            "prep": prep * rho,
            "eval": ev * rho,
            "per_train_round": per_round,
            "train_rounds": rounds,
            "clip_share": clip_share,
            "prep_parts": dict(PREP_SPLIT) if numeric else {"counts": 1.0},
        },
    }
    if not 0 <= s["l2"] <= 10:
        raise InvalidRequest("parameter 'l2' must be between 0 and 10")
    if any(f in ct.RFM for f in features) or label == NO_PURCHASE_AFTER:
        s["reference_day"] = ct.day_param(spec, "reference_date")
    s["label_end_day"] = None
    if label == NO_PURCHASE_AFTER:
        s["label_end_day"] = ct.day_param(spec, "label_end")
        if s["label_end_day"] <= s["reference_day"]:
            raise InvalidRequest("parameter 'label_end' must be after 'reference_date'")
    elif "label_end" in spec.params:
        raise InvalidRequest("parameter 'label_end' applies to the label rfm.no_purchase_after only")
    if fields is not None:
        s |= _check_schema(spec, fields, s)
    return s


def max_rounds(spec: JobSpec) -> int:
    """Preprocessing, the training rounds, the evaluation."""
    return 2 + p.int_param(spec, "rounds", default=DEFAULTS["rounds"], low=1, high=MAX_TRAIN_ROUNDS)


def kind(s: Mapping[str, Any], round_no: int) -> str:
    if round_no == 1:
        return "prep"
    if 2 <= round_no <= 1 + s["rounds"]:
        return "train"
    if round_no == 2 + s["rounds"]:
        return "eval"
    raise InvalidRequest(f"round {round_no} is outside this job's rounds")


def width(s: Mapping[str, Any], kept: tuple[tuple[str, ...], ...]) -> int:
    """Coefficients of the model: intercept, numeric features, kept categories (``other`` is the base)."""
    return 1 + len(s["numeric"]) + sum(len(k) for k in kept)


def _numbers(value: Any, n: int, lo: float, hi: float) -> tuple[float, ...] | None:
    ok = isinstance(value, list) and len(value) == n
    ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) and lo <= x <= hi for x in value)
    return tuple(float(x) for x in value) if ok else None


MAX_WEIGHT = 1e4  # coefficients outside ±MAX_WEIGHT are refused (a lying coordinator)


def check_public(s: Mapping[str, Any], kind_: str, public: Public) -> dict[str, Any]:
    """The round's public input, checked: the coordinator may lie, so nothing is trusted.

    Privacy never depends on these values (every customer's row is clipped after they are
    applied); the checks keep a node from computing on nonsense.
    """
    if kind_ == "prep":
        return {}
    d = len(s["numeric"])
    mean = _numbers(public.get("mean"), d, -math.inf, math.inf)
    sd = _numbers(public.get("sd"), d, 0.0, math.inf)
    if mean is None or sd is None:
        raise InvalidRequest("the round's public 'mean' and 'sd' must be one number per numeric feature")
    for j in range(d):
        lo, hi = s["t_lower"][j], s["t_upper"][j]
        if not lo <= mean[j] <= hi or not 0 < sd[j] <= hi - lo:
            raise InvalidRequest("the round's public 'mean' and 'sd' must lie inside the features' bounds")
    raw = public.get("kept")
    kept: list[tuple[str, ...]] = []
    if not isinstance(raw, list) or len(raw) != len(s["categorical"]):
        raise InvalidRequest("the round's public 'kept' must list the kept categories of each feature")
    for listed, allowed in zip(raw, s["levels"], strict=True):
        if not isinstance(listed, list) or not set(listed) <= set(allowed) or len(set(listed)) != len(listed):
            raise InvalidRequest("the round's public 'kept' may only hold the job's listed categories")
        kept.append(tuple(str(x) for x in listed))
    out: dict[str, Any] = {"mean": mean, "sd": sd, "kept": tuple(kept)}
    w = _numbers(public.get("w"), width(s, tuple(kept)), -MAX_WEIGHT, MAX_WEIGHT)
    if w is None:
        raise InvalidRequest("the round's public 'w' must be one bounded coefficient per model column")
    out["w"] = w
    if kind_ == "train":
        clip = public.get("clip")
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 1e-6 <= clip <= 1e6:
            raise InvalidRequest("the round's public 'clip' must be a number in [1e-6, 1e6]")
        out["clip"] = float(clip)
    return out
