"""Nodes check the coordinator's certificate themselves (issue 12, items 6 and 13): a revoked
coordinator is refused, and a certificate that does not name the dialled host says so instead of
blaming the CA. Real coordinator on loopback, real mTLS."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from federation import Federation

from tessera.cli.analyst_client import AnalystClient
from tessera.client.agent import NodeAgent, NodeConfig
from tessera.client.datasource import CsvDataSource
from tessera.client.db import node_engine
from tessera.client.outgoing import open_ledgers
from tessera.core import pki
from tessera.core.errors import PkiError
from tessera.core.pki import TlsFiles
from tessera.core.pki.server_check import check_coordinator


def _consortium(root: Path, *hosts: str) -> Path:
    pki.init_ca(root, consortium="check-test")
    pki.issue(root, kind="coordinator", name="coordinator", **({"hosts": hosts} if hosts else {}))
    pki.issue(root, kind="node", name="bank")
    return root


def test_a_revoked_coordinator_is_refused_by_nodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _consortium(tmp_path / "pki")
    fed = Federation(pki_dir=root, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    fed.start_coordinator()
    node = TlsFiles.for_identity(root, "node", "bank")
    try:
        assert check_coordinator(fed.address, node) is not None
        pki.revoke(root, kind="coordinator", name="coordinator")
        with pytest.raises(PkiError, match="revocation list"):
            check_coordinator(fed.address, node)
        # The node never enrols with it, and its log says why.
        caplog.set_level(logging.ERROR, logger="tessera.node")
        policy = fed.policy("bank")
        config = NodeConfig("bank", fed.address, node, backoff_initial_s=0.05, backoff_max_s=0.2)
        ledgers = open_ledgers(node_engine(f"sqlite:///{tmp_path / 'node.db'}"), policy)
        agent = NodeAgent(config, policy, CsvDataSource({}, policy), ledgers)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            assert not agent.enrolled.wait(2.0)
        finally:
            agent.stop()
            thread.join(timeout=5)
        assert any("revocation list" in r.getMessage() for r in caplog.records)
    finally:
        fed.close()


def test_a_host_name_mismatch_is_named(tmp_path: Path) -> None:
    root = _consortium(tmp_path / "pki", "coord.example")
    fed = Federation(pki_dir=root, work=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}")
    fed.start_coordinator()
    try:
        with pytest.raises(PkiError, match=r"not valid for 127\.0\.0\.1 \(it names coord\.example\)"):
            check_coordinator(fed.address, TlsFiles.for_identity(root, "node", "bank"))
        # An analyst is told the same, not "do both sides trust the same consortium CA?".
        pki.issue(root, kind="analyst", name="alice", role="analyst")
        with (
            AnalystClient.from_pki(fed.address, root, "alice") as client,
            pytest.raises(PkiError, match=r"not valid for 127\.0\.0\.1 \(it names coord\.example\)"),
        ):
            client.nodes()
    finally:
        fed.close()


def test_an_address_without_a_usable_port_is_refused(tmp_path: Path) -> None:
    root = _consortium(tmp_path / "pki")
    with pytest.raises(PkiError, match="HOST:PORT"):
        check_coordinator("127.0.0.1:99999", TlsFiles.for_identity(root, "node", "bank"))
    assert check_coordinator("127.0.0.1:1", TlsFiles.for_identity(root, "node", "bank")) is None
