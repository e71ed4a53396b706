"""The vault's key hierarchy: KEK -> wrapped data keys and blind-index key in ``vault_keys``.

``VaultKeys.create`` makes the tables, a KEK check value, the first data key and the blind-index
key; ``VaultKeys.open`` refuses a wrong KEK with one clear :class:`CryptoError` before reading or
changing anything else. :func:`rotate` re-wraps keys under a new KEK (``"rewrap"``, one short
transaction) or makes a new data key and re-encrypts every protected value (``"reencrypt"``,
batched and resumable; see :mod:`tessera.client.vault._rotation`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tessera.client.vault import _rotation
from tessera.client.vault._rotation import ProtectedColumn, RotationProgress
from tessera.client.vault._schema import VaultKeyRow, VaultMetaRow, create_tables
from tessera.client.vault.blind_index import BlindIndexer
from tessera.client.vault.crypto import KEY_BYTES, DataKey, FieldCipher, Keyring, new_key_id
from tessera.client.vault.kek import WRONG_KEK, KekProvider
from tessera.core.errors import Conflict, CryptoError, StoreError

PURPOSE_DATA = "data"
PURPOSE_BLIND_INDEX = "blind_index"
ACTIVE = "active"
RETIRED = "retired"

_CHECK_NAME = "kek_check"
_CHECK_AAD = b"tessera.vault.kek-check.v1"
_CHECK_PLAIN = b"tessera vault: this KEK opens this vault"
_UNWRAP_FAILED = "a vault key could not be unwrapped"

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _wrap_aad(purpose: str, key_id: bytes) -> bytes:
    # Binds a wrapped blob to its row: a blob moved to another key id or purpose will not unwrap.
    return b"tessera.vault.key.v1\x00" + purpose.encode("ascii") + b"\x00" + key_id


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What an operator may see about a key: never its material."""

    key_id: str
    purpose: str
    status: str
    kek_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RotationResult:
    mode: str
    keys_rewrapped: int = 0
    new_key_id: str | None = None
    values_reencrypted: int = 0
    resumed: bool = False


