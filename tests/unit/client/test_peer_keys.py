"""A node fetches and verifies each peer certificate once per process, and still refuses what the
CA did not issue, what the set-up does not pin, what was revoked or expired since, and all it
kept once the CA changes."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tessera.client.peer_keys import PeerKeys
from tessera.core import pki
from tessera.core.errors import CryptoError, InvalidRequest, PkiError
from tessera.core.rounds import RoundSetup, certificate_fingerprint

PEERS = ("bank", "retailer", "telco")


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    """A CA of this test alone (revocations here touch no other test)."""
    root = tmp_path / "pki"
    pki.init_ca(root, consortium="peer-keys")
    for name in PEERS:
        pki.issue(root, kind="node", name=name)
    return root


class Coordinator:
    """What the node's fetch reaches: the certificates it serves, and how often it was asked."""

    def __init__(self, root: Path) -> None:
        self.served = {n: (root / "nodes" / f"{n}.pem").read_text() for n in PEERS}
        self.asked: list[tuple[str, ...]] = []

    delay = 0.0  # seconds each answer takes

    def fetch(self, job_id: str, nodes: Sequence[str]) -> dict[str, str]:
        self.asked.append(tuple(nodes))
        time.sleep(self.delay)
        return {n: self.served[n] for n in nodes if n in self.served}


def _setup(served: dict[str, str], *, job: str = "job-1", pins: dict[str, str] | None = None) -> RoundSetup:
    pinned = pins or {n: certificate_fingerprint(pem) for n, pem in served.items()}
    return RoundSetup(
        job_id=job,
        round_no=1,
        participants=PEERS,
        threshold=3,
        bits=32,
        length=4,
        fingerprints=tuple(sorted(pinned.items())),
    )


def _keys(root: Path, coordinator: Coordinator) -> PeerKeys:
    files = pki.TlsFiles.for_identity(root, "node", "bank")
    return PeerKeys(files.ca, files.crl, coordinator.fetch)


def test_each_certificate_is_fetched_and_verified_once_per_process(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    keys = _keys(own_pki, coordinator)
    first = keys.for_setup(_setup(coordinator.served, job="job-1"))
    second = keys.for_setup(_setup(coordinator.served, job="job-2"))
    assert set(first) == set(PEERS) and first == second
    assert coordinator.asked == [PEERS]
    assert keys.verified == 3


def test_a_new_certificate_of_a_known_node_is_fetched_again(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    keys = _keys(own_pki, coordinator)
    keys.for_setup(_setup(coordinator.served))
    pki.issue(own_pki, kind="node", name="telco", force=True)
    coordinator.served["telco"] = (own_pki / "nodes" / "telco.pem").read_text()
    keys.for_setup(_setup(coordinator.served, job="job-2"))
    assert coordinator.asked == [PEERS, ("telco",)]


def test_a_served_certificate_the_setup_does_not_pin_is_refused(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    pins = {n: certificate_fingerprint(pem) for n, pem in coordinator.served.items()}
    coordinator.served["telco"] = coordinator.served["retailer"]
    with pytest.raises(CryptoError, match="not the one the round set-up names"):
        _keys(own_pki, coordinator).for_setup(_setup(coordinator.served, pins=pins))


def test_a_pinned_certificate_of_another_node_is_refused(own_pki: Path) -> None:
    # A lying coordinator pins the retailer's own certificate under the telco's name.
    coordinator = Coordinator(own_pki)
    coordinator.served["telco"] = coordinator.served["retailer"]
    with pytest.raises(CryptoError, match="names another node"):
        _keys(own_pki, coordinator).for_setup(_setup(coordinator.served))


def test_a_certificate_of_another_ca_is_refused(own_pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, consortium="other")
    pki.issue(other, kind="node", name="telco")
    coordinator = Coordinator(own_pki)
    coordinator.served["telco"] = (other / "nodes" / "telco.pem").read_text()
    with pytest.raises(PkiError, match="not issued by this consortium's CA"):
        _keys(own_pki, coordinator).for_setup(_setup(coordinator.served))


def test_a_certificate_the_coordinator_does_not_serve_is_refused(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    pins = {n: certificate_fingerprint(pem) for n, pem in coordinator.served.items()}
    del coordinator.served["telco"]
    with pytest.raises(InvalidRequest, match="no certificate"):
        _keys(own_pki, coordinator).for_setup(_setup(coordinator.served, pins=pins))


def test_a_setup_that_pins_too_few_certificates_is_refused(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    pins = {n: certificate_fingerprint(pem) for n, pem in coordinator.served.items() if n != "telco"}
    with pytest.raises(InvalidRequest, match="one certificate per participant"):
        _keys(own_pki, coordinator).for_setup(_setup(coordinator.served, pins=pins))


def test_a_kept_certificate_revoked_since_is_refused(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    keys = _keys(own_pki, coordinator)
    keys.for_setup(_setup(coordinator.served))
    pki.revoke(own_pki, kind="node", name="telco")
    with pytest.raises(PkiError, match="revoked"):
        keys.for_setup(_setup(coordinator.served, job="job-2"))
    assert len(coordinator.asked) == 1  # refused from what it kept, not by fetching again


def test_a_kept_certificate_that_expired_since_is_refused(own_pki: Path) -> None:
    coordinator = Coordinator(own_pki)
    keys = _keys(own_pki, coordinator)
    keys.for_setup(_setup(coordinator.served))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(PkiError, match="expired"):
        keys.for_setup(_setup(coordinator.served, job="job-2"), now=later)


def test_a_new_ca_empties_what_was_kept(own_pki: Path, tmp_path: Path) -> None:
    coordinator = Coordinator(own_pki)
    keys = _keys(own_pki, coordinator)
    keys.for_setup(_setup(coordinator.served))
    # The operator replaces the CA file: certificates of the old CA must not pass from memory.
    other = tmp_path / "other"
    pki.init_ca(other, consortium="other")
    shutil.copy(other / "ca.pem", keys.ca_path)
    keys.crl_path = None
    with pytest.raises(PkiError, match="not issued by this consortium's CA"):
        keys.for_setup(_setup(coordinator.served, job="job-2"))
    assert len(coordinator.asked) == 2


def test_callers_at_once_fetch_and_check_each_certificate_once(own_pki: Path) -> None:
    import threading

    coordinator = Coordinator(own_pki)
    coordinator.delay = 0.2  # the others arrive while the first fetch is under way
    keys = _keys(own_pki, coordinator)
    start = threading.Barrier(4)

    def epoch() -> None:
        start.wait()
        keys.for_setup(_setup(coordinator.served))

    threads = [threading.Thread(target=epoch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert coordinator.asked == [PEERS] and keys.verified == 3
