"""The one way a node's analyses read data. CSV files classified by the node's policy for now; the
vault will be the main implementation."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from tessera.core.errors import ConfigError
from tessera.core.policy import Policy
from tessera.core.types import DatasetSchema, FieldSchema


class DataSource(Protocol):
    def schemas(self) -> tuple[DatasetSchema, ...]:
        """Names, types and tiers of every dataset's fields — never values or row counts."""
        ...


class CsvDataSource:
    """Datasets backed by CSV files. Every column must be classified by the policy (default deny):
    an unclassified column stops the node at start, naming the column and the policy file."""

    def __init__(self, files: Mapping[str, Path], policy: Policy) -> None:
        self.files = dict(files)
        self.policy = policy
        self._schemas = tuple(self._schema(name, path) for name, path in sorted(self.files.items()))

    def schemas(self) -> tuple[DatasetSchema, ...]:
        return self._schemas

    def _schema(self, dataset: str, path: Path) -> DatasetSchema:
        header = _read_header(path)
        declared = {f.name: f for f in self.policy.schema(dataset).fields}
        # tier_of refuses an unclassified column with the field and the policy file to edit.
        tiers = [self.policy.tier_of(dataset, column) for column in header]
        fields = tuple(
            FieldSchema(name=column, type=declared[column].type, tier=tier)
            for column, tier in zip(header, tiers, strict=True)
        )
        return DatasetSchema(name=dataset, fields=fields)


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
