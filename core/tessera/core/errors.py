"""The one error hierarchy of Tessera.

Every error has a stable ``code`` (dotted, lower-case) that tools and tests can rely on, and a
message that is one plain sentence a user can act on. Messages must never carry data values, PII,
key material or per-node vectors: name the field, the file or the rule, never the value.
Translation to gRPC status codes happens in one place (``tessera.core.grpc_status``).
"""

from __future__ import annotations


class TesseraError(Exception):
    """Root of every error Tessera raises on purpose."""

    code = "tessera.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigError(TesseraError):
    """A settings file, a path or a command-line value is missing or wrong."""

    code = "config.invalid"


class PolicyError(TesseraError):
    """A policy file is malformed, contradictory or unknown keys/types are present."""

    code = "policy.invalid"


class PolicyViolation(TesseraError):
    """A job or an action is forbidden by a policy; becomes a node's veto."""

    code = "policy.violation"


class PkiError(TesseraError):
    """A certificate, key or revocation list cannot be made, read or trusted."""

    code = "pki.invalid"


class AuthError(TesseraError):
    """A caller is not authenticated or its role does not allow the call."""

    code = "auth.denied"


class NotFound(TesseraError):
    """A job, node or other named object does not exist."""

    code = "not_found"


class InvalidRequest(TesseraError):
    """A request is malformed: missing fields, bad values, wrong stage or binding."""

    code = "request.invalid"


class Conflict(TesseraError):
    """The request conflicts with the current state (e.g. a job that already ended)."""

    code = "state.conflict"


class Unavailable(TesseraError):
    """A peer (coordinator, database) cannot be reached now; retrying may help."""

    code = "unavailable"


class StoreError(TesseraError):
    """The coordinator store or a node database failed or has an unknown schema."""

    code = "store.error"


class CryptoError(TesseraError):
    """A cryptographic check failed (bad tag, bad signature, wrong key). Deliberately opaque."""

    code = "crypto.failed"
