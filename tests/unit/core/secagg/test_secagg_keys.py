"""Signed key advertisements and HKDF key derivation."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tessera.core.errors import CryptoError
from tessera.core.secagg.keys import EpochKeys, SignedKeys, derive_key, sign_keys, verify_keys
from tessera.core.types import Stage

PARAMS = b"\x11" * 32


@pytest.fixture(scope="module")
def cert_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _signed(cert_key: ec.EllipticCurvePrivateKey, seed: int = 1) -> SignedKeys:
    keys = EpochKeys.generate(np.random.default_rng(seed).bytes)
    return sign_keys(keys, job_id="job-1", epoch=3, node_id="bank", params=PARAMS, signing_key=cert_key)


def test_valid_advertisement_verifies(cert_key: ec.EllipticCurvePrivateKey) -> None:
    verify_keys(_signed(cert_key), job_id="job-1", epoch=3, params=PARAMS, public_key=cert_key.public_key())


@pytest.mark.parametrize("field", ["mask_public", "share_public"])
def test_substituted_key_is_refused(cert_key: ec.EllipticCurvePrivateKey, field: str) -> None:
    other = EpochKeys.generate(np.random.default_rng(99).bytes)
    forged = dataclasses.replace(_signed(cert_key), **{field: getattr(other, field)})
    with pytest.raises(CryptoError, match="invalid signature"):
        verify_keys(forged, job_id="job-1", epoch=3, params=PARAMS, public_key=cert_key.public_key())


def test_unsigned_key_is_refused(cert_key: ec.EllipticCurvePrivateKey) -> None:
    unsigned = dataclasses.replace(_signed(cert_key), signature=b"")
    with pytest.raises(CryptoError, match="not signed"):
        verify_keys(unsigned, job_id="job-1", epoch=3, params=PARAMS, public_key=cert_key.public_key())


@pytest.mark.parametrize(
    ("job", "epoch", "node", "params"),
    [
        ("job-2", 3, "bank", PARAMS),
        ("job-1", 4, "bank", PARAMS),
        ("job-1", 3, "telco", PARAMS),
        ("job-1", 3, "bank", b"\x12" * 32),  # the signer accepted other security parameters
    ],
)
def test_binding_is_signed(
    cert_key: ec.EllipticCurvePrivateKey, job: str, epoch: int, node: str, params: bytes
) -> None:
    ad = dataclasses.replace(_signed(cert_key), node_id=node)
    with pytest.raises(CryptoError):
        verify_keys(ad, job_id=job, epoch=epoch, params=params, public_key=cert_key.public_key())


def test_other_signer_and_other_curve_are_refused(cert_key: ec.EllipticCurvePrivateKey) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CryptoError):
        verify_keys(
            _signed(cert_key), job_id="job-1", epoch=3, params=PARAMS, public_key=impostor.public_key()
        )
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(CryptoError, match="P-256"):
        verify_keys(_signed(cert_key), job_id="job-1", epoch=3, params=PARAMS, public_key=p384.public_key())
    with pytest.raises(TypeError):
        sign_keys(EpochKeys.generate(), job_id="j", epoch=1, node_id="n", params=PARAMS, signing_key=p384)


def test_wrong_length_public_key_is_refused() -> None:
    with pytest.raises(CryptoError):
        SignedKeys("bank", b"\x01" * 31, b"\x02" * 32, b"sig")


def _derive(private: X25519PrivateKey, peer: X25519PrivateKey, **overrides: object) -> bytes:
    args: dict[str, Any] = {
        "job_id": "job-1",
        "epoch": 1,
        "round_no": 1,
        "stage": Stage.MASKED_INPUT,
        "node_a": "a",
        "node_b": "b",
    }
    args.update(overrides)
    peer_public = EpochKeys(peer, peer).mask_public
    return derive_key(private, peer_public, **args)


def test_derived_key_is_symmetric_and_bound() -> None:
    rng = np.random.default_rng(3)
    a = X25519PrivateKey.from_private_bytes(rng.bytes(32))
    b = X25519PrivateKey.from_private_bytes(rng.bytes(32))
    key = _derive(a, b)
    assert len(key) == 32
    assert key == _derive(b, a, node_a="b", node_b="a")  # the pair is sorted
    variants = [
        _derive(a, b, job_id="job-2"),
        _derive(a, b, round_no=2),
        _derive(a, b, epoch=2),
        _derive(a, b, stage=Stage.SHARE_KEYS),
        _derive(a, b, node_b="c"),
    ]
    assert len({key, *variants}) == 6


def test_low_order_peer_key_is_refused() -> None:
    with pytest.raises(CryptoError):
        derive_key(
            X25519PrivateKey.generate(),
            bytes(32),
            job_id="j",
            epoch=1,
            round_no=1,
            stage=Stage.MASKED_INPUT,
            node_a="a",
            node_b="b",
        )
