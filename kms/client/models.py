"""Typed results of the client's calls: frozen dataclasses, bytes for binary values."""

from __future__ import annotations

from collections.abc import Mapping
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
    #: ``enabled``, ``disabled`` or ``pending_deletion`` (the defaults: what an older kms, which
    #: has no key states, means).
    state: str = "enabled"
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    min_decryption_version: int = 1
    min_available_version: int = 1
    deletion_allowed: bool = True
    pending_deletion_at: datetime | None = None
    use_attempts_while_pending: int = 0
    #: ``{"at", "caller", "operation"}`` of the last use refused while deletion was pending.
    last_use_attempt: Mapping[str, str] | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Key:
        pending = data.get("pending_deletion_at")
        return cls(
            key_id=data["key_id"],
            purpose=data["purpose"],
            algorithm=data["algorithm"],
            version=data["version"],
            created_at=datetime.fromisoformat(data["created_at"]),
            key_versions=tuple(KeyVersion.from_json(v) for v in data.get("key_versions", ())),
            state=data.get("state", "enabled"),
            description=data.get("description", ""),
            labels=dict(data.get("labels") or {}),
            min_decryption_version=data.get("min_decryption_version", 1),
            min_available_version=data.get("min_available_version", 1),
            deletion_allowed=data.get("deletion_allowed", True),
            pending_deletion_at=datetime.fromisoformat(pending) if pending else None,
            use_attempts_while_pending=data.get("use_attempts_while_pending", 0),
            last_use_attempt=data.get("last_use_attempt"),
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
class MAC:
    mac: bytes
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
