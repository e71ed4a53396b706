"""A hand-driven epoch for the protocol tests: real clients, a real server, seeded randomness."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from secagg_helpers import Epoch


@pytest.fixture
def make_epoch() -> Callable[..., Epoch]:
    return Epoch
