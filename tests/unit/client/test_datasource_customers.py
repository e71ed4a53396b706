"""Data sources and the unit of privacy: a CSV dataset is read for analyses only when its policy
names its customer key, the key reads as opaque ids (never its values), and a customer with many
rows moves an analysis by one customer's bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tessera.client.datasource import CsvDataSource, read_for_plan
from tessera.core.analyses import contribution, count, sums
from tessera.core.errors import ConfigError, PolicyViolation
from tessera.core.policy import Policy, parse_policy
from tessera.core.types import JobSpec, ParamValue, Tier

POLICY = """
version: 1
policy_id: csv-v1
partner: bank
datasets:
  customers:
    fields:
      customer_id: {tier: core_sensitive, type: string}
      region:      {tier: non_sensitive, type: category}
  transactions:
    customer_key: customer_id
    fields:
      customer_id: {tier: core_sensitive, type: string}
      amount:      {tier: general_sensitive, type: float}
      channel:     {tier: non_sensitive, type: category}
      email:       {tier: core_sensitive, type: string}
allowed_analyses: [count, sum]
allowed_purposes: [research]
privacy: {epsilon_per_job: 0.5, epsilon_per_period: 4.0, period_days: 90, delta: 1.0e-7}
min_cohort_size: 25
min_participants: 3
allowed_partners: [telco, retailer]
retention_days: 30
"""


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY, source="policies/bank.yaml")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,region\nC1,north\nC2,south\n")
    rows = ["C1,10,web,a@x.org"] * 100 + ["C2,5,app,b@x.org", ",7,web,", "C3,1,store,c@x.org"]
    transactions = tmp_path / "transactions.csv"
    transactions.write_text("customer_id,amount,channel,email\n" + "\n".join(rows) + "\n")
    return {"customers": customers, "transactions": transactions}


def _spec(analysis: str, dataset: str, **params: ParamValue) -> JobSpec:
    return JobSpec(analysis=analysis, dataset=dataset, params=params, epsilon=0.5, delta=1e-7)


def test_a_csv_dataset_without_a_customer_key_is_refused_for_analyses(
    policy: Policy, files: dict[str, Path]
) -> None:
    source = CsvDataSource(files, policy)
    # Inventory still lists it (names, types, tiers only) ...
    assert [f.name for f in next(d for d in source.schemas() if d.name == "customers").fields] == [
        "customer_id",
        "region",
    ]
    # ... but no analysis reads it: the sentence names the dataset, the key and the file to edit.
    with pytest.raises(PolicyViolation) as caught:
        read_for_plan(source, "customers", ("region",))
    assert caught.value.code == "policy.customer_key_required"
    assert 'dataset "customers"' in caught.value.message
    assert '"customer_key: <column>" under datasets: customers: in policies/bank.yaml' in caught.value.message


def test_the_key_is_typed_in_the_schema_and_reads_as_opaque_ids(
    policy: Policy, files: dict[str, Path]
) -> None:
    source = CsvDataSource(files, policy)
    schema = {f.name: f for f in next(d for d in source.schemas() if d.name == "transactions").fields}
    assert (schema["customer_id"].type, schema["customer_id"].tier) == ("customer_key", Tier.CORE_SENSITIVE)
    ids = source.read("transactions", ["customer_id"])["customer_id"]
    assert ids.dtype == np.int64 and ids.tolist() == [0] * 100 + [1, -1, 2]  # "" names nobody
    # Any other core_sensitive column stays unreadable.
    with pytest.raises(PolicyViolation) as caught:
        source.read("transactions", ["email"])
    assert caught.value.code == "policy.core_sensitive_field"


def test_a_customer_with_100_transactions_moves_a_count_by_one(
    policy: Policy, files: dict[str, Path]
) -> None:
    source = CsvDataSource(files, policy)
    fields = {f.name: f for f in next(d for d in source.schemas() if d.name == "transactions").fields}
    plan = count.plan(_spec("count", "transactions"), fields, survivors_t=2, n_nodes=3)
    data = read_for_plan(source, "transactions", plan.fields)
    assert count.local_vector(plan, data, rng=np.random.default_rng(0)).tolist() == [3]
    assert contribution.customers_in(plan, data) == 3
    spend = sums.plan(
        _spec("sum", "transactions", field="amount", lower=0.0, upper=50.0), fields, survivors_t=2, n_nodes=3
    )
    truth = sums.exact(spend, read_for_plan(source, "transactions", spend.fields))
    assert truth[1] + 25.0 * truth[0] == pytest.approx(50 + 5 + 1)  # C1's 1000 clipped to 50


def test_a_key_column_missing_from_the_file_stops_the_node(
    policy: Policy, files: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("amount,channel\n1,web\n")
    with pytest.raises(ConfigError, match='no column "customer_id"'):
        CsvDataSource({**files, "transactions": bad}, policy)
