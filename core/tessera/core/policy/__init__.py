"""Node policies (DESIGN §5): the YAML files compliance officers edit, checked and enforced.

- ``load_policy(path) -> Policy`` / ``parse_policy(text, source=...)``: validated, immutable, hashed
- ``lint_policy(path) -> LintReport``: errors plus warnings worth a second look
- ``diff_policies(old, new) -> PolicyDiff``: each change judged looser / stricter / neutral
- ``check_job(policy, spec, node_name=..., participants=...)``: the node's veto, fail closed
"""

from __future__ import annotations

from tessera.core.policy._checks import looks_like_pii
from tessera.core.policy._problems import PolicyFileError, Problem, Severity
from tessera.core.policy._schema import FIELD_TYPES, KNOWN_ANALYSES, NON_DP_ANALYSES, SCHEMA_VERSION
from tessera.core.policy.diff import Direction, PolicyChange, PolicyDiff, diff_policies
from tessera.core.policy.enforce import check_job
from tessera.core.policy.lint import LintReport, lint_policy
from tessera.core.policy.loader import load_policy, parse_policy
from tessera.core.policy.model import DatasetPolicy, FieldPolicy, Policy, PrivacyLimits

__all__ = [
    "FIELD_TYPES",
    "KNOWN_ANALYSES",
    "NON_DP_ANALYSES",
    "SCHEMA_VERSION",
    "DatasetPolicy",
    "Direction",
    "FieldPolicy",
    "LintReport",
    "Policy",
    "PolicyChange",
    "PolicyDiff",
    "PolicyFileError",
    "PrivacyLimits",
    "Problem",
    "Severity",
    "check_job",
    "diff_policies",
    "lint_policy",
    "load_policy",
    "looks_like_pii",
    "parse_policy",
]
