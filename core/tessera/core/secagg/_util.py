"""Small helpers shared by the secure-aggregation modules (internal)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

# A source of random bytes: ``os.urandom`` in production; tests pass a seeded source such as
# ``numpy.random.default_rng(7).bytes`` or ``random.Random(7).randbytes``.
RandomBytes = Callable[[int], bytes]


def random_source(rng: RandomBytes | None) -> RandomBytes:
    """The injected source, or the operating system's CSPRNG when none is given."""
    return os.urandom if rng is None else rng


def lp(data: bytes) -> bytes:
    """Length-prefix ``data`` (u32 big-endian) so concatenations stay unambiguous."""
    return struct.pack(">I", len(data)) + data


def lp_str(text: str) -> bytes:
    return lp(text.encode("utf-8"))
