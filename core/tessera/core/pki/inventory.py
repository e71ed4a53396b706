"""What a PKI directory holds: every issued certificate, with its expiry and revocation state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from tessera.core.errors import PkiError
from tessera.core.pki._io import load_cert
from tessera.core.pki._model import KINDS, ca_paths, identity_of
from tessera.core.pki.crl import load_revoked_serials


@dataclass(frozen=True, slots=True)
class CertInfo:
    kind: str
    name: str
    role: str | None
    serial: int
    not_after: dt.datetime
    revoked: bool

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (dt.datetime.now(dt.UTC) if now is None else now) >= self.not_after


def list_certs(pki_dir: Path) -> list[CertInfo]:
    """Every certificate under ``<pki_dir>/<kind>s/``, sorted by kind then name.

    Only the certificates currently on disk are listed (a replaced certificate is gone from here
    but stays on the CRL if it was revoked). Raises ``PkiError`` for a file that is not a
    Tessera certificate.
    """
    ca_path, _, crl_path = ca_paths(pki_dir)
    if not ca_path.exists():
        raise PkiError(f"no CA in {pki_dir}; run 'tessera pki init' first")
    revoked = load_revoked_serials(crl_path, ca_path) if crl_path.exists() else frozenset()
    infos: list[CertInfo] = []
    for kind in KINDS:
        for path in sorted((Path(pki_dir) / f"{kind}s").glob("*.pem")):
            cert = load_cert(path)
            try:
                ident = identity_of(cert)
            except PkiError:
                raise PkiError(f"{path} is not a Tessera certificate") from None
            infos.append(
                CertInfo(
                    kind=ident.kind,
                    name=ident.name,
                    role=ident.role,
                    serial=ident.serial,
                    not_after=cert.not_valid_after_utc,
                    revoked=ident.serial in revoked,
                )
            )
    return infos
