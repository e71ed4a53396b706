"""The analyses Tessera knows, by name."""

from __future__ import annotations

from tessera.core.analyses import inventory
from tessera.core.analyses.base import AnalysisInfo
from tessera.core.errors import InvalidRequest

ANALYSES: dict[str, AnalysisInfo] = {inventory.INFO.name: inventory.INFO}


def get_analysis(name: str) -> AnalysisInfo:
    try:
        return ANALYSES[name]
    except KeyError:
        known = ", ".join(sorted(ANALYSES))
        raise InvalidRequest(f"unknown analysis {name!r}; this coordinator runs: {known}") from None
