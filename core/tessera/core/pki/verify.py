"""Checking a peer's certificate outside TLS, e.g. one relayed by the coordinator.

Secure aggregation signs each node's ephemeral keys with the node's certificate key, and peers
receive that certificate through the (honest-but-curious) coordinator rather than over their own
TLS session, so they must check it themselves before trusting a signature made with it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tessera.core.errors import PkiError
from tessera.core.pki._io import load_cert
from tessera.core.pki._model import identity_of
from tessera.core.types import PeerIdentity


def verify_certificate(
    cert_pem: bytes,
    ca: Path | x509.Certificate,
    *,
    kind: str | None = None,
    revoked: Collection[int] = frozenset(),
    now: dt.datetime | None = None,
) -> PeerIdentity:
    """Return the identity in ``cert_pem`` if the consortium CA issued it and it is usable now.

    Refused with ``PkiError``: not a certificate; not signed by ``ca``; outside its validity at
    ``now`` (default: the current time); serial in ``revoked``; a kind other than ``kind`` (when
    given). Cost: one ECDSA verification (~0.1 ms).
    """
    ca_cert = ca if isinstance(ca, x509.Certificate) else load_cert(ca, "CA certificate")
    moment = dt.datetime.now(dt.UTC) if now is None else now
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise PkiError("the peer certificate is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError("the peer certificate was not issued by this consortium's CA") from None
    if not cert.not_valid_before_utc <= moment < cert.not_valid_after_utc:
        raise PkiError("the peer certificate is expired or not valid yet")
    identity = identity_of(cert)
    if identity.serial in revoked:
        raise PkiError("the peer certificate has been revoked")
    if kind is not None and identity.kind != kind:
        raise PkiError(f"the peer certificate's kind is {identity.kind}, expected {kind}")
    return identity
