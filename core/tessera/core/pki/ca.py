"""The consortium's certificate authority: make it, and issue coordinator/node/analyst certificates.

Keys are ECDSA P-256 (every TLS stack gRPC ships accepts them, and they are quick to make).
Files under ``pki_dir``::

    ca.pem  ca.key (0600)  crl.pem
    coordinators/<name>.pem  coordinators/<name>.key (0600)
    nodes/<name>.pem ...     analysts/<name>.pem ...

The CA key signs certificates and the CRL; it should live offline in production.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.core.errors import NotFound, PkiError
from tessera.core.pki._io import cert_pem, key_pem, load_cert, load_key, write_atomic
from tessera.core.pki._model import ca_paths, cert_paths, check_kind_role, check_name, subject_for
from tessera.core.pki.crl import crl_number, read_crl, write_crl

# Certificates start slightly in the past so that a peer whose clock is a little behind
# still accepts a certificate issued a moment ago.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """What :func:`issue` wrote. ``serial`` is the certificate's (random, 159-bit) serial."""

    kind: str
    name: str
    role: str | None
    serial: int
    not_after: dt.datetime
    cert_path: Path
    key_path: Path


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise PkiError("the time given for a certificate needs a time zone")
    return now.astimezone(dt.UTC)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500:
        raise PkiError("the validity must be a whole number of days between 1 and 36500")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(
    pki_dir: Path,
    *,
    consortium: str = "tessera-dev",
    days: int = 3650,
    now: dt.datetime | None = None,
    force: bool = False,
) -> Path:
    """Create ``ca.pem``, ``ca.key`` (0600) and an empty CA-signed ``crl.pem``; return ``ca.pem``.

    Refuses to replace an existing CA unless ``force``: every certificate issued by the old CA
    stops being trusted once it is replaced.
    """
    check_name(consortium, what="consortium name")
    _check_days(days)
    start = _utc(now)
    ca_cert_path, ca_key_path, crl_path = ca_paths(pki_dir)
    if not force and (ca_cert_path.exists() or ca_key_path.exists()):
        raise PkiError(f"a CA already exists in {pki_dir}; use --force (force=True) to replace it")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(ca_key_path, key_pem(key), mode=0o600)
    write_atomic(ca_cert_path, cert_pem(cert))
    write_crl(crl_path, ca_cert=cert, ca_key=key, serials=(), now=start, number=1)
    return ca_cert_path


def load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load the CA certificate and key of ``pki_dir`` (``PkiError`` if missing or mismatched)."""
    ca_cert_path, ca_key_path, _ = ca_paths(pki_dir)
    if not ca_cert_path.exists():
        raise PkiError(f"no CA in {pki_dir}; run 'tessera pki init' first")
    cert = load_cert(ca_cert_path, "CA certificate")
    key = load_key(ca_key_path, "CA private key")
    if key.public_key() != cert.public_key():
        raise PkiError(f"the CA key in {pki_dir} does not match the CA certificate")
    return cert, key


def _hosts_san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() for c in host) or not host.isascii():
                raise PkiError("each host must be an IP address or an ASCII DNS name") from None
            names.append(x509.DNSName(host))
    if not names:
        raise PkiError("a coordinator certificate needs at least one host")
    return x509.SubjectAlternativeName(names)


def issue(
    pki_dir: Path,
    *,
    kind: str,
    name: str,
    role: str | None = None,
    days: int = 365,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    now: dt.datetime | None = None,
    force: bool = False,
) -> IssuedCert:
    """Issue a certificate and key for ``name`` and write them under ``<pki_dir>/<kind>s/``.

    ``kind`` is coordinator (serverAuth, SANs from ``hosts``), node or analyst (clientAuth);
    analysts need ``role``. Validity runs from ``now`` (default: the current time) for ``days``
    days, cut at the CA's own expiry. An existing certificate of the same name is kept unless
    ``force`` (revoke it first if it may be compromised: replacing files does not revoke).
    """
    check_kind_role(kind, role)
    cert_path, key_path = cert_paths(pki_dir, kind, name)
    _check_days(days)
    start = _utc(now)
    ca_cert, ca_key = load_ca(pki_dir)
    if start >= ca_cert.not_valid_after_utc:
        raise PkiError("the consortium CA has expired; make a new one with 'tessera pki init --force'")
    if not force and (cert_path.exists() or key_path.exists()):
        raise PkiError(
            f"a {kind} certificate named {name} already exists; use --force (force=True) to replace it"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certify(
        ca_cert,
        ca_key,
        key.public_key(),
        kind=kind,
        name=name,
        role=role,
        days=days,
        hosts=hosts,
        start=start,
    )
    write_atomic(key_path, key_pem(key), mode=0o600)
    write_atomic(cert_path, cert_pem(cert))
    return IssuedCert(
        kind=kind,
        name=name,
        role=role,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        cert_path=cert_path,
        key_path=key_path,
    )


def certify(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    kind: str,
    name: str,
    role: str | None,
    days: int,
    hosts: Sequence[str],
    start: dt.datetime,
) -> x509.Certificate:
    """The CA's certificate for ``public_key`` (made here by :func:`issue`, or on the node and sent
    in a signing request): the subject is written by the CA, never copied from a request."""
    consortium_attrs = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    consortium = str(consortium_attrs[0].value) if consortium_attrs else "tessera"
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "coordinator" else ExtendedKeyUsageOID.CLIENT_AUTH
    not_after = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_for(consortium=consortium, kind=kind, name=name, role=role))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if kind == "coordinator":
        builder = builder.add_extension(_hosts_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def revoke(pki_dir: Path, *, kind: str, name: str, now: dt.datetime | None = None) -> int:
    """Add the serial of ``<kind>s/<name>.pem`` to ``crl.pem`` (re-signed); return the serial.

    Revoking twice is harmless (the serial is listed once). The coordinator picks the new list up
    on its next call, without a restart.
    """
    cert_path, _ = cert_paths(pki_dir, kind, name)
    if not cert_path.exists():
        raise NotFound(f"there is no {kind} certificate named {name} in {pki_dir}")
    when = _utc(now)
    ca_cert, ca_key = load_ca(pki_dir)
    serial = load_cert(cert_path).serial_number
    _, _, crl_path = ca_paths(pki_dir)
    # Read-modify-write of the CRL: two revocations at once must not drop one of them.
    with open(Path(pki_dir) / ".crl.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        crl = read_crl(crl_path, ca_cert)
        entries = {entry.serial_number: entry.revocation_date_utc for entry in crl}
        entries.setdefault(serial, when)
        write_crl(
            crl_path,
            ca_cert=ca_cert,
            ca_key=ca_key,
            serials=sorted(entries.items()),
            now=when,
            number=crl_number(crl) + 1,
        )
    return serial
