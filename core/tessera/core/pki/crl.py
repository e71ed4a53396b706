"""The consortium's certificate revocation list (``crl.pem``), always signed by the CA.

gRPC's Python TLS credentials cannot check a CRL, so the coordinator's interceptor does it
(``tessera.server.auth``) with :func:`load_revoked_serials`. The file is replaced atomically, so a
reader sees either the old or the new list, never half of one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import PkiError
from tessera.core.pki._io import load_cert, read_bytes, write_atomic


def write_crl(
    crl_path: Path,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    serials: Iterable[tuple[int, dt.datetime]],
    now: dt.datetime,
    number: int,
) -> None:
    """Sign and write a CRL listing ``(serial, revoked_at)`` pairs; ``number`` must grow."""
    # No scheduled re-signing exists for a consortium CA, so the list stays "current" for as
    # long as the CA itself is valid; the coordinator reloads it whenever the file changes.
    next_update = max(ca_cert.not_valid_after_utc, now + dt.timedelta(days=1))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for serial, revoked_at in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomic(crl_path, crl.public_bytes(serialization.Encoding.PEM))


def read_crl(crl_path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Load ``crl_path`` and check that ``ca_cert`` signed it (``PkiError`` otherwise)."""
    data = read_bytes(crl_path, "revocation list")
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise PkiError(f"the revocation list file {crl_path} is not a PEM CRL") from None
    public_key = ca_cert.public_key()
    if (
        crl.issuer != ca_cert.subject
        or not isinstance(public_key, ec.EllipticCurvePublicKey)
        or not crl.is_signature_valid(public_key)
    ):
        raise PkiError(f"the revocation list {crl_path} was not signed by this consortium's CA")
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def load_revoked_serials(crl_path: Path, ca_path: Path) -> frozenset[int]:
    """Serials listed in ``crl_path`` after verifying the CA at ``ca_path`` signed it."""
    ca_cert = load_cert(ca_path, "CA certificate")
    return frozenset(entry.serial_number for entry in read_crl(crl_path, ca_cert))
