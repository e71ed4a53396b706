"""Fixtures shared by every test folder: a dev PKI, and PostgreSQL databases made per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.core import pki

PG_ADMIN_URL = os.environ.get("TESSERA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PARTNERS = ("bank", "telco", "retailer")


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A consortium CA with a coordinator, bank/telco/retailer nodes and one analyst per role."""
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root, consortium="tessera-test")
    pki.issue(root, kind="coordinator", name="coordinator")
    for name in (*PARTNERS, "stranger"):
        pki.issue(root, kind="node", name=name)
    for role in ("admin", "analyst", "auditor"):
        pki.issue(root, kind="analyst", name=role, role=role)
    return root


def _pg_available() -> bool:
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    Skips when no server answers at 127.0.0.1:5432 — except under CI (CI=true), where it fails.
    """
    if not _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 does not answer, and CI requires it")
        pytest.skip("no PostgreSQL server answers at 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    name = f"tessera_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
