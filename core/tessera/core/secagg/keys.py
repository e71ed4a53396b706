"""Per-round key pairs, signed key advertisements and HKDF key derivation.

Each node makes two fresh X25519 key pairs per round (Bonawitz et al. 2017, §4): the *mask* pair
agrees the pairwise mask seeds, the *share* pair agrees the keys that encrypt Shamir shares for
one peer. A node advertises both public keys signed with its long-term certificate key (ECDSA
P-256, SHA-256) over (job_id, round, node_id), so a coordinator that substitutes a key is caught
by every peer. All derived keys come from HKDF-SHA256 whose ``info`` binds the job, the round,
the stage and the sorted pair of node ids, so a secret agreed for one purpose is useless for any
other.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tessera.core.errors import CryptoError
from tessera.core.secagg._util import RandomBytes, lp, lp_str
from tessera.core.types import Stage

PUBLIC_KEY_BYTES = 32
_ADVERTISE_TAG = b"tessera/secagg/v1/advertise"
_HKDF_TAG = b"tessera/secagg/v1/hkdf"


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class RoundKeys:
    """A node's two ephemeral X25519 key pairs for one round; private halves never leave it."""

    mask_private: X25519PrivateKey = field(repr=False)
    share_private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> RoundKeys:
        """Fresh keys; ``rng`` (32 bytes per key) is for reproducible tests only."""
        if rng is None:
            return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate())
        return cls(X25519PrivateKey.from_private_bytes(rng(32)), X25519PrivateKey.from_private_bytes(rng(32)))

    @property
    def mask_public(self) -> bytes:
        return public_bytes(self.mask_private.public_key())

    @property
    def share_public(self) -> bytes:
        return public_bytes(self.share_private.public_key())


@dataclass(frozen=True, slots=True)
class SignedKeys:
    """A node's advertised public keys and the signature that binds them to (job, round, node)."""

    node_id: str
    mask_public: bytes
    share_public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.mask_public) != PUBLIC_KEY_BYTES or len(self.share_public) != PUBLIC_KEY_BYTES:
            raise CryptoError("an advertised public key has the wrong length")


def advertisement_payload(
    *, job_id: str, round_no: int, node_id: str, mask_public: bytes, share_public: bytes
) -> bytes:
    """The exact bytes a node signs: a domain tag and every bound field, length-prefixed."""
    return b"".join(
        (
            lp(_ADVERTISE_TAG),
            lp_str(job_id),
            struct.pack(">Q", round_no),
            lp_str(node_id),
            lp(mask_public),
            lp(share_public),
        )
    )


def sign_keys(
    keys: RoundKeys, *, job_id: str, round_no: int, node_id: str, signing_key: ec.EllipticCurvePrivateKey
) -> SignedKeys:
    """Sign this round's public keys with the node's certificate key (ECDSA P-256, SHA-256)."""
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
        signing_key.curve, ec.SECP256R1
    ):
        raise TypeError("the signing key must be an ECDSA P-256 private key")
    payload = advertisement_payload(
        job_id=job_id,
        round_no=round_no,
        node_id=node_id,
        mask_public=keys.mask_public,
        share_public=keys.share_public,
    )
    signature = signing_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return SignedKeys(node_id, keys.mask_public, keys.share_public, signature)


def verify_keys(
    signed: SignedKeys, *, job_id: str, round_no: int, public_key: ec.EllipticCurvePublicKey
) -> None:
    """Raise :class:`CryptoError` unless ``signed`` carries a valid signature by ``public_key``.

    ``public_key`` is the peer's certificate key as the PKI delivers it; anything but P-256 is
    refused. The message names no key material.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CryptoError("a peer certificate key is not an ECDSA P-256 key")
    if not signed.signature:
        raise CryptoError("an advertised key is not signed")
    payload = advertisement_payload(
        job_id=job_id,
        round_no=round_no,
        node_id=signed.node_id,
        mask_public=signed.mask_public,
        share_public=signed.share_public,
    )
    try:
        public_key.verify(signed.signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError("an advertised key has an invalid signature") from None


def derive_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    job_id: str,
    round_no: int,
    stage: Stage,
    node_a: str,
    node_b: str,
) -> bytes:
    """A 32-byte key both ends of the pair (``node_a``, ``node_b``) derive identically.

    X25519 then HKDF-SHA256 with ``info`` = tag, job_id, round, stage and the sorted pair. A
    low-order peer key (all-zero shared secret) is refused with :class:`CryptoError`.
    """
    if node_a == node_b:
        raise ValueError("a pairwise key needs two different nodes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise CryptoError("a peer public key is unusable for key agreement") from None
    first, second = sorted((node_a, node_b))
    info = b"".join(
        (
            lp(_HKDF_TAG),
            lp_str(job_id),
            struct.pack(">Q", round_no),
            lp_str(stage.value),
            lp_str(first),
            lp_str(second),
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
