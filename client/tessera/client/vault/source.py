"""``VaultDataSource``: the node's analyses read the vault through the ``DataSource`` protocol only.

Customers come one entry per node-internal customer (ascending id); transactions and events one
entry per row, with an extra ``customer`` column of opaque int64 customer ids so analyses can
aggregate per customer. The schemas say so (the unit of privacy): transactions and events carry a
``customer_key`` field — the policy's ``customer_key`` of the dataset if it names one, else
``customer`` — which reads as those internal ids, never as the key's values. ``customers`` needs
none (One ID merges duplicates: one row is one customer); when its policy names one anyway, it
reads as the same ids, so CSV and vault nodes under one policy publish the same schema.

Numeric, int and bool fields are float64 (NaN = missing), category and string fields object arrays
of ``str`` (None = missing), dates float64 days since 1970-01-01 UTC (fractional for date-times).
A ``core_sensitive`` field other than the customer key is refused before anything is read:
analyses never see decrypted PII, and this class holds no key that could decrypt it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from tessera.client.datasource import readable_fields, with_customer_key
from tessera.client.vault._model import Attribute, Customer, Event, Transaction
from tessera.core.analyses.params import CUSTOMER_KEY
from tessera.core.errors import PolicyViolation
from tessera.core.policy import Policy
from tessera.core.types import DatasetSchema

SUPPORTED = ("customers", "transactions", "events")
FACT_KEY = "customer"  # the customer-key field of transactions and events when the policy names none
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FACT_COLUMNS: dict[str, dict[str, Any]] = {
    "transactions": {
        "time": Transaction.time,
        "amount": Transaction.amount_e4,
        "channel": Transaction.channel,
        "category": Transaction.category,
    },
    "events": {"time": Event.time, "event_type": Event.event_type},
}
_CUSTOMER_COLUMNS = {
    "region": Customer.region,
    "channel": Customer.channel,
    "signup_date": Customer.signup_date,
    "churned": Customer.churned,
}


def _days(moment: object) -> float:
    if not isinstance(moment, datetime):
        return float("nan")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH).total_seconds() / 86400.0


def _convert(values: list[object], kind: str) -> np.ndarray:
    if kind in ("int", "float", "bool"):
        return np.array([float("nan") if v is None else float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    if kind == "date":
        return np.array([_days(v) for v in values], dtype=np.float64)
    return np.array([None if v is None else str(v) for v in values], dtype=object)


class VaultDataSource:
    """Reads typed columns from the vault for analyses; refuses core-sensitive fields."""

    def __init__(self, engine: sa.Engine, policy: Policy) -> None:
        self._engine = engine
        self._policy = policy

    def schemas(self) -> tuple[DatasetSchema, ...]:
        names = {d.name for d in self._policy.datasets}
        return tuple(self._schema(n) for n in SUPPORTED if n in names)

    def _schema(self, dataset: str) -> DatasetSchema:
        key = self._policy.dataset(dataset).customer_key
        if key is None and dataset != "customers":
            key = FACT_KEY
        return with_customer_key(self._policy.schema(dataset), key)

    def _check(self, dataset: str, fields: Sequence[str]) -> dict[str, str]:
        if dataset not in SUPPORTED or dataset not in {d.name for d in self._policy.datasets}:
            raise PolicyViolation(f"this node serves no dataset {dataset!r}", code="policy.unknown_dataset")
        readable = readable_fields(self._schema(dataset), fields)
        return {name: f.type for name, f in readable.items()}

    def read(self, dataset: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        types = self._check(dataset, fields)
        with self._engine.connect() as conn:
            if dataset == "customers":
                return self._customers(conn, types)
            return self._facts(conn, dataset, types)

    def _customers(self, conn: sa.Connection, types: dict[str, str]) -> dict[str, np.ndarray]:
        ids = np.array(conn.scalars(sa.select(Customer.id).order_by(Customer.id)).all(), dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for name, kind in types.items():
            if kind == CUSTOMER_KEY:
                out[name] = ids.copy()
                continue
            rows = conn.execute(
                sa.select(
                    Attribute.customer_id, Attribute.num_value, Attribute.text_value, Attribute.date_value
                ).where(Attribute.name == name)
            ).all()
            values: list[object] = [None] * len(ids)
            if rows:
                where = np.searchsorted(ids, np.array([r[0] for r in rows], dtype=np.int64))
                for pos, (_, num, text, when) in zip(where.tolist(), rows, strict=True):
                    values[pos] = num if num is not None else text if text is not None else when
            elif name in _CUSTOMER_COLUMNS:
                column = _CUSTOMER_COLUMNS[name]
                values = list(conn.scalars(sa.select(column).order_by(Customer.id)).all())
            out[name] = _convert(values, kind)
        return out

    def _facts(self, conn: sa.Connection, dataset: str, types: dict[str, str]) -> dict[str, np.ndarray]:
        model = Transaction if dataset == "transactions" else Event
        known = _FACT_COLUMNS[dataset]
        wanted = [known[n] for n, kind in types.items() if n in known and kind != CUSTOMER_KEY]
        rows = conn.execute(sa.select(model.customer_id, *wanted).order_by(model.id)).all()
        out = {"customer": np.array([r[0] for r in rows], dtype=np.int64)}
        position = 1
        for name, kind in types.items():
            if kind == CUSTOMER_KEY:
                out[name] = out["customer"].copy()
                continue
            if name not in known:
                out[name] = _convert([None] * len(rows), kind)
                continue
            column = [r[position] for r in rows]
            position += 1
            if name == "amount":
                column = [None if v is None else v / 10_000 for v in column]
            out[name] = _convert(column, "date" if name == "time" else kind)
        return out
