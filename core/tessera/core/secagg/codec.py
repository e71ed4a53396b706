"""Compact binary codec for the secure-aggregation messages (``struct``, big-endian framing).

Frame: ``version u8 | kind u8 | stage u8 | job_id str | epoch u32 | round u32 | body``, where ``str`` is
``u16 length + UTF-8``, ``blob`` is ``u32 length + bytes`` and lists are ``u32 count + items``.
Vectors are ``word bytes u8 (4 or 8) | count u32 | little-endian words``. Decoding is strict:
unknown version or kind, a stage that does not belong to the kind, overlong fields and trailing
bytes are refused with :class:`InvalidRequest`; the text never quotes the message.
"""

from __future__ import annotations

import struct

import numpy as np

from tessera.core.errors import InvalidRequest
from tessera.core.secagg import messages as m
from tessera.core.secagg.keys import SignedKeys
from tessera.core.types import Stage

VERSION = 2
_MAX_TEXT = 1024
_MAX_ITEMS = 1 << 20
_KINDS: dict[type, tuple[int, Stage]] = {
    m.AdvertiseKeys: (1, Stage.ADVERTISE_KEYS),
    m.KeyRoster: (2, Stage.SHARE_KEYS),
    m.ShareKeys: (3, Stage.SHARE_KEYS),
    m.ForwardedShares: (4, Stage.MASKED_INPUT),
    m.MaskedInput: (5, Stage.MASKED_INPUT),
    m.UnmaskRequest: (6, Stage.UNMASK),
    m.UnmaskResponse: (7, Stage.UNMASK),
    m.ConsistencyRequest: (8, Stage.CONSISTENCY_CHECK),
    m.ConsistencySignature: (9, Stage.CONSISTENCY_CHECK),
}
_STAGE_CODES = {stage: i + 1 for i, stage in enumerate(m.PROTOCOL_STAGES)}


class MalformedMessage(InvalidRequest):
    code = "secagg.malformed"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > _MAX_TEXT:
        raise InvalidRequest("an identifier in a secure-aggregation message is too long")
    return struct.pack(">H", len(raw)) + raw


def _blob(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _pairs(items: tuple[tuple[str, bytes], ...]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(_text(a) + _blob(b) for a, b in items)


def _texts(items: tuple[str, ...]) -> bytes:
    return struct.pack(">I", len(items)) + b"".join(_text(a) for a in items)


def _signed(keys: SignedKeys) -> bytes:
    return _text(keys.node_id) + _blob(keys.mask_public) + _blob(keys.share_public) + _blob(keys.signature)


def _vector(vector: np.ndarray) -> bytes:
    if vector.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)) or vector.ndim != 1:
        raise InvalidRequest("a masked vector must be a 1-D uint32 or uint64 array")
    little = vector.astype(vector.dtype.newbyteorder("<"), copy=False)
    return struct.pack(">BI", vector.dtype.itemsize, vector.shape[0]) + little.tobytes()


