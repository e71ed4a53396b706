"""Field encryption: round trip, layout, tampering and known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tessera.client.vault.crypto import (
    DECRYPT_FAILED,
    OVERHEAD_BYTES,
    DataKey,
    FieldCipher,
    FieldContext,
    Keyring,
    decrypt_field,
    encrypt_field,
    token_key_id,
)
from tessera.core.errors import CryptoError

VECTORS = Path(__file__).parents[4] / "tests" / "vectors" / "vault" / "field_encryption.json"
CTX = FieldContext("customer", "email", "cust-1")


@pytest.fixture
def key() -> DataKey:
    return DataKey(bytes.fromhex("0011223344556677"), bytes(range(32)))


def test_round_trip_and_layout(key: DataKey) -> None:
    for plain in (b"", b"alice@example.com", "张伟 +86 138".encode(), bytes(range(256)) * 4):
        token = encrypt_field(key, plain, context=CTX)
        assert len(token) == OVERHEAD_BYTES + len(plain)
        assert token[0] == 1 and token_key_id(token) == key.key_id
        assert plain not in token or plain == b""
        assert decrypt_field({key.key_id: key}, token, context=CTX) == plain


def test_fresh_nonce_per_value(key: DataKey) -> None:
    tokens = {encrypt_field(key, b"same", context=CTX) for _ in range(50)}
    assert len(tokens) == 50
    assert len({t[9:21] for t in tokens}) == 50


@pytest.mark.parametrize("position", [0, 1, 8, 9, 20, 21, -17, -1])
def test_flipped_bit_anywhere_fails_opaquely(key: DataKey, position: int) -> None:
    token = bytearray(encrypt_field(key, b"alice@example.com", context=CTX))
    token[position] ^= 0x01
    with pytest.raises(CryptoError) as info:
        decrypt_field({key.key_id: key}, bytes(token), context=CTX)
    assert str(info.value) == DECRYPT_FAILED


@pytest.mark.parametrize(
    "other",
    [
        FieldContext("customer", "email", "cust-2"),  # swapped between rows
        FieldContext("customer", "phone", "cust-1"),  # swapped between columns
        FieldContext("event", "email", "cust-1"),  # swapped between tables
        FieldContext("customer", "emai", "lcust-1"),  # boundary shift must not collide
    ],
)
def test_token_bound_to_its_place(key: DataKey, other: FieldContext) -> None:
    token = encrypt_field(key, b"alice@example.com", context=CTX)
    with pytest.raises(CryptoError, match=DECRYPT_FAILED):
        decrypt_field({key.key_id: key}, token, context=other)


def test_wrong_or_unknown_key_and_truncation(key: DataKey) -> None:
    token = encrypt_field(key, b"secret", context=CTX)
    impostor = DataKey(key.key_id, bytes(32))
    for keys, tok in (
        ({impostor.key_id: impostor}, token),
        ({}, token),
        ({key.key_id: key}, token[: OVERHEAD_BYTES - 1]),
        ({key.key_id: key}, b"\x02" + token[1:]),
    ):
        with pytest.raises(CryptoError, match=DECRYPT_FAILED):
            decrypt_field(keys, tok, context=CTX)


def test_keyring_and_cipher(key: DataKey) -> None:
    new = DataKey.generate()
    cipher = FieldCipher(Keyring([key, new], active=new.key_id))
    old_token = encrypt_field(key, b"old", context=CTX)
    assert cipher.decrypt(old_token, context=CTX) == b"old"
    token = cipher.encrypt_text("nouveau é", context=CTX)
    assert token_key_id(token) == new.key_id
    assert cipher.decrypt_text(token, context=CTX) == "nouveau é"
    with pytest.raises(ValueError):
        Keyring([key], active=new.key_id)


def test_no_key_material_in_repr(key: DataKey) -> None:
    assert key.material.hex() not in repr(key)
    assert key.material.hex() not in repr(Keyring([key], active=key.key_id))


def test_invalid_inputs(key: DataKey) -> None:
    with pytest.raises(ValueError):
        DataKey(b"short", bytes(32))
    with pytest.raises(ValueError):
        DataKey(bytes(8), bytes(16))
    with pytest.raises(ValueError):
        FieldContext("customer", "email", "")
    with pytest.raises(TypeError):
        encrypt_field(key, "text", context=CTX)  # type: ignore[arg-type]


def test_known_answer_vectors() -> None:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    assert len(vectors) >= 3
    for v in vectors:
        key = DataKey(bytes.fromhex(v["key_id"]), bytes.fromhex(v["key"]))
        ctx = FieldContext(v["table"], v["column"], v["row_key"])
        token = bytes.fromhex(v["token"])
        assert token[9:21].hex() == v["nonce"]
        assert decrypt_field({key.key_id: key}, token, context=ctx).decode() == v["plaintext"]
