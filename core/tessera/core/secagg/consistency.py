"""The consistency check (Bonawitz et al. 2017, §4, round "ConsistencyCheck").

Between MASKED_INPUT and UNMASK every survivor signs, with its certificate key (ECDSA P-256,
SHA-256), the round's view it is about to act on: (job, epoch, round, A_r, U3, parameter digest).
Before revealing any share a node requires valid signatures of at least ``threshold`` distinct
participants on exactly the bytes it signed itself. Why that suffices is argued in
:mod:`.security` (point 1). Cost: one signature per node and round, and one verification per
listed signer (about 0.1 ms each).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core.errors import CryptoError
from tessera.core.secagg._util import lp, lp_str
from tessera.core.secagg.keys import check_peer_key, check_signing_key
from tessera.core.secagg.protocol import EpochConfig

_TAG = b"tessera/secagg/v2/consistency"
_ECDSA = ec.ECDSA(hashes.SHA256())


def payload(config: EpochConfig, *, round_no: int, active: Iterable[str], survivors: Iterable[str]) -> bytes:
    """The exact bytes each survivor signs (sets sorted, every field length-prefixed)."""
    active_s, survivors_s = sorted(active), sorted(survivors)
    return b"".join(
        (
            lp(_TAG),
            lp_str(config.job_id),
            struct.pack(">QQ", config.epoch, round_no),
            lp(config.params_digest),
            struct.pack(">I", len(active_s)),
            *(lp_str(v) for v in active_s),
            struct.pack(">I", len(survivors_s)),
            *(lp_str(v) for v in survivors_s),
        )
    )


def sign(data: bytes, signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    return check_signing_key(signing_key).sign(data, _ECDSA)


def verify_one(data: bytes, signature: bytes, key: ec.EllipticCurvePublicKey | None) -> None:
    """Raise :class:`CryptoError` unless ``signature`` by ``key`` is valid on ``data``."""
    if key is None:
        raise CryptoError("a consistency signer has no certificate key")
    try:
        check_peer_key(key).verify(signature, data, _ECDSA)
    except InvalidSignature:
        raise CryptoError(
            "a consistency signature does not match this node's view of the round "
            "(the coordinator told nodes different survivor sets, or altered a signature)"
        ) from None


def verify_quorum(
    data: bytes,
    signatures: Iterable[tuple[str, bytes]],
    *,
    eligible: frozenset[str],
    peer_keys: Mapping[str, ec.EllipticCurvePublicKey],
    threshold: int,
) -> frozenset[str]:
    """The signers, if every listed signature is valid on ``data`` and at least ``threshold``
    distinct ``eligible`` nodes signed; otherwise :class:`CryptoError` (any mismatch aborts)."""
    signers: set[str] = set()
    for signer, signature in signatures:
        if signer in signers or signer not in eligible:
            raise CryptoError(
                "a consistency signature is repeated or comes from a node outside the survivors"
            )
        verify_one(data, signature, peer_keys.get(signer))
        signers.add(signer)
    if len(signers) < threshold:
        raise CryptoError(
            f"only {len(signers)} survivors signed this node's view of the round, "
            f"the threshold is {threshold}"
        )
    return frozenset(signers)
