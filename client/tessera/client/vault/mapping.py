"""Mapping files: which source column feeds which policy field, with what type and format.

A mapping is YAML that an operator edits beside the raw data::

    dataset: customers          # customers, transactions or events
    default_region: GB          # phone numbers written without +<country>
    timezone: Europe/London     # for date-times written without an offset
    columns:
      E-Mail:     {field: email}
      joined:     {field: signup_date, format: "%d/%m/%Y"}
      spend_cent: {field: monthly_spend, type: amount, minor_units: 2}
      churn:      {field: churned, on_invalid: missing}

``field`` is a field name of the node's policy for that dataset (its tier comes from there, so an
unclassified field is refused with the policy file to edit); ``type`` defaults to the policy's
type. ``identifier`` marks a column for the blind index (default: by field name ``email``,
``phone``, ``national_id``, ``customer_id``). ``on_invalid: missing`` turns an unparsable value
into a missing one (counted in the quality report) instead of rejecting its batch.

``match`` (customers only) lists One ID's match rules: each rule is a list of fields; two records
are one customer when every field of some rule is equal in both. A one-field rule merges on its
own; a rule of several fields merges only when all of them agree. The default::

    match:
      - [customer_id]       # the partner's own customer id
      - [national_id]
      - [email]
      - [phone, name]       # a household shares a phone: the phone alone never merges

(each rule only when its fields are mapped). An identifier outside every one-field rule (the
phone, by default) still finds customers for ``node lookup``/``erase`` and for transactions, as
long as it names exactly one customer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.core.errors import ConfigError
from tessera.core.policy import Policy

DATASETS = ("customers", "transactions", "events")
VALUE_TYPES = ("string", "category", "int", "float", "bool", "date", "datetime", "amount")
IDENTIFIER_KINDS = ("email", "phone", "national_id", "customer_id")
# The canonical (non-attribute) targets of each dataset; every other customers field is an extra.
CANONICAL = {
    "customers": (
        "customer_id",
        "name",
        "email",
        "phone",
        "national_id",
        "region",
        "channel",
        "signup_date",
        "churned",
    ),
    "transactions": ("transaction_id", "time", "amount", "channel", "category"),
    "events": ("event_id", "time", "event_type"),
}
_CANONICAL_TYPES = {"time": "datetime", "amount": "amount"}
# Kinds that merge on their own by default, in this order; a phone merges only with the name.
ALONE_BY_DEFAULT = ("customer_id", "national_id", "email")
_POLICY_TYPES = {"string", "category", "int", "float", "bool", "date"}


class _ColumnDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str
    type: Literal["string", "category", "int", "float", "bool", "date", "datetime", "amount"] | None = None
    format: str | None = None
    identifier: Literal["email", "phone", "national_id", "customer_id"] | None = None
    minor_units: int = Field(default=0, ge=0, le=6)
    on_invalid: Literal["reject", "missing"] = "reject"


class _MappingDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: Literal["customers", "transactions", "events"]
    default_region: str | None = None
    timezone: str = "UTC"
    columns: dict[str, _ColumnDoc]
    match: list[list[str]] | None = None


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """One source column: its target field, value type and parse options."""

    source: str
    field: str
    type: str
    format: str | None = None
    identifier: str | None = None
    minor_units: int = 0
    on_invalid: str = "reject"


@dataclass(frozen=True, slots=True)
class MatchRule:
    """Records whose ``fields`` are all equal are one customer. ``kind`` is the identifier kind of a
    one-field rule on an identifier column (its blind index is that identifier's), else ``combined``."""

    fields: tuple[str, ...]
    kind: str

    @property
    def label(self) -> str:
        return " + ".join(self.fields)


@dataclass(frozen=True, slots=True)
class Mapping:
    dataset: str
    columns: tuple[ColumnMap, ...]
    default_region: str | None = None
    timezone: str = "UTC"
    match: tuple[tuple[str, ...], ...] | None = None  # None: the default rules

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"a mapping's dataset must be one of {', '.join(DATASETS)}")
        if self.default_region is not None and self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                "the mapping's default_region must be a two-letter region code such as GB or CN"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                "the mapping's timezone is not a known IANA zone such as UTC or Europe/London"
            ) from None
        targets = [c.field for c in self.columns]
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            raise ConfigError(f"the mapping feeds field(s) {', '.join(twice)} from more than one column")
        for col in self.columns:
            if col.type not in VALUE_TYPES:
                raise ConfigError(
                    f"column {col.source!r} has an unknown type; use one of {', '.join(VALUE_TYPES)}"
                )
        if self.match is not None:
            if self.dataset != "customers":
                raise ConfigError("match rules belong in a customers mapping")
            for rule in self.match:
                unknown = [f for f in rule if f not in targets]
                if not rule or unknown or len(set(rule)) != len(rule):
                    raise ConfigError(
                        f"match rule {list(rule)} must name distinct fields that the mapping feeds"
                        + (f" ({', '.join(unknown)} is not)" if unknown else "")
                    )
        if self.dataset == "customers" and not self.rules():
            raise ConfigError(
                "no One ID match rule applies: map customer_id, national_id or email, or phone "
                "together with name, or write match rules in the mapping"
            )
        if self.dataset != "customers" and not any(c.identifier for c in self.columns):
            raise ConfigError(
                f"a {self.dataset} mapping needs a column that names the customer "
                "(field customer_id, email, phone or national_id)"
            )

    def rules(self) -> tuple[MatchRule, ...]:
        """The match rules in force (customers only): the mapping's, or the default ones."""
        if self.dataset != "customers":
            return ()
        kinds = {c.field: c.identifier for c in self.columns if c.identifier}
        if self.match is not None:
            fields_of = self.match
        else:
            by_kind = {kind: f for f, kind in kinds.items()}
            picked: list[tuple[str, ...]] = [(by_kind[k],) for k in ALONE_BY_DEFAULT if k in by_kind]
            if "phone" in by_kind and any(c.field == "name" for c in self.columns):
                picked.append((by_kind["phone"], "name"))
            fields_of = tuple(picked)
        return tuple(
            MatchRule(rule, kinds[rule[0]] if len(rule) == 1 and rule[0] in kinds else "combined")
            for rule in fields_of
        )

    def digest(self) -> str:
        doc = [self.dataset, self.default_region, self.timezone, [list(_astuple(c)) for c in self.columns]]
        if self.match is not None:  # absent from older digests: a mapping without rules keeps its runs
            doc.append([list(r) for r in self.match])
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(c.source for c in self.columns)


