"""Who a certificate names, and how that is written into its subject.

Subject encoding (stable; the interceptor and every peer rely on it):

* ``CN``  = the identity's name (letters, digits, ``-``, ``_``, ``.``; at most 64 characters);
* ``O``   = the consortium's name (informational);
* ``OU``  = the kind: ``coordinator``, ``node`` or ``analyst``;
* ``title`` (OID 2.5.4.12) = the analyst's role: ``admin``, ``analyst`` or ``auditor`` —
  present on analyst certificates only.

Plain subject attributes were chosen over a private extension so that ``openssl x509 -subject``
shows an operator everything the coordinator will decide on.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from tessera.core.errors import PkiError
from tessera.core.types import PeerIdentity

KINDS: tuple[str, ...] = ("coordinator", "node", "analyst")
ROLES: tuple[str, ...] = ("admin", "analyst", "auditor")

# 64 is the X.520 upper bound for a common name; the character set keeps names safe as file names.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is usable as an identity and a file name, else raise ``PkiError``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.strip(".") == "":
        raise PkiError(f"the {what} must be 1 to 64 letters, digits, '-', '_' or '.' (and not only dots)")
    return name


def check_kind_role(kind: str, role: str | None) -> None:
    """Raise ``PkiError`` unless ``kind`` is known and ``role`` is given exactly for analysts."""
    if kind not in KINDS:
        raise PkiError(f"the kind must be one of {', '.join(KINDS)}")
    if kind == "analyst":
        if role not in ROLES:
            raise PkiError(f"an analyst certificate needs a role, one of {', '.join(ROLES)}")
    elif role is not None:
        raise PkiError(f"only analyst certificates carry a role, not {kind} certificates")


def cert_paths(pki_dir: Path, kind: str, name: str) -> tuple[Path, Path]:
    """``(<pki_dir>/<kind>s/<name>.pem, <pki_dir>/<kind>s/<name>.key)`` after validating both."""
    if kind not in KINDS:
        raise PkiError(f"the kind must be one of {', '.join(KINDS)}")
    check_name(name)
    folder = Path(pki_dir) / f"{kind}s"
    return folder / f"{name}.pem", folder / f"{name}.key"


def ca_paths(pki_dir: Path) -> tuple[Path, Path, Path]:
    """``(ca.pem, ca.key, crl.pem)`` inside ``pki_dir``."""
    base = Path(pki_dir)
    return base / "ca.pem", base / "ca.key", base / "crl.pem"


def subject_for(*, consortium: str, kind: str, name: str, role: str | None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ]
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.TITLE, role))
    return x509.Name(attrs)


def _single(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    """Read (name, kind, role, serial) from a certificate issued by :func:`issue`.

    Raises ``PkiError`` when the subject does not follow the encoding above (e.g. a CA
    certificate or one made by another tool).
    """
    name = _single(cert, NameOID.COMMON_NAME)
    kind = _single(cert, NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = _single(cert, NameOID.TITLE)
    if name is None or kind is None or not _NAME_RE.fullmatch(name):
        raise PkiError("the certificate does not name a Tessera identity (CN and OU)")
    try:
        check_kind_role(kind, role)
    except PkiError:
        raise PkiError("the certificate names an unknown kind or role") from None
    return PeerIdentity(name=name, kind=kind, role=role, serial=cert.serial_number)
