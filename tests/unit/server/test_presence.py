"""Presence: one process per node name; the same process may reconnect before its old stream is
noticed closed, another process may take over only once the first one's streams are gone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tessera.server.presence import Presence
from tessera.server.store import open_store

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_a_second_process_is_refused_until_the_first_is_gone(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        presence = Presence(store)
        assert presence.stream_opened("bank", "first")
        assert presence.stream_opened("bank", "first")  # a reconnect of the same process
        assert presence.taken("bank", "second") and not presence.taken("bank", "first")
        assert not presence.stream_opened("bank", "second")
        assert presence.stream_opened("telco", "second")  # another name is another node
        presence.stream_closed("bank", T0)
        assert not presence.stream_opened("bank", "second")  # one stream of the first is open
        presence.stream_closed("bank", T0)
        assert not presence.connected("bank") and not presence.taken("bank", "second")
        assert presence.left("bank") and not presence.left("telco")
        assert presence.stream_opened("bank", "second")
        assert not presence.left("bank")
    finally:
        store.close()