def _astuple(c: ColumnMap) -> tuple[object, ...]:
    return (c.source, c.field, c.type, c.format, c.identifier, c.minor_units, c.on_invalid)


def _default_identifier(field: str) -> str | None:
    return field if field in IDENTIFIER_KINDS else None


def _resolve_type(policy: Policy, dataset: str, field: str, explicit: str | None) -> str:
    if explicit is not None:
        return explicit
    if field in _CANONICAL_TYPES:
        return _CANONICAL_TYPES[field]
    declared = policy.dataset(dataset).field(field)
    kind = declared.type if declared is not None else "string"
    return kind if kind in _POLICY_TYPES else "string"


def check_against_policy(mapping: Mapping, policy: Policy) -> None:
    """Every target field must be classified by ``policy`` (default deny: names the file to edit)."""
    for col in mapping.columns:
        policy.tier_of(mapping.dataset, col.field)


def mapping_for_columns(
    policy: Policy, dataset: str, columns: Sequence[str], *, default_region: str | None = None
) -> Mapping:
    """The identity mapping: each column feeds the policy field of the same name, policy types.

    Serves raw files whose header is exactly the policy's field names (the demo's partner CSVs).
    """
    cols = tuple(
        ColumnMap(
            source=name,
            field=name,
            type=_resolve_type(policy, dataset, name, None),
            identifier=_default_identifier(name),
        )
        for name in columns
    )
    mapping = Mapping(dataset=dataset, columns=cols, default_region=default_region)
    check_against_policy(mapping, policy)
    return mapping


def load_mapping(path: Path, policy: Policy) -> Mapping:
    """Read and check a mapping file; one-sentence ``ConfigError`` naming the file on any problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"mapping file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"mapping file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" near line {line + 1}" if line is not None else ""
        raise ConfigError(f"mapping file {path} is not valid YAML{where}") from None
    try:
        doc = _MappingDoc.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise ConfigError(f"mapping file {path}: {where}: {first['msg']}") from None
    cols = tuple(
        ColumnMap(
            source=source,
            field=spec.field,
            type=_resolve_type(policy, doc.dataset, spec.field, spec.type),
            format=spec.format,
            identifier=spec.identifier or _default_identifier(spec.field),
            minor_units=spec.minor_units,
            on_invalid=spec.on_invalid,
        )
        for source, spec in doc.columns.items()
    )
    match = tuple(tuple(rule) for rule in doc.match) if doc.match is not None else None
    mapping = Mapping(doc.dataset, cols, doc.default_region, doc.timezone, match)
    check_against_policy(mapping, policy)
    return mapping
