"""Key hierarchy: key files, KEK check, rewrap and resumable re-encryption (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from tessera.client.vault import (
    FieldContext,
    LocalKek,
    ProtectedColumn,
    RotationProgress,
    VaultKeys,
    create_key_file,
    rotate,
)
from tessera.client.vault.crypto import FieldCipher, token_key_id
from tessera.core.errors import ConfigError, Conflict, CryptoError, StoreError

COLUMNS = (ProtectedColumn("customer", "email", "id"), ProtectedColumn("customer", "phone", "id"))


class _Interrupt(Exception):
    pass


def _make_customers(engine: sa.Engine, cipher: FieldCipher, ids: range) -> dict[tuple[str, str], str]:
    md = sa.MetaData()
    table = sa.Table(
        "customer",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("email", sa.LargeBinary, nullable=True),
        sa.Column("phone", sa.LargeBinary, nullable=True),
    )
    md.create_all(engine)
    plain: dict[tuple[str, str], str] = {}
    with engine.begin() as conn:
        for i in ids:
            rk = f"c{i:04d}"
            row: dict[str, str | bytes | None] = {"id": rk, "email": None, "phone": None}
            plain[(rk, "email")] = f"user{i}@example.com"
            row["email"] = cipher.encrypt_text(
                plain[(rk, "email")], context=FieldContext("customer", "email", rk)
            )
            if i % 3:  # some NULLs: rotation must skip them
                plain[(rk, "phone")] = f"+86138{i:08d}"
                ctx = FieldContext("customer", "phone", rk)
                row["phone"] = cipher.encrypt_text(plain[(rk, "phone")], context=ctx)
            conn.execute(table.insert().values(**row))
    return plain


def _read_all(engine: sa.Engine, cipher: FieldCipher) -> tuple[dict[tuple[str, str], str], set[bytes]]:
    out: dict[tuple[str, str], str] = {}
    key_ids: set[bytes] = set()
    with engine.connect() as conn:
        for rk, email, phone in conn.execute(sa.text("SELECT id, email, phone FROM customer ORDER BY id")):
            for name, token in (("email", email), ("phone", phone)):
                if token is not None:
                    out[(rk, name)] = cipher.decrypt_text(
                        bytes(token), context=FieldContext("customer", name, rk)
                    )
                    key_ids.add(token_key_id(bytes(token)))
    return out, key_ids


def _snapshot(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT key_id, status, wrapped FROM vault_keys ORDER BY key_id")).all()
        meta = conn.execute(sa.text("SELECT name, value FROM vault_meta ORDER BY name")).all()
    return [tuple(r) for r in keys] + [tuple(r) for r in meta]


# -- key files -------------------------------------------------------------------------------------


def test_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = create_key_file(tmp_path / "vault.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_bytes().strip())) == 32
    kek = LocalKek.from_file(path)
    assert kek.kek_id == LocalKek.from_file(path).kek_id
    with pytest.raises(ConfigError, match="already exists"):
        create_key_file(path)
    assert LocalKek.from_file(path) == kek


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = create_key_file(tmp_path / "vault.key")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalKek.from_file(path)


def test_key_file_errors_name_no_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LocalKek.from_file(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"not base64 !!!")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="base64"):
        LocalKek.from_file(bad)


def test_kek_from_environment() -> None:
    raw = bytes(range(32))
    kek = LocalKek.from_env(environ={"TESSERA_VAULT_KEK": base64.b64encode(raw).decode()})
    assert kek == LocalKek(raw)
    assert raw.hex() not in repr(kek)
    with pytest.raises(ConfigError, match="TESSERA_VAULT_KEK is not set"):
        LocalKek.from_env(environ={})
    with pytest.raises(ConfigError, match="32-byte"):
        LocalKek.from_env("K", environ={"K": base64.b64encode(b"short").decode()})


# -- vault keys ------------------------------------------------------------------------------------


def test_create_open_and_wrong_kek_alters_nothing(engine: sa.Engine) -> None:
    kek = LocalKek.generate()
    keys = VaultKeys.create(engine, kek)
    assert VaultKeys.open(engine, kek).keyring().active == keys.keyring().active
    before = _snapshot(engine)
    with pytest.raises(CryptoError) as info:
        VaultKeys.open(engine, LocalKek.generate())
    assert str(info.value) == "the key does not open this vault"
    with pytest.raises(CryptoError, match="does not open"):
        rotate(VaultKeys(engine, LocalKek.generate()), mode="rewrap", new_kek=LocalKek.generate())
    assert _snapshot(engine) == before
    with pytest.raises(Conflict):
        VaultKeys.create(engine, kek)
    assert VaultKeys.open_or_create(engine, kek).keyring().active == keys.keyring().active


def test_open_empty_database(engine: sa.Engine) -> None:
    with pytest.raises(StoreError):
        VaultKeys.open(engine, LocalKek.generate())


def test_blind_index_key_is_separate(engine: sa.Engine) -> None:
    keys = VaultKeys.create(engine, LocalKek.generate())
    index_key = keys.blind_index_key()
    assert len(index_key) == 32
    assert index_key != keys.keyring().active.material
    indexer = keys.blind_indexer(default_region="GB")
    assert indexer.index("phone", "020 7946 0958") == indexer.index("phone", "+44 20 7946 0958")
    purposes = sorted(k.purpose for k in keys.describe())
    assert purposes == ["blind_index", "data"]


def test_swapped_wrapped_blobs_do_not_unwrap(engine: sa.Engine) -> None:
    keys = VaultKeys.create(engine, LocalKek.generate())
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT key_id, wrapped FROM vault_keys ORDER BY key_id")).all()
        (a, wa), (b, wb) = rows
        conn.execute(sa.text("UPDATE vault_keys SET wrapped = :w WHERE key_id = :k"), {"w": wb, "k": a})
        conn.execute(sa.text("UPDATE vault_keys SET wrapped = :w WHERE key_id = :k"), {"w": wa, "k": b})
    with pytest.raises(CryptoError, match="could not be unwrapped"):
        keys.keyring()


def test_rewrap_keeps_every_value_readable(engine: sa.Engine) -> None:
    old, new = LocalKek.generate(), LocalKek.generate()
    keys = VaultKeys.create(engine, old)
    plain = _make_customers(engine, keys.cipher(), range(12))
    result = rotate(keys, mode="rewrap", new_kek=new)
    assert result.keys_rewrapped == 2
    with pytest.raises(CryptoError, match="does not open"):
        VaultKeys.open(engine, old)
    reopened = VaultKeys.open(engine, new)
    assert _read_all(engine, reopened.cipher())[0] == plain
    assert {k.kek_id for k in reopened.describe()} == {new.kek_id}


class _FailingKek:
    """A KEK provider whose wrap breaks part-way: rewrap must leave the vault as it was."""

    def __init__(self) -> None:
        self.inner, self.calls = LocalKek.generate(), 0

    @property
    def kek_id(self) -> str:
        return "failing"

    def wrap(self, secret: bytes, *, aad: bytes) -> bytes:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("KMS unavailable")
        return self.inner.wrap(secret, aad=aad)

    def unwrap(self, blob: bytes, *, aad: bytes) -> bytes:
        return self.inner.unwrap(blob, aad=aad)


def test_failed_rewrap_is_atomic(engine: sa.Engine) -> None:
    kek = LocalKek.generate()
    keys = VaultKeys.create(engine, kek)
    before = _snapshot(engine)
    with pytest.raises(RuntimeError):
        keys.rewrap(_FailingKek())
    assert _snapshot(engine) == before
    VaultKeys.open(engine, kek).keyring()


def test_reencrypt_moves_every_value_to_a_new_key(engine: sa.Engine) -> None:
    keys = VaultKeys.create(engine, LocalKek.generate())
    old_id = keys.keyring().active.key_id
    plain = _make_customers(engine, keys.cipher(), range(23))
    seen: list[RotationProgress] = []
    result = rotate(keys, mode="reencrypt", columns=COLUMNS, batch_size=5, on_batch=seen.append)
    assert result.values_reencrypted == len(plain) and not result.resumed
    values, key_ids = _read_all(engine, keys.cipher())
    assert values == plain
    assert key_ids == {bytes.fromhex(result.new_key_id or "")} and old_id not in key_ids
    assert seen[-1].finished and sum(1 for p in seen if p.finished) == 2
    statuses = {k.key_id: k.status for k in keys.describe() if k.purpose == "data"}
    assert statuses == {old_id.hex(): "retired", result.new_key_id: "active"}


def test_interrupted_reencrypt_resumes_without_loss(engine: sa.Engine) -> None:
    kek = LocalKek.generate()
    keys = VaultKeys.create(engine, kek)
    plain = _make_customers(engine, keys.cipher(), range(30))
    batches = 0

    def crash_after_two(progress: RotationProgress) -> None:
        nonlocal batches
        batches += 1
        if batches == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        keys.reencrypt(COLUMNS, batch_size=7, on_batch=crash_after_two)
    values, key_ids = _read_all(engine, keys.cipher())
    assert values == plain and len(key_ids) == 2  # half moved, all readable
    # A row written meanwhile uses the new active key and is left alone by the resumed run.
    cipher = keys.cipher()
    with engine.begin() as conn:
        rk = "c9999"
        token = cipher.encrypt_text("late@example.com", context=FieldContext("customer", "email", rk))
        conn.execute(sa.text("INSERT INTO customer (id, email) VALUES (:i, :e)"), {"i": rk, "e": token})
    plain[(rk, "email")] = "late@example.com"
    result = VaultKeys.open(engine, kek).reencrypt(COLUMNS, batch_size=7)
    assert result.resumed
    values, key_ids = _read_all(engine, keys.cipher())
    assert values == plain
    assert key_ids == {bytes.fromhex(result.new_key_id or "")}
    assert result.values_reencrypted == len(plain) - 1 - 14  # the late row and the first 2 batches


def test_rotate_argument_checks(engine: sa.Engine) -> None:
    keys = VaultKeys.create(engine, LocalKek.generate())
    with pytest.raises(ValueError, match="new_kek"):
        rotate(keys, mode="rewrap")
    with pytest.raises(ValueError, match="mode"):
        rotate(keys, mode="shred")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="protected columns"):
        rotate(keys, mode="reencrypt")
    with pytest.raises(ValueError):
        ProtectedColumn("customer; DROP TABLE x", "email", "id")


def test_reencrypt_with_new_kek_does_both(engine: sa.Engine) -> None:
    keys = VaultKeys.create(engine, LocalKek.generate())
    plain = _make_customers(engine, keys.cipher(), range(4))
    new = LocalKek.generate()
    result = rotate(keys, mode="reencrypt", new_kek=new, columns=COLUMNS)
    assert result.keys_rewrapped == 2 and result.values_reencrypted == len(plain)
    assert _read_all(engine, VaultKeys.open(engine, new).cipher())[0] == plain
