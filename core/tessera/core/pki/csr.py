"""The usual request flow: the key is made where it is used, only a signing request travels.

On the node (or an analyst's or the coordinator's machine)::

    tessera pki request --dir PKI_DIR --kind node --name bank
        -> PKI_DIR/nodes/bank.key (0600, never leaves) and PKI_DIR/nodes/bank.csr (send it to the CA)

At the CA::

    tessera pki sign --dir CA_DIR --csr bank.csr [--out bank.pem]
        -> the certificate (send it back with ca.pem and crl.pem); the CA keeps a copy under
           CA_DIR/nodes/bank.pem so it can list and revoke it

The CA writes the certificate's subject itself from the request's kind, name and role (after
checking them and the request's signature); extensions in a request are ignored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tessera.core.errors import PkiError
from tessera.core.pki._io import cert_pem, key_pem, read_bytes, write_atomic
from tessera.core.pki._model import cert_paths, check_kind_role, subject_for
from tessera.core.pki.ca import IssuedCert, _check_days, _utc, certify, load_ca


@dataclass(frozen=True, slots=True)
class SigningRequest:
    kind: str
    name: str
    role: str | None
    key_path: Path
    csr_path: Path


def request_path(pki_dir: Path, kind: str, name: str) -> Path:
    return cert_paths(pki_dir, kind, name)[0].with_suffix(".csr")


def make_request(
    pki_dir: Path, *, kind: str, name: str, role: str | None = None, force: bool = False
) -> SigningRequest:
    """Make a P-256 key (0600) and a signing request for it under ``<pki_dir>/<kind>s/``."""
    check_kind_role(kind, role)
    _, key_path = cert_paths(pki_dir, kind, name)
    csr_path = request_path(pki_dir, kind, name)
    if key_path.exists() and not force:
        raise PkiError(f"{key_path} already exists; use --force to make a new key (and a new request)")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_for(consortium="request", kind=kind, name=name, role=role))
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, key_pem(key), mode=0o600)
    write_atomic(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    return SigningRequest(kind, name, role, key_path, csr_path)


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def sign_request(
    pki_dir: Path,
    csr_file: Path,
    *,
    days: int = 365,
    hosts: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    force: bool = False,
) -> IssuedCert:
    """Check ``csr_file`` and issue its certificate with the CA in ``pki_dir`` (no key is written).

    Refuses a request whose signature does not verify, whose key is not ECDSA P-256, whose subject
    does not name a kind and name (and role for analysts), or whose name already has a certificate
    at the CA (unless ``force``)."""
    data = read_bytes(Path(csr_file), "signing request")
    try:
        csr = x509.load_pem_x509_csr(data)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except ValueError:
        raise PkiError(f"{csr_file} is not a PEM certificate signing request") from None
    if not valid:
        raise PkiError(f"the signing request {csr_file} is not signed by its own key")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise PkiError("the signing request's key must be ECDSA P-256 (make it with `tessera pki request`)")
    name = _one(csr.subject, NameOID.COMMON_NAME)
    kind = _one(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = _one(csr.subject, NameOID.TITLE)
    if name is None or kind is None:
        raise PkiError("the signing request does not name a Tessera kind and name (OU and CN)")
    check_kind_role(kind, role)
    if hosts is not None and kind != "coordinator":
        raise PkiError("--host applies to coordinator certificates only")
    cert_path, _ = cert_paths(pki_dir, kind, name)
    if cert_path.exists() and not force:
        raise PkiError(f"the CA already issued a {kind} certificate named {name}; use --force to replace it")
    _check_days(days)
    ca_cert, ca_key = load_ca(pki_dir)
    start = _utc(now)
    if start >= ca_cert.not_valid_after_utc:
        raise PkiError("the consortium CA has expired; make a new one with 'tessera pki init --force'")
    names = tuple(hosts) if hosts is not None else ("localhost", "127.0.0.1")
    cert = certify(
        ca_cert, ca_key, public_key, kind=kind, name=name, role=role, days=days, hosts=names, start=start
    )
    write_atomic(cert_path, cert_pem(cert))
    return IssuedCert(
        kind=kind,
        name=name,
        role=role,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        cert_path=cert_path,
        key_path=Path(),
    )
