"""A node's own check of the coordinator's certificate before it dials (issue 12, items 6 and 13).

gRPC's Python channel verifies the chain to the consortium CA and the host name, but it cannot
check a revocation list and cannot show the node the certificate it received; its failures all read
as ``UNAVAILABLE``. So before each connection the node makes one TLS handshake of its own to the
same address with the same CA and client certificate, and:

* refuses a coordinator certificate whose serial is on the consortium's CRL (``crl.pem`` beside
  ``ca.pem``, re-read at every connection) — revoking a stolen coordinator key stops nodes;
* names the real cause when the handshake fails: a certificate that does not hold the dialled host
  name (with the names it does hold), or one from another CA.

Limit: an attacker on the network path who can tell this handshake from gRPC's own could pass this
one through to the real coordinator; the check stops a revoked coordinator reached by name.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509

from tessera.core.errors import PkiError
from tessera.core.pki.crl import load_revoked_serials
from tessera.core.pki.tls import TlsFiles


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); ``PkiError`` if it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PkiError(f"the coordinator address {address!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def _context(files: TlsFiles, *, check_hostname: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.check_hostname = check_hostname
    context.set_alpn_protocols(["h2"])
    return context


def _handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> x509.Certificate:
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise PkiError("the coordinator presented no certificate")
    return x509.load_der_x509_certificate(der)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def check_coordinator(address: str, files: TlsFiles, *, timeout: float = 5.0) -> x509.Certificate | None:
    """Handshake with the coordinator at ``address``; raise ``PkiError`` with the cause if its
    certificate is revoked, names another host or comes from another CA. Returns the certificate,
    or None when the address does not answer (gRPC's reconnect deals with that)."""
    host, port = split_address(address)
    try:
        cert = _handshake(host, port, _context(files, check_hostname=True), timeout)
    except ssl.SSLCertVerificationError as exc:
        message = exc.verify_message or ""
        if "mismatch" in message:
            try:
                cert = _handshake(host, port, _context(files, check_hostname=False), timeout)
                held = ", ".join(_names(cert)) or "no host name"
            except (OSError, PkiError):
                held = "other names"
            raise PkiError(
                f"the coordinator's certificate is not valid for {host} (it names {held}): dial one of "
                f"those names, or issue the coordinator certificate again with --host {host}"
            ) from None
        raise PkiError(
            f"the coordinator's certificate was not accepted ({message or 'verification failed'}): "
            "do both sides trust the same consortium CA?"
        ) from None
    except (OSError, ssl.SSLError):
        return None  # not reachable (or the handshake broke): gRPC reports and retries
    crl = files.crl or Path(files.ca).parent / "crl.pem"
    if crl.exists() and cert.serial_number in load_revoked_serials(crl, files.ca):
        raise PkiError(
            f"the coordinator's certificate (serial {cert.serial_number:x}) is on the consortium's "
            "revocation list; refusing to connect"
        )
    return cert