class VaultKeys:
    """Access to a vault's keys under one KEK. Build with :meth:`create` or :meth:`open`."""

    def __init__(self, engine: sa.Engine, kek: KekProvider, *, clock: Clock = _utcnow) -> None:
        self._engine = engine
        self._kek = kek
        self._clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def engine(self) -> sa.Engine:
        return self._engine

    @property
    def kek_id(self) -> str:
        return self._kek.kek_id

    @classmethod
    def create(cls, engine: sa.Engine, kek: KekProvider, *, clock: Clock = _utcnow) -> VaultKeys:
        """Initialise a new vault: tables, KEK check value, first data key, blind-index key."""
        create_tables(engine)
        keys = cls(engine, kek, clock=clock)
        with keys._sessions.begin() as session:
            if session.get(VaultMetaRow, _CHECK_NAME) is not None:
                raise Conflict("this database already holds a vault; open it instead")
            session.add(VaultMetaRow(name=_CHECK_NAME, value=kek.wrap(_CHECK_PLAIN, aad=_CHECK_AAD)))
            keys._add_key(session, PURPOSE_DATA, DataKey.generate())
            keys._add_key(session, PURPOSE_BLIND_INDEX, DataKey(new_key_id(), os.urandom(KEY_BYTES)))
        return keys

    @classmethod
    def open(cls, engine: sa.Engine, kek: KekProvider, *, clock: Clock = _utcnow) -> VaultKeys:
        """Open an existing vault; a wrong KEK raises ``CryptoError("the key does not open this vault")``."""
        if not sa.inspect(engine).has_table(VaultMetaRow.__tablename__):
            raise StoreError("this database holds no vault; create one first")
        keys = cls(engine, kek, clock=clock)
        with keys._sessions.begin() as session:
            keys._check_kek(session, kek)
        return keys

    @classmethod
    def open_or_create(cls, engine: sa.Engine, kek: KekProvider, *, clock: Clock = _utcnow) -> VaultKeys:
        if sa.inspect(engine).has_table(VaultMetaRow.__tablename__):
            with Session(engine) as session:
                if session.get(VaultMetaRow, _CHECK_NAME) is not None:
                    return cls.open(engine, kek, clock=clock)
        return cls.create(engine, kek, clock=clock)

    # -- reading keys ------------------------------------------------------------------------------

    def keyring(self) -> Keyring:
        """All data keys (active and retired) unwrapped; the active one encrypts new values."""
        with self._sessions.begin() as session:
            self._check_kek(session, self._kek)
            return self._load_keyring(session, self._kek)

    def cipher(self) -> FieldCipher:
        return FieldCipher(self.keyring())

    def blind_index_key(self) -> bytes:
        """The 32-byte HMAC key of the blind index (separate from every data key)."""
        with self._sessions.begin() as session:
            self._check_kek(session, self._kek)
            row = session.scalars(
                sa.select(VaultKeyRow).where(
                    VaultKeyRow.purpose == PURPOSE_BLIND_INDEX, VaultKeyRow.status == ACTIVE
                )
            ).one_or_none()
            if row is None:
                raise StoreError("the vault has no blind-index key")
            return self._unwrap(row, self._kek)

    def blind_indexer(self, *, default_region: str | None = None) -> BlindIndexer:
        """A :class:`BlindIndexer` with this vault's blind-index key (``default_region`` for phones)."""
        return BlindIndexer(self.blind_index_key(), default_region=default_region)

    def describe(self) -> list[KeyInfo]:
        with self._sessions.begin() as session:
            rows = session.scalars(sa.select(VaultKeyRow).order_by(VaultKeyRow.created_at)).all()
            return [KeyInfo(r.key_id, r.purpose, r.status, r.kek_id, r.created_at) for r in rows]

    # -- rotation ----------------------------------------------------------------------------------

    def rewrap(self, new_kek: KekProvider) -> RotationResult:
        """Re-wrap every key and the check value under ``new_kek`` in one transaction.

        Data values are untouched (fast: one unwrap and one wrap per key). If anything fails the
        transaction rolls back and the vault still opens with the old KEK. Store the new KEK safely
        *before* calling this: afterwards only the new KEK opens the vault.
        """
        with self._sessions.begin() as session:
            self._check_kek(session, self._kek)
            rows = session.scalars(sa.select(VaultKeyRow).with_for_update()).all()
            for row in rows:
                secret = self._unwrap(row, self._kek)
                row.wrapped = new_kek.wrap(secret, aad=_wrap_aad(row.purpose, bytes.fromhex(row.key_id)))
                row.kek_id = new_kek.kek_id
            check = session.get(VaultMetaRow, _CHECK_NAME)
            assert check is not None  # _check_kek proved it exists
            check.value = new_kek.wrap(_CHECK_PLAIN, aad=_CHECK_AAD)
        self._kek = new_kek
        return RotationResult(mode="rewrap", keys_rewrapped=len(rows))

    def reencrypt(
        self,
        columns: Sequence[ProtectedColumn],
        *,
        batch_size: int = 500,
        on_batch: Callable[[RotationProgress], None] | None = None,
    ) -> RotationResult:
        """Make a new active data key and re-encrypt every value of ``columns`` under it.

        Each batch (``batch_size`` rows) and its progress record commit together, so an interrupted
        run resumes where it stopped when called again (with the same or more columns) and no value
        is lost: old keys stay in the keyring (status ``retired``) until every value has moved.
        Values written meanwhile already use the new key and are skipped. ``on_batch`` is called
        after each committed batch (progress bars; tests use it to interrupt).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        with self._sessions.begin() as session:
            self._check_kek(session, self._kek)
            pending = _rotation.pending_key_id(session)
            resumed = pending is not None
            if pending is None and not columns:
                raise ValueError("reencrypt needs the protected columns to move to the new key")
            if pending is None:
                new_key = DataKey.generate()
                current = sa.select(VaultKeyRow).where(
                    VaultKeyRow.purpose == PURPOSE_DATA, VaultKeyRow.status == ACTIVE
                )
                for row in session.scalars(current):
                    row.status = RETIRED
                self._add_key(session, PURPOSE_DATA, new_key)
                pending = new_key.key_id_hex
            _rotation.register_columns(session, pending, columns, now=self._clock())
        keyring = self.keyring()
        done = _rotation.run(
            self._sessions, keyring, bytes.fromhex(pending), batch_size=batch_size, on_batch=on_batch
        )
        return RotationResult(mode="reencrypt", new_key_id=pending, values_reencrypted=done, resumed=resumed)

    # -- internals ---------------------------------------------------------------------------------

    def _add_key(self, session: Session, purpose: str, key: DataKey) -> None:
        session.add(
            VaultKeyRow(
                key_id=key.key_id_hex,
                purpose=purpose,
                status=ACTIVE,
                wrapped=self._kek.wrap(key.material, aad=_wrap_aad(purpose, key.key_id)),
                kek_id=self._kek.kek_id,
                created_at=self._clock(),
            )
        )
        session.flush()

    @staticmethod
    def _check_kek(session: Session, kek: KekProvider) -> None:
        row = session.get(VaultMetaRow, _CHECK_NAME)
        if row is None:
            raise StoreError("this database holds no vault; create one first")
        try:
            plain = kek.unwrap(row.value, aad=_CHECK_AAD)
        except CryptoError:
            raise CryptoError(WRONG_KEK) from None
        if plain != _CHECK_PLAIN:
            raise CryptoError(WRONG_KEK)

    @staticmethod
    def _unwrap(row: VaultKeyRow, kek: KekProvider) -> bytes:
        try:
            secret = kek.unwrap(row.wrapped, aad=_wrap_aad(row.purpose, bytes.fromhex(row.key_id)))
        except CryptoError:
            raise CryptoError(_UNWRAP_FAILED) from None
        if len(secret) != KEY_BYTES:
            raise CryptoError(_UNWRAP_FAILED)
        return secret

    def _load_keyring(self, session: Session, kek: KekProvider) -> Keyring:
        rows = session.scalars(sa.select(VaultKeyRow).where(VaultKeyRow.purpose == PURPOSE_DATA)).all()
        keys = [DataKey(bytes.fromhex(r.key_id), self._unwrap(r, kek)) for r in rows]
        active = [r.key_id for r in rows if r.status == ACTIVE]
        if len(active) != 1:
            raise StoreError("the vault must have exactly one active data key")
        return Keyring(keys, active=bytes.fromhex(active[0]))


def rotate(
    keys: VaultKeys,
    *,
    mode: Literal["rewrap", "reencrypt"],
    new_kek: KekProvider | None = None,
    columns: Sequence[ProtectedColumn] = (),
    batch_size: int = 500,
    on_batch: Callable[[RotationProgress], None] | None = None,
) -> RotationResult:
    """Rotate keys. ``rewrap`` needs ``new_kek``; ``reencrypt`` needs the protected ``columns``
    and, if ``new_kek`` is given, re-wraps first so the run ends with a new KEK and a new data key."""
    if mode == "rewrap":
        if new_kek is None:
            raise ValueError("mode='rewrap' needs new_kek")
        return keys.rewrap(new_kek)
    if mode == "reencrypt":
        rewrapped = keys.rewrap(new_kek).keys_rewrapped if new_kek is not None else 0
        result = keys.reencrypt(columns, batch_size=batch_size, on_batch=on_batch)
        return RotationResult(
            mode="reencrypt",
            keys_rewrapped=rewrapped,
            new_key_id=result.new_key_id,
            values_reencrypted=result.values_reencrypted,
            resumed=result.resumed,
        )
    raise ValueError("mode must be 'rewrap' or 'reencrypt'")
