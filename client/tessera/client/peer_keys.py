"""Peers' certificate keys, each certificate fetched and verified once per node process.

A round set-up names each participant's certificate by its SHA-256 fingerprint only. The node
fetches the certificates it has not verified before in this process (the coordinator's
``PeerCertificates``), checks each against the consortium CA, and keeps its key under its
fingerprint. What is cheap is checked again every epoch: the CRL (a revoked serial is refused),
the validity period, and the CA itself (a different CA file empties the cache).

The coordinator still cannot substitute a key: a fingerprint pins one exact certificate, and a
certificate the CA did not issue to that node name is refused as before.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import CryptoError, InvalidRequest, PkiError
from tessera.core.pki import load_certificate, load_revoked_serials, verify_certificate
from tessera.core.rounds import RoundSetup, certificate_fingerprint

# (job id, node ids) -> the PEMs the coordinator holds for those of them in the job.
FetchCertificates = Callable[[str, Sequence[str]], Mapping[str, str]]

# Far above any consortium; past it the cache starts again (the certificates are fetched anew).
MAX_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class _Verified:
    node: str
    key: ec.EllipticCurvePublicKey
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


class PeerKeys:
    def __init__(self, ca_path: Path, crl_path: Path | None, fetch: FetchCertificates | None) -> None:
        self.ca_path = ca_path
        self.crl_path = crl_path
        self._fetch = fetch
        self._kept: dict[str, _Verified] = {}  # certificate fingerprint -> what its check found
        self._ca = b""  # the CA (DER) the kept certificates were checked against
        # One fetch and check at a time: a caller that waited finds what the first one kept.
        self._lock = threading.Lock()
        self.verified = 0  # certificates checked against the CA in this process (for tests)

    def for_setup(
        self, setup: RoundSetup, *, now: dt.datetime | None = None
    ) -> dict[str, ec.EllipticCurvePublicKey]:
        """Each participant's certificate key, after checking the CA issued it to that node."""
        moment = dt.datetime.now(dt.UTC) if now is None else now
        pinned = dict(setup.fingerprints)
        if len(pinned) != len(setup.fingerprints) or set(pinned) != set(setup.participants):
            raise InvalidRequest("the round set-up does not name one certificate per participant")
        # Read once per epoch, not once per participant.
        ca = load_certificate(self.ca_path, "CA certificate")
        ca_der = ca.public_bytes(serialization.Encoding.DER)
        if ca_der != self._ca or len(self._kept) > MAX_KEPT:
            self._kept.clear()
            self._ca = ca_der
        revoked = (
            load_revoked_serials(self.crl_path, self.ca_path) if self.crl_path is not None else frozenset()
        )
        with self._lock:
            missing = [node for node in setup.participants if pinned[node] not in self._kept]
            if missing:
                self._verify_new(setup.job_id, missing, pinned, ca=ca, revoked=revoked, moment=moment)
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for node in setup.participants:
            peer = self._kept[pinned[node]]
            if peer.node != node:
                raise CryptoError("a relayed certificate names another node than the one it stands for")
            if peer.serial in revoked:
                raise PkiError("the peer certificate has been revoked")
            if not peer.not_before <= moment < peer.not_after:
                raise PkiError("the peer certificate is expired or not valid yet")
            keys[node] = peer.key
        return keys

    def _verify_new(
        self,
        job_id: str,
        nodes: Sequence[str],
        pinned: Mapping[str, str],
        *,
        ca: x509.Certificate,
        revoked: frozenset[int],
        moment: dt.datetime,
    ) -> None:
        if self._fetch is None:
            raise InvalidRequest("this node cannot fetch the certificates of its peers")
        fetched = self._fetch(job_id, nodes)
        for node in nodes:
            pem = fetched.get(node)
            if pem is None:
                raise InvalidRequest("the coordinator holds no certificate for a participant of the job")
            if certificate_fingerprint(pem) != pinned[node]:
                raise CryptoError("a fetched certificate is not the one the round set-up names")
            identity = verify_certificate(pem.encode(), ca, kind="node", revoked=revoked, now=moment)
            if identity.name != node:
                raise CryptoError("a relayed certificate names another node than the one it stands for")
            cert = x509.load_pem_x509_certificate(pem.encode())
            public = cert.public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise CryptoError("a peer certificate does not hold an ECDSA key")
            self.verified += 1
            self._kept[pinned[node]] = _Verified(
                node=node,
                key=public,
                serial=identity.serial,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
            )