def encode(message: m.Message) -> bytes:
    """The wire bytes of ``message``."""
    kind, stage = _KINDS[type(message)]
    if message.binding.stage != stage:
        raise InvalidRequest("a secure-aggregation message carries the wrong stage for its kind")
    head = struct.pack(">BBB", VERSION, kind, _STAGE_CODES[stage]) + _text(message.binding.job_id)
    head += struct.pack(">II", message.binding.epoch, message.binding.round_no)
    match message:
        case m.AdvertiseKeys(keys=keys):
            body = _signed(keys)
        case m.KeyRoster(advertisements=ads):
            body = struct.pack(">I", len(ads)) + b"".join(_signed(a) for a in ads)
        case m.ShareKeys(node_id=node, ciphertexts=cts):
            body = _text(node) + _pairs(cts)
        case m.ForwardedShares(node_id=node, active=active, ciphertexts=cts):
            body = _text(node) + _texts(active) + _pairs(cts)
        case m.MaskedInput(node_id=node, vector=vector):
            body = _text(node) + _vector(vector)
        case m.ConsistencyRequest(survivors=survivors):
            body = _texts(survivors)
        case m.ConsistencySignature(node_id=node, signature=signature):
            body = _text(node) + _blob(signature)
        case m.UnmaskRequest(survivors=survivors, signatures=signatures, next_round=next_round):
            body = _texts(survivors) + _pairs(signatures) + struct.pack(">B", next_round)
        case m.UnmaskResponse(node_id=node, seed_shares=seeds, key_shares=keys_, next_shares=nxt):
            body = _text(node) + _pairs(seeds) + _pairs(keys_) + _pairs(nxt)
    return head + body


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedMessage("a secure-aggregation message is truncated")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def text(self) -> str:
        (n,) = self.unpack(">H")
        if n > _MAX_TEXT:
            raise MalformedMessage("an identifier in a secure-aggregation message is too long")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage("an identifier in a secure-aggregation message is not UTF-8") from None

    def blob(self) -> bytes:
        (n,) = self.unpack(">I")
        return self.take(n)

    def count(self) -> range:
        (count,) = self.unpack(">I")
        if count > _MAX_ITEMS:
            raise MalformedMessage("a secure-aggregation message lists too many items")
        return range(count)

    def pairs(self) -> tuple[tuple[str, bytes], ...]:
        return tuple((self.text(), self.blob()) for _ in self.count())

    def texts(self) -> tuple[str, ...]:
        return tuple(self.text() for _ in self.count())

    def signed(self) -> SignedKeys:
        return SignedKeys(self.text(), self.blob(), self.blob(), self.blob())

    def vector(self) -> np.ndarray:
        width, count = self.unpack(">BI")
        if width not in (4, 8):
            raise MalformedMessage("a masked vector has an unknown word size")
        raw = self.take(width * count)
        dtype = np.dtype(f"<u{width}")
        vector = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        vector.setflags(write=False)
        return vector


def decode(data: bytes) -> m.Message:
    """Parse wire bytes; raises :class:`InvalidRequest` (code ``secagg.malformed``) on any defect."""
    r = _Reader(data)
    version, kind, stage_code = r.unpack(">BBB")
    if version != VERSION:
        raise MalformedMessage("a secure-aggregation message has an unsupported version")
    by_kind = {k: (cls, stage) for cls, (k, stage) in _KINDS.items()}
    if kind not in by_kind or _STAGE_CODES[by_kind[kind][1]] != stage_code:
        raise MalformedMessage("a secure-aggregation message has an unknown kind or stage")
    cls, stage = by_kind[kind]
    job_id = r.text()
    epoch, round_no = r.unpack(">II")
    binding = m.Binding(job_id, epoch, round_no, stage)
    try:
        message: m.Message
        if cls is m.AdvertiseKeys:
            message = m.AdvertiseKeys(binding, r.signed())
        elif cls is m.KeyRoster:
            message = m.KeyRoster(binding, tuple(r.signed() for _ in r.count()))
        elif cls is m.ShareKeys:
            message = m.ShareKeys(binding, r.text(), r.pairs())
        elif cls is m.ForwardedShares:
            message = m.ForwardedShares(binding, r.text(), r.texts(), r.pairs())
        elif cls is m.MaskedInput:
            message = m.MaskedInput(binding, r.text(), r.vector())
        elif cls is m.ConsistencyRequest:
            message = m.ConsistencyRequest(binding, r.texts())
        elif cls is m.ConsistencySignature:
            message = m.ConsistencySignature(binding, r.text(), r.blob())
        elif cls is m.UnmaskRequest:
            survivors, signatures = r.texts(), r.pairs()
            (flag,) = r.unpack(">B")
            if flag not in (0, 1):
                raise MalformedMessage("a secure-aggregation message has a bad flag")
            message = m.UnmaskRequest(binding, survivors, signatures, bool(flag))
        else:
            message = m.UnmaskResponse(binding, r.text(), r.pairs(), r.pairs(), r.pairs())
    except InvalidRequest:
        raise
    except Exception:
        raise MalformedMessage("a secure-aggregation message is malformed") from None
    if r.pos != len(r.data):
        raise MalformedMessage("a secure-aggregation message has trailing bytes")
    return message
