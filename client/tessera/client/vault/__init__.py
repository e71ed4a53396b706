"""The node's vault building blocks: field encryption, key hierarchy, blind index, PII detectors."""

from __future__ import annotations

from tessera.client.vault._rotation import ProtectedColumn, RotationProgress
from tessera.client.vault.blind_index import BlindIndexer, IdentifierKind
from tessera.client.vault.crypto import (
    DataKey,
    FieldCipher,
    FieldContext,
    Keyring,
    decrypt_field,
    encrypt_field,
)
from tessera.client.vault.kek import KekProvider, LocalKek, create_key_file
from tessera.client.vault.keys import KeyInfo, RotationResult, VaultKeys, rotate
from tessera.client.vault.pii import PiiKind, looks_like_pii

__all__ = [
    "BlindIndexer",
    "DataKey",
    "FieldCipher",
    "FieldContext",
    "IdentifierKind",
    "KekProvider",
    "KeyInfo",
    "Keyring",
    "LocalKek",
    "PiiKind",
    "ProtectedColumn",
    "RotationProgress",
    "RotationResult",
    "VaultKeys",
    "create_key_file",
    "decrypt_field",
    "encrypt_field",
    "looks_like_pii",
    "rotate",
]
