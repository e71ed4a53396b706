"""Unit tests of tessera.core.pki: issuing, parsing, validation, CRL, load-time TLS checks."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tessera.core import pki
from tessera.core.errors import NotFound, PkiError
from tessera.core.types import PeerIdentity

UTC = dt.UTC


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki", consortium="acme")
    return tmp_path / "pki"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("kind", "name", "role"),
    [("node", "bank-1", None), ("coordinator", "coord.main", None), ("analyst", "ann_2", "auditor")],
)
def test_issue_round_trip(ca_dir: Path, kind: str, name: str, role: str | None) -> None:
    issued = pki.issue(ca_dir, kind=kind, name=name, role=role)
    assert issued.cert_path == ca_dir / f"{kind}s" / f"{name}.pem"
    cert = _cert(issued.cert_path)
    assert pki.identity_of(cert) == PeerIdentity(name=name, kind=kind, role=role, serial=issued.serial)
    assert pki.identity_from_pem(issued.cert_path.read_bytes()).serial == cert.serial_number
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.pem"))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    expected = ExtendedKeyUsageOID.SERVER_AUTH if kind == "coordinator" else ExtendedKeyUsageOID.CLIENT_AUTH
    assert list(eku) == [expected]
    [info] = pki.list_certs(ca_dir)
    assert (info.kind, info.name, info.role, info.serial, info.revoked) == (
        kind,
        name,
        role,
        issued.serial,
        False,
    )


def test_coordinator_sans_from_hosts(ca_dir: Path) -> None:
    issued = pki.issue(ca_dir, kind="coordinator", name="co", hosts=("coord.example", "10.1.2.3", "::1"))
    san = _cert(issued.cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "::1"]
    node = _cert(pki.issue(ca_dir, kind="node", name="n").cert_path)
    with pytest.raises(x509.ExtensionNotFound):
        node.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_ca_is_p256_and_marked_ca(ca_dir: Path) -> None:
    ca = _cert(ca_dir / "ca.pem")
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert pki.load_revoked_serials(ca_dir / "crl.pem", ca_dir / "ca.pem") == frozenset()


@pytest.mark.parametrize(
    ("kind", "role", "fragment"),
    [
        ("partner", None, "kind must be one of"),
        ("node", "admin", "only analyst certificates carry a role"),
        ("coordinator", "auditor", "only analyst certificates carry a role"),
        ("analyst", None, "needs a role"),
        ("analyst", "root", "needs a role"),
    ],
)
def test_issue_rejects_bad_kind_or_role(ca_dir: Path, kind: str, role: str | None, fragment: str) -> None:
    with pytest.raises(PkiError, match=fragment):
        pki.issue(ca_dir, kind=kind, name="x", role=role)
    assert not any((ca_dir / f"{k}s").exists() for k in pki.KINDS)


@pytest.mark.parametrize("name", ["", "a b", "../evil", "..", "x/y", "é", "a" * 65, "semi;colon"])
def test_issue_rejects_bad_names(ca_dir: Path, name: str) -> None:
    with pytest.raises(PkiError, match="letters, digits"):
        pki.issue(ca_dir, kind="node", name=name)


def test_issue_needs_a_ca_and_a_timezone(tmp_path: Path, ca_dir: Path) -> None:
    with pytest.raises(PkiError, match="no CA"):
        pki.issue(tmp_path / "empty", kind="node", name="n")
    with pytest.raises(PkiError, match="time zone"):
        pki.issue(ca_dir, kind="node", name="n", now=dt.datetime(2030, 1, 1))
    with pytest.raises(PkiError, match="days"):
        pki.issue(ca_dir, kind="node", name="n", days=0)


def test_no_silent_overwrite(ca_dir: Path) -> None:
    first = pki.issue(ca_dir, kind="node", name="n")
    with pytest.raises(PkiError, match="already exists"):
        pki.issue(ca_dir, kind="node", name="n")
    second = pki.issue(ca_dir, kind="node", name="n", force=True)
    assert second.serial != first.serial
    old_ca = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(PkiError, match="already exists"):
        pki.init_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == old_ca
    pki.init_ca(ca_dir, force=True)
    assert (ca_dir / "ca.pem").read_bytes() != old_ca


def test_private_keys_are_0600(ca_dir: Path) -> None:
    issued = pki.issue(ca_dir, kind="analyst", name="a", role="admin")
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(issued.key_path) == 0o600
    assert _mode(issued.cert_path) == 0o644
    # Replacing keeps the private mode (the temp file is 0600 before any byte is written).
    again = pki.issue(ca_dir, kind="analyst", name="a", role="admin", force=True)
    assert _mode(again.key_path) == 0o600
    assert not [p for p in again.key_path.parent.iterdir() if p.name.startswith(".")]


def test_validity_window_follows_now_and_is_capped_by_the_ca(ca_dir: Path) -> None:
    past = dt.datetime(2020, 1, 1, tzinfo=UTC)
    issued = pki.issue(ca_dir, kind="node", name="old", days=30, now=past)
    cert = _cert(issued.cert_path)
    assert cert.not_valid_after_utc == past + dt.timedelta(days=30)
    assert cert.not_valid_before_utc < past
    long = pki.issue(ca_dir, kind="node", name="long", days=36500)
    assert long.not_after == _cert(ca_dir / "ca.pem").not_valid_after_utc


def test_revoke_lists_serial_and_is_idempotent(ca_dir: Path) -> None:
    keep = pki.issue(ca_dir, kind="node", name="keep")
    gone = pki.issue(ca_dir, kind="analyst", name="gone", role="analyst")
    assert pki.revoke(ca_dir, kind="analyst", name="gone") == gone.serial
    assert pki.revoke(ca_dir, kind="analyst", name="gone") == gone.serial
    serials = pki.load_revoked_serials(ca_dir / "crl.pem", ca_dir / "ca.pem")
    assert serials == frozenset({gone.serial})
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    states = {info.name: info.revoked for info in pki.list_certs(ca_dir)}
    assert states == {"keep": False, "gone": True}
    assert keep.serial not in serials
    with pytest.raises(NotFound):
        pki.revoke(ca_dir, kind="node", name="never-issued")


def test_crl_signed_by_a_foreign_ca_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other", consortium="acme")  # same name, different key
    with pytest.raises(PkiError, match="not signed by this consortium's CA"):
        pki.load_revoked_serials(tmp_path / "other" / "crl.pem", ca_dir / "ca.pem")
    (tmp_path / "junk.pem").write_text("not a crl")
    with pytest.raises(PkiError, match="not a PEM CRL"):
        pki.load_revoked_serials(tmp_path / "junk.pem", ca_dir / "ca.pem")


# --- load_tls -----------------------------------------------------------------------------------


def test_load_tls_accepts_a_good_identity(ca_dir: Path) -> None:
    issued = pki.issue(ca_dir, kind="node", name="n1")
    loaded = pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "n1"))
    assert loaded.identity.serial == issued.serial
    assert loaded.files.crl == ca_dir / "crl.pem"
    assert b"PRIVATE" not in repr(loaded).encode()


def test_load_tls_missing_file(ca_dir: Path) -> None:
    with pytest.raises(PkiError, match=r"the certificate file .*n9\.pem does not exist"):
        pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "n9"))


def test_load_tls_not_pem(ca_dir: Path) -> None:
    pki.issue(ca_dir, kind="node", name="n1")
    files = pki.TlsFiles.for_identity(ca_dir, "node", "n1")
    files.cert.write_text("hello")
    with pytest.raises(PkiError, match="is not a PEM certificate"):
        pki.load_tls(files)
    pki.issue(ca_dir, kind="node", name="n1", force=True)
    files.key.write_bytes(files.cert.read_bytes())
    with pytest.raises(PkiError, match="not an unencrypted PEM private key"):
        pki.load_tls(files)


def test_load_tls_key_mismatch(ca_dir: Path) -> None:
    pki.issue(ca_dir, kind="node", name="n1")
    pki.issue(ca_dir, kind="node", name="n2")
    files = pki.TlsFiles.for_identity(ca_dir, "node", "n1")
    mixed = pki.TlsFiles(ca=files.ca, cert=files.cert, key=ca_dir / "nodes" / "n2.key")
    with pytest.raises(PkiError, match="does not match the certificate"):
        pki.load_tls(mixed)


def test_load_tls_foreign_ca(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other, consortium="acme")
    pki.issue(other, kind="node", name="intruder")
    theirs = pki.TlsFiles.for_identity(other, "node", "intruder")
    files = pki.TlsFiles(ca=ca_dir / "ca.pem", cert=theirs.cert, key=theirs.key)
    with pytest.raises(PkiError, match=r"certificate .*intruder\.pem was not issued by this consortium's CA"):
        pki.load_tls(files)


def test_load_tls_expired_and_not_yet_valid(ca_dir: Path) -> None:
    pki.issue(ca_dir, kind="node", name="old", days=30, now=dt.datetime(2020, 1, 1, tzinfo=UTC))
    with pytest.raises(PkiError, match="has expired"):
        pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "old"))
    pki.issue(ca_dir, kind="node", name="future", now=dt.datetime.now(UTC) + dt.timedelta(days=2))
    with pytest.raises(PkiError, match="not valid yet"):
        pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "future"))
    # The same files load when the injected clock says they are valid.
    later = dt.datetime.now(UTC) + dt.timedelta(days=3)
    assert (
        pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "future"), now=later).identity.name == "future"
    )


def test_load_tls_revoked_own_certificate(ca_dir: Path) -> None:
    pki.issue(ca_dir, kind="node", name="n1")
    pki.revoke(ca_dir, kind="node", name="n1")
    with pytest.raises(PkiError, match="has been revoked"):
        pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "n1"))
    files = pki.TlsFiles.for_identity(ca_dir, "node", "n1")
    without_crl = pki.TlsFiles(ca=files.ca, cert=files.cert, key=files.key)
    assert pki.load_tls(without_crl).identity.name == "n1"


def test_credentials_are_built(ca_dir: Path) -> None:
    pki.issue(ca_dir, kind="coordinator", name="co")
    pki.issue(ca_dir, kind="node", name="n1")
    assert pki.server_credentials(pki.TlsFiles.for_identity(ca_dir, "coordinator", "co")) is not None
    assert pki.channel_credentials(pki.load_tls(pki.TlsFiles.for_identity(ca_dir, "node", "n1"))) is not None


# --- peer_identity ------------------------------------------------------------------------------


class _Context:
    """Stands in for grpc.ServicerContext: only auth_context() is read."""

    def __init__(self, values: list[bytes]) -> None:
        self._values = values

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": self._values} if self._values else {}


def test_peer_identity_reads_and_caches(ca_dir: Path) -> None:
    issued = pki.issue(ca_dir, kind="analyst", name="ann", role="auditor")
    pem = issued.cert_path.read_bytes()
    before = pki.identity_from_pem.cache_info().hits
    first = pki.peer_identity(_Context([pem]))  # type: ignore[arg-type]
    second = pki.peer_identity(_Context([pem]))  # type: ignore[arg-type]
    assert first == second == PeerIdentity(name="ann", kind="analyst", role="auditor", serial=issued.serial)
    assert pki.identity_from_pem.cache_info().hits >= before + 1


def test_peer_identity_refuses_missing_or_foreign_subjects(ca_dir: Path) -> None:
    from tessera.core.errors import AuthError

    with pytest.raises(AuthError, match="no client certificate"):
        pki.peer_identity(_Context([]))  # type: ignore[arg-type]
    with pytest.raises(AuthError, match="does not name a Tessera identity"):
        pki.peer_identity(_Context([(ca_dir / "ca.pem").read_bytes()]))  # type: ignore[arg-type]


# --- verify_certificate -------------------------------------------------------------------------


def test_verify_certificate(ca_dir: Path, tmp_path: Path) -> None:
    issued = pki.issue(ca_dir, kind="node", name="n1")
    pem = issued.cert_path.read_bytes()
    ca = ca_dir / "ca.pem"
    assert pki.verify_certificate(pem, ca, kind="node").serial == issued.serial
    with pytest.raises(PkiError, match="kind is node, expected analyst"):
        pki.verify_certificate(pem, ca, kind="analyst")
    with pytest.raises(PkiError, match="revoked"):
        pki.verify_certificate(pem, ca, revoked={issued.serial})
    with pytest.raises(PkiError, match="expired or not valid yet"):
        pki.verify_certificate(pem, ca, now=issued.not_after + dt.timedelta(seconds=1))
    pki.init_ca(tmp_path / "other")
    with pytest.raises(PkiError, match="not issued by this consortium's CA"):
        pki.verify_certificate(pem, tmp_path / "other" / "ca.pem")
    with pytest.raises(PkiError, match="not a PEM certificate"):
        pki.verify_certificate(b"junk", ca)
