"""A node's state directory: the vault database, its key file, the egress ledger, the audit log.

Layout under ``state_dir``: ``vault.db`` (SQLite, unless a PostgreSQL ``db_url`` is given),
``vault.key`` (the KEK, base64, mode 0600 — or the ``TESSERA_VAULT_KEK`` environment variable),
``audit.log`` (operator actions as JSON lines, no PII) and ``reports/`` (ingest quality reports).
Nothing here holds a plaintext email address or phone number: PII lives only as AES-GCM tokens and
keyed blind indexes inside the database.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tessera.client.egress import EgressLedger
from tessera.client.vault._model import PII_COLUMN, PII_ROW_KEY, PII_TABLE, create_model
from tessera.client.vault._rotation import ProtectedColumn
from tessera.client.vault.identity import IdentityIndex
from tessera.client.vault.ingest import VaultHandle
from tessera.client.vault.kek import DEFAULT_KEK_ENV, KekProvider, LocalKek, create_key_file
from tessera.client.vault.keys import VaultKeys
from tessera.client.vault.source import VaultDataSource
from tessera.core.errors import ConfigError, Conflict, CryptoError, StoreError
from tessera.core.policy import Policy

DB_FILE = "vault.db"
KEY_FILE = "vault.key"
NEXT_KEY_FILE = "vault.key.next"  # a new KEK during a re-wrap; promoted once the vault uses it
AUDIT_FILE = "audit.log"
REPORTS_DIR = "reports"
PROTECTED_COLUMNS = (ProtectedColumn(PII_TABLE, PII_COLUMN, PII_ROW_KEY),)


def _init_hint(state_dir: Path) -> str:
    return f"run `tessera node init --state-dir {state_dir} --policy FILE` first"


@dataclass
class NodeState:
    """An open node state; ``close()`` releases the database connections."""

    state_dir: Path
    policy: Policy
    engine: sa.Engine
    keys: VaultKeys
    egress: EgressLedger
    data_source: VaultDataSource
    kek_from_env: bool = False
    _closed: bool = field(default=False, repr=False)

    def handle(self, *, default_region: str | None = None) -> VaultHandle:
        """Keys unwrapped now (after a rotation, ask again) for ingesting into this vault."""
        index_key = self.keys.blind_index_key()
        return VaultHandle(
            engine=self.engine,
            cipher=self.keys.cipher(),
            identity=IdentityIndex(index_key, default_region=default_region),
            policy=self.policy,
            index_key=index_key,
        )

    def audit(self, action: str, **details: Any) -> None:
        """Append one operator action to ``audit.log`` (callers pass ids and counts, never PII)."""
        try:
            operator = getpass.getuser()
        except (KeyError, OSError):
            operator = "unknown"
        line = {"time": datetime.now(UTC).isoformat(), "action": action, "operator": operator, **details}
        path = self.state_dir / AUDIT_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")

    def close(self) -> None:
        if not self._closed:
            self.engine.dispose()
            self._closed = True


def _engine(state_dir: Path, db_url: str | None) -> sa.Engine:
    if db_url is not None:
        try:
            return sa.create_engine(db_url, pool_pre_ping=True)
        except (sa.exc.ArgumentError, ImportError):
            raise ConfigError("the --db-url is not a database URL this node can open") from None
    engine = sa.create_engine(f"sqlite:///{state_dir / DB_FILE}", connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Deleted rows (erasure, purge) are overwritten with zeros rather than left in free pages.
        dbapi_connection.execute("PRAGMA secure_delete=ON")
        # WAL + FULL: every commit is on disk when it returns. The budget and egress ledgers live
        # here, and a round's charge commits before its masked input leaves: with NORMAL a power
        # cut could lose a charge whose payload was already sent. An ingest pays one fsync per
        # batch. 64 MiB of page cache keeps the unique indexes of a few million rows in memory
        # instead of re-reading them from disk for every batch.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=FULL")
        dbapi_connection.execute("PRAGMA cache_size=-65536")

    return engine


def _kek(state_dir: Path, kek: KekProvider | None) -> tuple[KekProvider, bool]:
    if kek is not None:
        return kek, False
    if os.environ.get(DEFAULT_KEK_ENV):
        return LocalKek.from_env(), True
    if not (state_dir / KEY_FILE).exists():
        raise ConfigError(f"{state_dir} holds no vault key; {_init_hint(state_dir)}")
    return LocalKek.from_file(state_dir / KEY_FILE), False


def _open_keys(engine: sa.Engine, state_dir: Path, kek: KekProvider, from_file: bool) -> VaultKeys:
    try:
        return VaultKeys.open(engine, kek)
    except StoreError:
        raise ConfigError(f"the node database holds no vault; {_init_hint(state_dir)}") from None
    except CryptoError:
        nxt = state_dir / NEXT_KEY_FILE
        if not (from_file and nxt.exists()):
            raise
    # A re-wrap committed but was interrupted before the new key file replaced the old one.
    keys = VaultKeys.open(engine, LocalKek.from_file(nxt))
    os.replace(nxt, state_dir / KEY_FILE)
    return keys


def open_node_state(
    state_dir: Path, policy: Policy, *, db_url: str | None = None, kek: KekProvider | None = None
) -> NodeState:
    """Open an initialised state directory; ``ConfigError`` naming `tessera node init` if there is none.

    A wrong key raises ``CryptoError("the key does not open this vault")`` before anything is read.
    """
    state_dir = Path(state_dir)
    if not state_dir.is_dir() or (db_url is None and not (state_dir / DB_FILE).exists()):
        raise ConfigError(f"{state_dir} is not an initialised node state directory; {_init_hint(state_dir)}")
    provider, from_env = _kek(state_dir, kek)
    engine = _engine(state_dir, db_url)
    try:
        keys = _open_keys(engine, state_dir, provider, kek is None and not from_env)
        create_model(engine)  # idempotent: adds tables a newer version introduced
        egress = EgressLedger(engine)
    except BaseException:
        engine.dispose()
        raise
    return NodeState(state_dir, policy, engine, keys, egress, VaultDataSource(engine, policy), from_env)


def init_node_state(state_dir: Path, policy: Policy, *, db_url: str | None = None) -> NodeState:
    """Create the state directory (0700), the key file (0600, unless the KEK comes from the
    environment), the vault keys and every table. Refuses a directory that already holds a vault."""
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    from_env = bool(os.environ.get(DEFAULT_KEK_ENV))
    if from_env:
        provider: KekProvider = LocalKek.from_env()
    else:
        key_file = state_dir / KEY_FILE
        if not key_file.exists():
            create_key_file(key_file)
        provider = LocalKek.from_file(key_file)
    db_file = state_dir / DB_FILE
    if db_url is None and not db_file.exists():
        db_file.touch(mode=0o600)
    engine = _engine(state_dir, db_url)
    try:
        try:
            keys = VaultKeys.create(engine, provider)
        except Conflict:
            raise ConfigError(
                f"{state_dir} already holds an initialised vault; nothing was changed"
            ) from None
        create_model(engine)
        egress = EgressLedger(engine)
    except BaseException:
        engine.dispose()
        raise
    (state_dir / REPORTS_DIR).mkdir(mode=0o700, exist_ok=True)
    return NodeState(state_dir, policy, engine, keys, egress, VaultDataSource(engine, policy), from_env)
