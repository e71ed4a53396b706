"""Frames of the overlap protocol: lists of group elements cut into parts that fit a gRPC message.

A list of a million elements is 32 MB; gRPC messages are capped at 64 MiB and large ones stall a
stream, so every list travels in parts of at most ``PART_ELEMENTS`` elements (4 MiB). One frame:

    magic "OVL1" | kind u8 | pair u16 | part u32 | parts u32 | expect u16 | public 32 B | body

``kind``: BLINDED (a party's list, stage 1), REBLINDED (a party's list raised to its scalar,
stage 2), REFUSED (the party refuses this pair; the body is one plain sentence, never data).
``pair`` indexes the job's list of pairs; ``public`` is the sender's ``g^a`` for that pair (the
counterpart builds its matched dummies from it); ``expect`` is, in a frame the coordinator
relays, how many pairs the receiving node will get lists for in this stage (0 elsewhere).
Nothing in a frame is secret from the coordinator: every element is blinded by a scalar it never
sees.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from tessera.core.errors import InvalidRequest
from tessera.core.psi.group import ELEMENT_BYTES

MAGIC = b"OVL1"
PART_ELEMENTS = 1 << 17  # 131,072 elements: 4 MiB of body per message
_HEADER = struct.Struct(">4sBHIIH32s")
HEADER_BYTES = _HEADER.size
NO_PUBLIC = bytes(ELEMENT_BYTES)


class FrameKind(enum.IntEnum):
    BLINDED = 1
    REBLINDED = 2
    REFUSED = 3


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    pair: int
    part: int
    parts: int
    body: bytes
    public: bytes = NO_PUBLIC
    expect: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.part < self.parts:
            raise InvalidRequest("an overlap frame's part number is outside its part count")
        if self.kind is not FrameKind.REFUSED and len(self.body) % ELEMENT_BYTES:
            raise InvalidRequest("an overlap frame's body is not a whole number of group elements")
        if len(self.public) != ELEMENT_BYTES:
            raise InvalidRequest("an overlap frame's public element is not 32 bytes")

    @property
    def count(self) -> int:
        return 0 if self.kind is FrameKind.REFUSED else len(self.body) // ELEMENT_BYTES

    def encode(self) -> bytes:
        head = _HEADER.pack(MAGIC, self.kind, self.pair, self.part, self.parts, self.expect, self.public)
        return head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        if len(data) < HEADER_BYTES:
            raise InvalidRequest("an overlap frame is shorter than its header")
        magic, kind, pair, part, parts, expect, public = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise InvalidRequest("the message is not an overlap frame")
        try:
            frame_kind = FrameKind(kind)
        except ValueError:
            raise InvalidRequest("an overlap frame has an unknown kind") from None
        return cls(frame_kind, pair, part, parts, bytes(data[HEADER_BYTES:]), public, expect)


def split(
    kind: FrameKind,
    pair: int,
    elements: bytes,
    *,
    public: bytes,
    expect: int = 0,
    part_elements: int | None = None,
) -> Iterator[Frame]:
    """``elements`` as frames of at most ``part_elements`` (default ``PART_ELEMENTS``) elements
    each (at least one frame)."""
    step = (part_elements or PART_ELEMENTS) * ELEMENT_BYTES
    parts = max(1, -(-len(elements) // step))
    for i in range(parts):
        yield Frame(kind, pair, i, parts, elements[i * step : (i + 1) * step], public, expect)


def refusal(pair: int, reason: str) -> Frame:
    return Frame(FrameKind.REFUSED, pair, 0, 1, reason.encode("utf-8")[:500])


class Assembler:
    """Collects the parts of each pair's list; tells when a pair (or all expected) is whole."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[int, bytes]] = {}
        self._total: dict[int, int] = {}
        self.public: dict[int, bytes] = {}
        self.refused: dict[int, str] = {}

    def add(self, frame: Frame) -> None:
        if frame.kind is FrameKind.REFUSED:
            self.refused[frame.pair] = frame.body.decode("utf-8", errors="replace")
            return
        total = self._total.setdefault(frame.pair, frame.parts)
        if total != frame.parts or self.public.setdefault(frame.pair, frame.public) != frame.public:
            raise InvalidRequest("the parts of one overlap list disagree on their count or public element")
        self._parts.setdefault(frame.pair, {})[frame.part] = frame.body

    def whole(self, pair: int) -> bool:
        if pair in self.refused:
            return True
        total = self._total.get(pair)
        return total is not None and len(self._parts.get(pair, {})) == total

    def pairs(self) -> set[int]:
        return set(self._total) | set(self.refused)

    def elements(self, pair: int) -> bytes:
        if not self.whole(pair) or pair in self.refused:
            raise InvalidRequest("an overlap list is not complete")
        parts = self._parts[pair]
        return b"".join(parts[i] for i in range(self._total[pair]))

    def drop(self, pair: int) -> None:
        self._parts.pop(pair, None)
