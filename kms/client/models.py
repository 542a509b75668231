"""Typed results of the client's calls: frozen dataclasses, bytes for binary values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class KeyVersion:
    version: int
    created_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyVersion:
        return cls(version=data["version"], created_at=datetime.fromisoformat(data["created_at"]))


@dataclass(frozen=True)
class Key:
    key_id: str
    purpose: str
    algorithm: str
    version: int
    created_at: datetime
    #: Only from ``get_key``: the newest 100 versions.
    key_versions: tuple[KeyVersion, ...] = field(default=())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Key:
        return cls(
            key_id=data["key_id"],
            purpose=data["purpose"],
            algorithm=data["algorithm"],
            version=data["version"],
            created_at=datetime.fromisoformat(data["created_at"]),
            key_versions=tuple(KeyVersion.from_json(v) for v in data.get("key_versions", ())),
        )


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    version: int
    algorithm: str
    #: PEM (SubjectPublicKeyInfo).
    public_key: str


@dataclass(frozen=True)
class Encrypted:
    ciphertext: str
    key_id: str
    version: int


@dataclass(frozen=True)
class Signature:
    signature: bytes
    key_id: str
    version: int


@dataclass(frozen=True)
class DataKey:
    """A data key from ``/v1/kms/datakey``: ``ciphertext`` is it wrapped under ``key_id`` (it
    decrypts through ``/v1/kms/decrypt``); ``plaintext`` is the key itself, when asked for."""

    ciphertext: str
    key_id: str
    version: int
    plaintext: bytes | None = field(default=None, repr=False)
