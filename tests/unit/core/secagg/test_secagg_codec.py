"""Binary codec: round trips and strict refusal of malformed frames."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.core.errors import InvalidRequest
from tessera.core.secagg import codec
from tessera.core.secagg import messages as m
from tessera.core.secagg.keys import SignedKeys
from tessera.core.types import Stage


def _b(stage: Stage) -> m.Binding:
    return m.Binding("job-7", 3, 12, stage)


KEYS = SignedKeys("bänk", b"\x01" * 32, b"\x02" * 32, b"\x30signature")
MESSAGES: list[m.Message] = [
    m.AdvertiseKeys(_b(Stage.ADVERTISE_KEYS), KEYS),
    m.KeyRoster(_b(Stage.SHARE_KEYS), (KEYS, SignedKeys("telco", b"\x03" * 32, b"\x04" * 32, b"s"))),
    m.ShareKeys(_b(Stage.SHARE_KEYS), "bank", (("telco", b"ct1"), ("shop", b""))),
    m.ForwardedShares(_b(Stage.MASKED_INPUT), "bank", ("bank", "telco"), (("telco", b"ct"),)),
    m.ConsistencyRequest(_b(Stage.CONSISTENCY_CHECK), ("bank", "shop", "telco")),
    m.ConsistencySignature(_b(Stage.CONSISTENCY_CHECK), "shop", b"\x30der-signature"),
    m.UnmaskRequest(_b(Stage.UNMASK), ("bank", "shop", "telco")),
    m.UnmaskRequest(_b(Stage.UNMASK), ("bank", "shop"), (("bank", b"sig1"), ("shop", b"sig2")), True),
    m.UnmaskResponse(_b(Stage.UNMASK), "bank", (("bank", b"s1"),), (("telco", b"k1"),)),
    m.UnmaskResponse(_b(Stage.UNMASK), "bank", (), (), (("shop", b"next"), ("telco", b"n2"))),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda x: type(x).__name__)
def test_round_trip(message: m.Message) -> None:
    assert codec.decode(codec.encode(message)) == message


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_masked_input_round_trip(dtype: type) -> None:
    vector: np.ndarray = np.array([0, 1, np.iinfo(dtype).max], dtype=dtype)
    decoded = codec.decode(codec.encode(m.MaskedInput(_b(Stage.MASKED_INPUT), "bank", vector)))
    assert isinstance(decoded, m.MaskedInput)
    assert decoded.vector.dtype == dtype and np.array_equal(decoded.vector, vector)
    assert not decoded.vector.flags.writeable


def test_frame_carries_version_and_binding() -> None:
    raw = codec.encode(MESSAGES[0])
    assert raw[0] == codec.VERSION
    assert b"job-7" in raw
    decoded = codec.decode(raw)
    assert (decoded.binding.epoch, decoded.binding.round_no) == (3, 12)


def test_bad_next_round_flag_is_refused() -> None:
    raw = codec.encode(m.UnmaskRequest(_b(Stage.UNMASK), ("bank",), (), True))
    with pytest.raises(InvalidRequest):
        codec.decode(raw[:-1] + b"\x02")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: b"\x01" + raw[1:],  # an older version
        lambda raw: raw[:1] + b"\x63" + raw[2:],  # unknown kind
        lambda raw: raw[:2] + b"\x04" + raw[3:],  # stage that does not belong to the kind
        lambda raw: raw[:-1],  # truncated
        lambda raw: raw + b"\x00",  # trailing bytes
        lambda raw: b"",
    ],
)
def test_malformed_frames_are_refused(mutate: object) -> None:
    raw = codec.encode(MESSAGES[2])
    with pytest.raises(InvalidRequest):
        codec.decode(mutate(raw))  # type: ignore[operator]


def test_bad_utf8_and_bad_word_size_are_refused() -> None:
    raw = codec.encode(m.ShareKeys(_b(Stage.SHARE_KEYS), "ab", ()))
    with pytest.raises(InvalidRequest):
        codec.decode(raw.replace(b"\x00\x02ab", b"\x00\x02\xff\xfe"))
    masked = codec.encode(m.MaskedInput(_b(Stage.MASKED_INPUT), "n", np.zeros(2, np.uint32)))
    cut = masked.index(b"\x00\x01n") + 3
    with pytest.raises(InvalidRequest):
        codec.decode(masked[:cut] + b"\x02" + masked[cut + 1 :])


def test_wrong_stage_for_kind_cannot_be_encoded() -> None:
    with pytest.raises(InvalidRequest):
        codec.encode(m.UnmaskRequest(_b(Stage.SHARE_KEYS), ()))
    with pytest.raises(InvalidRequest):
        m.Binding("job", 0, 1, Stage.PSI)
    with pytest.raises(InvalidRequest):
        m.Binding("job", 2**32, 1, Stage.UNMASK)
