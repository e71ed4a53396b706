"""The one way a node's analyses read data: CSV files classified by the node's policy, or the vault.

The unit of privacy is the customer. A dataset's schema says how rows map to customers: a field of
type ``customer_key`` (``params.CUSTOMER_KEY``) holds, when read, an opaque int64 customer id per
row (-1: the row names no customer), never the key's own values; a dataset without one promises
one row per customer. A CSV dataset makes no such promise by itself, so its policy must name its
``customer_key`` before any DP analysis may read it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Protocol

import numpy as np

from tessera.core.analyses.customer_table import JOINED
from tessera.core.analyses.params import CUSTOMER_KEY
from tessera.core.errors import ConfigError, InvalidRequest, PolicyViolation
from tessera.core.policy import Policy
from tessera.core.types import DatasetSchema, FieldSchema, Tier


class DataSource(Protocol):
    def schemas(self) -> tuple[DatasetSchema, ...]:
        """Names, types and tiers of every dataset's fields — never values or row counts."""
        ...

    def read(self, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Columns of ``dataset``, one entry per row (per customer without a customer key).

        Numeric, int and bool fields come as float64 (NaN = missing); category and string fields
        as object arrays of ``str`` (None = missing); dates as float64 days since 1970-01-01; the
        customer key as int64 opaque ids (-1 = none). A ``core_sensitive`` field other than the
        key is refused (``policy.core_sensitive_field``): analyses never see PII.
        """
        ...


class CsvDataSource:
    """Datasets backed by CSV files. Every column must be classified by the policy (default deny):
    an unclassified column stops the node at start, naming the column and the policy file. A
    dataset is read for analyses only when its policy names its ``customer_key`` column."""

    def __init__(self, files: Mapping[str, Path], policy: Policy) -> None:
        self.files = dict(files)
        self.policy = policy
        self._schemas = tuple(self._schema(name, path) for name, path in sorted(self.files.items()))

    def schemas(self) -> tuple[DatasetSchema, ...]:
        return self._schemas

    def read(self, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        schema = next((d for d in self._schemas if d.name == dataset), None)
        if schema is None:
            raise PolicyViolation(f"this node serves no dataset {dataset!r}", code="policy.unknown_dataset")
        if not any(f.type == CUSTOMER_KEY for f in schema.fields):
            raise PolicyViolation(
                f'dataset "{dataset}" comes from a CSV file whose policy does not say which column '
                "identifies the customer, so what one customer contributes cannot be bounded; set "
                f'"customer_key: <column>" under datasets: {dataset}: in {self._file()} '
                "(rows with the same key are one customer)",
                code="policy.customer_key_required",
            )
        types = readable_fields(schema, fields)
        raw: dict[str, list[str]] = {name: [] for name in fields}
        with self.files[dataset].open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                for name in fields:
                    raw[name].append((row.get(name) or "").strip())
        return {name: _column(values, types[name].type, name) for name, values in raw.items()}

    def _file(self) -> str:
        return self.policy.source or f"the policy file of {self.policy.partner}"

    def _schema(self, dataset: str, path: Path) -> DatasetSchema:
        header = _read_header(path)
        declared = {f.name: f for f in self.policy.schema(dataset).fields}
        # tier_of refuses an unclassified column with the field and the policy file to edit.
        tiers = [self.policy.tier_of(dataset, column) for column in header]
        fields = tuple(
            FieldSchema(name=column, type=declared[column].type, tier=tier)
            for column, tier in zip(header, tiers, strict=True)
        )
        key = self.policy.dataset(dataset).customer_key
        if key is not None and key not in header:
            raise ConfigError(
                f'{path} has no column "{key}", which the policy names as the customer_key of dataset '
                f'"{dataset}"; add the column or name another one in {self._file()}'
            )
        return with_customer_key(DatasetSchema(name=dataset, fields=fields), key)


def _read_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError:
        raise ConfigError(f"data file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    if not header:
        raise ConfigError(f"{path} is empty: a CSV file needs a header line")
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ConfigError(f"{path} has duplicate columns: {', '.join(duplicates)}")
    if any(not h for h in header):
        raise ConfigError(f"{path} has a column without a name")
    return header


_EPOCH = date(1970, 1, 1)
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _column(values: list[str], kind: str, name: str) -> np.ndarray:
    """Typed column; unparsable values are missing (NaN/None), never an error mid-analysis."""
    if kind == CUSTOMER_KEY:
        # Opaque ids in order of first appearance; the key's values never leave this function.
        ids: dict[str, int] = {}
        return np.array([ids.setdefault(v, len(ids)) if v else -1 for v in values], dtype=np.int64)
    if kind in ("int", "float"):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = float(v) if v else np.nan
            except ValueError:
                out[i] = np.nan
        return out
    if kind == "bool":
        return np.array(
            [1.0 if v.lower() in _TRUE else 0.0 if v.lower() in _FALSE else np.nan for v in values]
        )
    if kind == "date":
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = (date.fromisoformat(v[:10]) - _EPOCH).days if v else np.nan
            except ValueError:
                out[i] = np.nan
        return out
    return np.array([v if v else None for v in values], dtype=object)


def with_customer_key(schema: DatasetSchema, key: str | None) -> DatasetSchema:
    """``schema`` with field ``key`` typed ``customer_key`` (appended, core_sensitive, if absent)."""
    if key is None:
        return schema
    fields = [
        FieldSchema(name=f.name, type=CUSTOMER_KEY, tier=f.tier) if f.name == key else f
        for f in schema.fields
    ]
    if not any(f.name == key for f in schema.fields):
        fields.append(FieldSchema(name=key, type=CUSTOMER_KEY, tier=Tier.CORE_SENSITIVE))
    return DatasetSchema(name=schema.name, fields=tuple(fields))


def readable_fields(schema: DatasetSchema, fields: Sequence[str]) -> dict[str, FieldSchema]:
    """The requested fields of ``schema`` an analysis may read; refuses unknown and core_sensitive
    ones (every ``DataSource.read`` calls this before touching data). The customer key is
    readable whatever its tier: sources return it as opaque ids, never as its values."""
    declared = {f.name: f for f in schema.fields}
    for name in fields:
        if name not in declared:
            raise PolicyViolation(
                f"dataset {schema.name!r} has no field {name!r} on this node", code="policy.unknown_field"
            )
        if declared[name].tier is Tier.CORE_SENSITIVE and declared[name].type != CUSTOMER_KEY:
            raise PolicyViolation(
                f"field {name!r} is core_sensitive: it never leaves the node, not even in aggregates",
                code="policy.core_sensitive_field",
            )
    return {name: declared[name] for name in fields}


def read_for_plan(source: DataSource, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """``source.read`` for an analysis plan; a plan that touches no field (a plain count) still
    needs the number of rows, so one non-core column is read for its length only."""
    if fields:
        return source.read(dataset, fields)
    schema = next((d for d in source.schemas() if d.name == dataset), None)
    usable = [f.name for f in schema.fields if f.tier is not Tier.CORE_SENSITIVE] if schema else []
    if not usable:
        raise PolicyViolation(
            f"dataset {dataset!r} has no field that may be counted on this node",
            code="policy.unknown_dataset",
        )
    return source.read(dataset, usable[:1])


def customer_key(source: DataSource, dataset: str) -> str | None:
    """The field that says whose row it is in ``dataset`` (None: the dataset names none)."""
    schema = next((d for d in source.schemas() if d.name == dataset), None)
    if schema is None:
        raise InvalidRequest(f"this node serves no dataset {dataset!r}")
    keys = [f.name for f in schema.fields if f.type == CUSTOMER_KEY]
    return keys[0] if keys else None


def customers_join(source: DataSource, dataset: str) -> str | None:
    """``customers.<key>``: how ``dataset``'s rows reach the customers dataset (None: they do not)."""
    joined = customer_key(source, JOINED) if dataset != JOINED else None
    return None if joined is None else f"{JOINED}.{joined}"
