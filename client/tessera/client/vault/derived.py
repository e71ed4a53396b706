"""Per-customer values a node derives from a released model and keeps at home.

Segments, cluster labels, churn scores, predicted purchases and lifetime values are computed on the
node from public model parameters and the node's own data; they never leave it. They are stored as
typed attributes of the vault's customers (``vault_attribute``), so later jobs can read them like
any other customer field (for example group segment sizes by value band) and the partner can act
on them. A derived field must be classified by the policy like every other (default deny) and may
not be ``core_sensitive``: it is analysis output, not an identifier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tessera.client.vault._model import Attribute, Customer
from tessera.core.errors import InvalidRequest, PolicyViolation
from tessera.core.policy import Policy
from tessera.core.types import Tier

_KINDS = {
    "float": "numeric",
    "int": "numeric",
    "bool": "boolean",
    "category": "categorical",
    "string": "categorical",
}


def store_derived(
    engine: sa.Engine, policy: Policy, *, field: str, values: Mapping[int, float | str | None]
) -> int:
    """Replace ``field`` of the ``customers`` dataset with ``values`` (vault customer id -> value).

    One transaction: every customer's previous value of ``field`` is removed and the new ones are
    written, so a re-run never leaves a mix of two models. ``None`` (and NaN) store nothing.
    Returns how many values were stored. Raises ``PolicyViolation`` for a field the policy does
    not classify or classifies ``core_sensitive``, ``InvalidRequest`` for an unknown customer id
    or a value of the wrong type.
    """
    tier = policy.tier_of("customers", field)  # default deny: names the field and the file
    if tier is Tier.CORE_SENSITIVE:
        raise PolicyViolation(
            f"field {field!r} is core_sensitive in the policy; derived values must be general_sensitive "
            "or non_sensitive",
            code="policy.core_sensitive_field",
        )
    declared = policy.dataset("customers").field(field)
    kind = _KINDS.get(declared.type if declared is not None else "", "")
    if not kind:
        raise InvalidRequest(f"field {field!r} must be declared as float, int, bool, category or string")
    rows = []
    for customer_id, value in values.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        row = Attribute(customer_id=int(customer_id), name=field, kind=kind)
        if kind == "categorical":
            if not isinstance(value, str):
                raise InvalidRequest(f"field {field!r} takes text values")
            row.text_value = value
        else:
            if isinstance(value, str) or not math.isfinite(float(value)):
                raise InvalidRequest(f"field {field!r} takes finite numbers")
            row.num_value = float(value)
        rows.append(row)
    with Session(engine) as session, session.begin():
        ids = {r.customer_id for r in rows}
        known = set(session.scalars(sa.select(Customer.id).where(Customer.id.in_(ids)))) if ids else set()
        if ids - known:
            raise InvalidRequest(f"{len(ids - known)} customer id(s) are not in the vault")
        session.execute(sa.delete(Attribute).where(Attribute.name == field))
        session.add_all(rows)
    return len(rows)


def read_derived(engine: sa.Engine, *, field: str) -> dict[int, float | str]:
    """``field``'s stored values by vault customer id (what ``store_derived`` wrote)."""
    query = sa.select(Attribute.customer_id, Attribute.num_value, Attribute.text_value).where(
        Attribute.name == field
    )
    out: dict[int, float | str] = {}
    with engine.connect() as conn:
        for cid, num, text in conn.execute(query):
            if num is not None:
                out[cid] = num
            elif text is not None:
                out[cid] = text
    return out
