"""The consortium PKI: a CA, certificates for coordinator/node/analyst, a CRL, mTLS credentials.

Subject encoding and file layout are described in ``_model`` and ``ca``; gRPC credentials and
load-time checks in ``tls``; reading the caller's identity in ``peer``.
"""

from __future__ import annotations

from tessera.core.pki._io import load_cert as load_certificate
from tessera.core.pki._model import KINDS, ROLES, identity_of
from tessera.core.pki.ca import IssuedCert, init_ca, issue, load_ca, revoke
from tessera.core.pki.crl import load_revoked_serials
from tessera.core.pki.inventory import CertInfo, list_certs
from tessera.core.pki.peer import identity_from_pem, peer_identity
from tessera.core.pki.tls import LoadedTls, TlsFiles, channel_credentials, load_tls, server_credentials
from tessera.core.pki.verify import verify_certificate

__all__ = [
    "KINDS",
    "ROLES",
    "CertInfo",
    "IssuedCert",
    "LoadedTls",
    "TlsFiles",
    "channel_credentials",
    "identity_from_pem",
    "identity_of",
    "init_ca",
    "issue",
    "list_certs",
    "load_ca",
    "load_certificate",
    "load_revoked_serials",
    "load_tls",
    "peer_identity",
    "revoke",
    "server_credentials",
    "verify_certificate",
]
