"""Who called: the identity in the verified client certificate of a gRPC call."""

from __future__ import annotations

import functools

import grpc
from cryptography import x509

from tessera.core.errors import AuthError, PkiError
from tessera.core.pki._model import identity_of
from tessera.core.types import PeerIdentity

# gRPC's auth-context key for the peer's leaf certificate (PEM), set once TLS verified it.
_PEM_KEY = "x509_pem_cert"


@functools.lru_cache(maxsize=16384)  # every peer of a large consortium, not 1024 of them
def identity_from_pem(pem: bytes) -> PeerIdentity:
    """Parse a PEM certificate into a :class:`PeerIdentity`; cached because every call repeats it.

    Raises ``AuthError`` when the bytes are not a certificate in Tessera's subject encoding.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise AuthError("the peer certificate cannot be parsed") from None
    try:
        return identity_of(cert)
    except PkiError as exc:
        raise AuthError(exc.message) from None


def peer_identity(context: grpc.ServicerContext) -> PeerIdentity:
    """The caller's identity; ``AuthError`` if the call carries no client certificate.

    Only meaningful behind mTLS server credentials: the handshake has already checked the
    certificate's chain and validity; revocation and roles are the interceptor's job.
    """
    values = context.auth_context().get(_PEM_KEY) or []
    if len(values) != 1:
        raise AuthError("the call carries no client certificate")
    return identity_from_pem(bytes(values[0]))
