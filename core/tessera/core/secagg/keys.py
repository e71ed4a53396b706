"""Per-epoch key pairs, signed key advertisements and HKDF key derivation.

Each node makes two fresh X25519 key pairs per *epoch* of a job (Bonawitz et al. 2017, §4, made
to last several rounds): the *mask* pair agrees the pairwise mask seeds, the *share* pair agrees
the keys that encrypt Shamir shares for one peer. A node advertises both public keys signed with
its long-term certificate key (ECDSA P-256, SHA-256) over (job_id, epoch, node_id, digest of the
security parameters), so a coordinator that substitutes a key -- or hands nodes different
parameters -- is caught by every peer. All derived keys come from HKDF-SHA256 whose ``info``
binds the job, the epoch, the round, the stage and the sorted pair of node ids, so a secret agreed
for one purpose or round is useless for any other: each round's pairwise masks are fresh.
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
_ADVERTISE_TAG = b"tessera/secagg/v2/advertise"
_HKDF_TAG = b"tessera/secagg/v2/hkdf"


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class EpochKeys:
    """A node's two ephemeral X25519 key pairs for one epoch; private halves never leave it."""

    mask_private: X25519PrivateKey = field(repr=False)
    share_private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, rng: RandomBytes | None = None) -> EpochKeys:
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
    """A node's advertised public keys and the signature binding them to (job, epoch, node, params)."""

    node_id: str
    mask_public: bytes
    share_public: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if len(self.mask_public) != PUBLIC_KEY_BYTES or len(self.share_public) != PUBLIC_KEY_BYTES:
            raise CryptoError("an advertised public key has the wrong length")


def advertisement_payload(
    *, job_id: str, epoch: int, node_id: str, mask_public: bytes, share_public: bytes, params: bytes
) -> bytes:
    """The exact bytes a node signs: a domain tag and every bound field, length-prefixed.

    ``params`` is the digest of the epoch's security parameters (:attr:`EpochConfig.params_digest`).
    """
    return b"".join(
        (
            lp(_ADVERTISE_TAG),
            lp_str(job_id),
            struct.pack(">Q", epoch),
            lp_str(node_id),
            lp(mask_public),
            lp(share_public),
            lp(params),
        )
    )


def check_signing_key(signing_key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey) or not isinstance(
        signing_key.curve, ec.SECP256R1
    ):
        raise TypeError("the signing key must be an ECDSA P-256 private key")
    return signing_key


def check_peer_key(public_key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CryptoError("a peer certificate key is not an ECDSA P-256 key")
    return public_key


def sign_keys(
    keys: EpochKeys,
    *,
    job_id: str,
    epoch: int,
    node_id: str,
    params: bytes,
    signing_key: ec.EllipticCurvePrivateKey,
) -> SignedKeys:
    """Sign the epoch's public keys with the node's certificate key (ECDSA P-256, SHA-256)."""
    payload = advertisement_payload(
        job_id=job_id,
        epoch=epoch,
        node_id=node_id,
        mask_public=keys.mask_public,
        share_public=keys.share_public,
        params=params,
    )
    signature = check_signing_key(signing_key).sign(payload, ec.ECDSA(hashes.SHA256()))
    return SignedKeys(node_id, keys.mask_public, keys.share_public, signature)


def verify_keys(
    signed: SignedKeys,
    *,
    job_id: str,
    epoch: int,
    params: bytes,
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    """Raise :class:`CryptoError` unless ``signed`` carries a valid signature by ``public_key``.

    ``public_key`` is the peer's certificate key as the PKI delivers it; anything but P-256 is
    refused. A peer that signed other security parameters (``params``) fails here too: it would
    build another graph or accept another threshold. The message names no key material.
    """
    key = check_peer_key(public_key)
    if not signed.signature:
        raise CryptoError("an advertised key is not signed")
    payload = advertisement_payload(
        job_id=job_id,
        epoch=epoch,
        node_id=signed.node_id,
        mask_public=signed.mask_public,
        share_public=signed.share_public,
        params=params,
    )
    try:
        key.verify(signed.signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CryptoError(
            "an advertised key has an invalid signature (altered, or signed for other security parameters)"
        ) from None


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The raw X25519 shared secret; a low-order peer key is refused with :class:`CryptoError`."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise CryptoError("a peer public key is unusable for key agreement") from None


def hkdf_pair(
    shared: bytes, *, job_id: str, epoch: int, round_no: int, stage: Stage, node_a: str, node_b: str
) -> bytes:
    """A 32-byte key from an agreed secret: HKDF-SHA256 with ``info`` = tag, job_id, epoch,
    round, stage and the sorted pair; both ends of the pair derive the same key."""
    if node_a == node_b:
        raise ValueError("a pairwise key needs two different nodes")
    first, second = sorted((node_a, node_b))
    info = b"".join(
        (
            lp(_HKDF_TAG),
            lp_str(job_id),
            struct.pack(">QQ", epoch, round_no),
            lp_str(stage.value),
            lp_str(first),
            lp_str(second),
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def derive_key(
    private: X25519PrivateKey,
    peer_public: bytes,
    *,
    job_id: str,
    epoch: int,
    round_no: int,
    stage: Stage,
    node_a: str,
    node_b: str,
) -> bytes:
    """:func:`agree` then :func:`hkdf_pair` (one call, for parties that do not cache secrets)."""
    return hkdf_pair(
        agree(private, peer_public),
        job_id=job_id,
        epoch=epoch,
        round_no=round_no,
        stage=stage,
        node_a=node_a,
        node_b=node_b,
    )
