"""The dataset-level ``customer_key``: which field says whose row it is (the unit of privacy)."""

from __future__ import annotations

import pytest
from test_policy_base import VALID, line_of, policy, variant

from tessera.core.policy import Direction, PolicyFileError, diff_policies, parse_policy

_KEYED = ("  customers:\n    fields:", "  customers:\n    customer_key: customer_id\n    fields:")


def test_the_key_is_read_and_hashed_only_when_set() -> None:
    plain, keyed = policy(), policy(_KEYED)
    assert plain.dataset("customers").customer_key is None
    assert keyed.dataset("customers").customer_key == "customer_id"
    # Policies written before the key existed keep their hash; naming a key changes it.
    assert '"customer_key"' not in plain.canonical_json()
    assert plain.policy_hash != keyed.policy_hash


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("custid", '"customer_key" of dataset "customers" names "custid", which is not one of its fields; '
         'did you mean "customer_id"?'),
        ("zzz", "name the field that identifies the customer of each row"),
        ("5", '"customer_key" of dataset "customers" must be text (got the number 5)'),
        ("true", "must be text (got the yes/no value true)"),
        ("[customer_id]", "must be text (got a list)"),
    ],
)  # fmt: skip
def test_wrong_keys_are_refused_with_file_and_line(value: str, fragment: str) -> None:
    text = variant(("  customers:\n    fields:", f"  customers:\n    customer_key: {value}\n    fields:"))
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, source="policies/x.yaml")
    message = str(caught.value)
    assert fragment in message
    assert message.startswith(f"policies/x.yaml, line {line_of(text, 'customer_key')}:")


def test_diff_reports_the_key() -> None:
    changes = diff_policies(policy(), policy(_KEYED)).changes
    assert [(c.direction, c.message) for c in changes] == [
        (Direction.LOOSER, "customer key of dataset customers changed from none to customer_id: looser")
    ]
    back = diff_policies(policy(_KEYED), policy()).changes
    assert [c.direction for c in back] == [Direction.STRICTER]


def test_the_valid_base_has_no_key() -> None:
    assert "customer_key" not in VALID
