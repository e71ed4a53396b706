"""The README's mapping file example loads as written against the example bank policy (it once named
a match rule over a field the mapped file does not have, which the loader rightly refuses)."""

from __future__ import annotations

import re
from pathlib import Path

from tessera.client.vault.mapping import load_mapping
from tessera.core.policy import load_policy

ROOT = Path(__file__).resolve().parents[4]


def test_the_readme_mapping_example_loads(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Mapping files", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    path = tmp_path / "mapping.yaml"
    path.write_text(block.group(1), encoding="utf-8")
    mapping = load_mapping(path, load_policy(ROOT / "policies" / "bank.yaml"))
    assert mapping.dataset == "customers" and mapping.default_region == "GB"
    assert [r.fields for r in mapping.rules()] == [("customer_id",), ("email",), ("phone", "name")]
