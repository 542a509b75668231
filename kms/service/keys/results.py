"""What the key service answers: plain, frozen values, free of key rows and of HTTP.

Results that carry secrets (``Decrypted``, ``DataKey``) leave them out of their ``repr``. Each
result of a cryptographic operation carries the key's algorithm for the metrics; it is not part
of any answer, and a client that rebuilds a result from an answer leaves it "unknown".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from kms.store.records import KeyVersionSummary

#: The algorithm of a result whose key is not known (a client's result rebuilt from an answer).
UNKNOWN_ALGORITHM = "unknown"


@dataclass(frozen=True)
class KeyPage:
    """A page of a key listing. ``next_after`` is where the next page starts (pass it as
    ``after``), None when the listing reached the last key: a page may be short, even empty,
    and still have a ``next_after`` when the rows examined for it ran out (MAX_ROWS_EXAMINED).
    ``rows_examined`` is how many key rows the database returned for it."""

    keys: list[KeyInfo]
    next_after: str | None
    rows_examined: int


@dataclass(frozen=True)
class AliasInfo:
    """An alias and the key it names. ``implicit``: the alias of a key's own key_id, which
    every key has and which is no row."""

    alias_name: str
    key_id: str
    created_at: datetime
    updated_at: datetime
    implicit: bool = False


@dataclass(frozen=True)
class AliasPage:
    """A page of an alias listing; ``next_after`` as ``KeyPage``'s (an opaque cursor)."""

    aliases: list[AliasInfo]
    next_after: str | None
    rows_examined: int


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    created_at: datetime
    #: Encryptions counted against the version's limit (blocks reserved by running processes
    #: included), decryptions (flushed every few seconds) and the last use.
    encryptions: int
    decryptions: int
    last_used_at: datetime | None


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    purpose: str
    algorithm: str
    version: int
    created_at: datetime
    state: str
    description: str
    labels: dict[str, str]
    min_decryption_version: int
    min_available_version: int
    deletion_allowed: bool
    pending_deletion_at: datetime | None
    use_attempts_while_pending: int
    last_use_attempt: dict[str, str] | None
    key_versions: tuple[KeyVersionInfo, ...]
    rotation_period: str | None
    next_rotation_at: datetime | None
    max_encryptions_per_version: int | None


@dataclass(frozen=True)
class Rotated:
    """A key ``rotate_due`` rotated: its new version."""

    key_id: str
    version: int


@dataclass(frozen=True)
class PublicKeyInfo:
    key_id: str
    version: int
    algorithm: str
    public_key: str  # PEM, SubjectPublicKeyInfo


@dataclass(frozen=True)
class Encrypted:
    key_id: str
    version: int
    ciphertext: str
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class Decrypted:
    key_id: str
    version: int
    plaintext: bytes
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)

    def __repr__(self) -> str:
        return f"Decrypted(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class DataKey:
    """A data key: ``ciphertext`` is its encrypted form, ``plaintext`` (None unless asked for)
    the key itself."""

    key_id: str
    version: int
    ciphertext: str
    plaintext: bytes | None
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r}, version={self.version})"


@dataclass(frozen=True)
class Signed:
    key_id: str
    version: int
    signature: bytes
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class MACed:
    key_id: str
    version: int
    mac: bytes
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass(frozen=True)
class Verified:
    key_id: str
    valid: bool
    version: int | None
    algorithm: str = field(default=UNKNOWN_ALGORITHM, compare=False)


@dataclass
class IntegrityReport:
    """What ``check_integrity`` looked at, and a line per row that failed."""

    keys: int = 0
    versions: int = 0
    failures: list[str] = field(default_factory=list)
    #: The keystore epoch in the database (None: unreadable), and the newest the audit trail
    #: records (None: no trail given).
    epoch: int | None = None
    trail_epoch: int | None = None
    #: How long the master-key backend took to open the root secret (``kms check`` says).
    root_secret_seconds: float | None = None


def version_info(summary: KeyVersionSummary) -> KeyVersionInfo:
    return KeyVersionInfo(
        version=summary.version,
        created_at=summary.created_at,
        encryptions=summary.encryptions,
        decryptions=summary.decryptions,
        last_used_at=summary.last_used_at,
    )


def last_use_attempt(stored: str | None) -> dict[str, str] | None:
    # Bookkeeping outside the MAC: shown as stored if it has the expected shape, else dropped.
    if stored is None:
        return None
    try:
        attempt = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(attempt, dict) or set(attempt) != {"at", "caller", "operation"}:
        return None
    return {name: str(value) for name, value in attempt.items()}
