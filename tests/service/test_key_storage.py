"""What is at rest in the database: only wrapped keys, each bound to its own row.

Raw SQL through the sqlite3 module plays the attacker (or the careless operator) who can edit the
database file but does not know the master passphrase. A moved or edited wrapped key fails the
version row's MAC before it is even unwrapped (IntegrityFailure); the wrap's own AAD binding is
tested at the crypto layer (tests/unit/test_integrity.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kms.crypto.algorithms import ALGORITHMS, ENCRYPTION_ALGORITHMS, MAC_ALGORITHMS, Purpose
from kms.crypto.wrapping import KeyIdentity
from kms.errors import IntegrityFailure, UnwrapFailed
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.repository import SQLKeyRepository


def database_path(settings: Settings) -> Path:
    return Path(settings.database_dsn)


@contextlib.contextmanager
def raw_sql(settings: Settings) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(database_path(settings))) as conn, conn:
        yield conn


def copy_wrapped_key(
    settings: Settings, source: tuple[str, int], destination: tuple[str, int]
) -> None:
    with raw_sql(settings) as conn:
        updated = conn.execute(
            "UPDATE key_versions SET wrapped_key = "
            "(SELECT wrapped_key FROM key_versions WHERE key_id = ? AND version = ?) "
            "WHERE key_id = ? AND version = ?",
            (*source, *destination),
        ).rowcount
    assert updated == 1


# -- a wrapped key moved to another row does not unwrap -----------------------------------------


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_a_wrapped_key_moved_to_another_key_does_not_unwrap(
    initialised: Settings,
    service: KMSService,
    service_factory: Callable[[], KMSService],
    algorithm: str,
) -> None:
    service.create_key("victim", "encrypt", algorithm)
    service.create_key("attacker", "encrypt", algorithm)
    copy_wrapped_key(initialised, ("attacker", 1), ("victim", 1))
    # A fresh service has nothing cached: it must unwrap what is in the row.
    fresh = service_factory()
    with pytest.raises(IntegrityFailure):
        fresh.encrypt("victim", b"x")
    # The untouched key still works, so the failure is about the move and nothing else.
    assert fresh.decrypt("attacker", fresh.encrypt("attacker", b"x").ciphertext).plaintext == b"x"


def test_a_wrapped_signing_key_moved_to_another_key_does_not_unwrap(
    initialised: Settings, service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    service.create_key("victim", "sign", "Ed25519")
    service.create_key("attacker", "sign", "Ed25519")
    copy_wrapped_key(initialised, ("attacker", 1), ("victim", 1))
    with pytest.raises(IntegrityFailure):
        service_factory().sign("victim", b"x")


def test_a_wrapped_key_moved_to_another_version_does_not_unwrap(
    initialised: Settings, service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    service.create_key("rotated", "encrypt")
    old = service.encrypt("rotated", b"old").ciphertext
    service.rotate_key("rotated")
    copy_wrapped_key(initialised, ("rotated", 1), ("rotated", 2))
    fresh = service_factory()
    with pytest.raises(IntegrityFailure):
        fresh.encrypt("rotated", b"x")
    assert fresh.decrypt("rotated", old).plaintext == b"old"


def test_a_wrapped_key_under_another_purpose_or_algorithm_does_not_unwrap(
    initialised: Settings, service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    # Relabelling the key row itself (same key_id and version) must break the binding too.
    service.create_key("relabelled", "encrypt", "AES-256-GCM")
    with raw_sql(initialised) as conn:
        conn.execute("UPDATE keys SET algorithm = 'ChaCha20-Poly1305' WHERE key_id = 'relabelled'")
    with pytest.raises(IntegrityFailure):
        service_factory().encrypt("relabelled", b"x")


def test_an_edited_wrapped_key_does_not_unwrap(
    initialised: Settings, service: KMSService, service_factory: Callable[[], KMSService]
) -> None:
    service.create_key("edited", "encrypt")
    with raw_sql(initialised) as conn:
        (blob,) = conn.execute(
            "SELECT wrapped_key FROM key_versions WHERE key_id = 'edited'"
        ).fetchone()
        assert blob[:1] == b"\x04"  # wrap format 4; relabelled as 3 or as an unknown 5, refused
        for edited in (
            blob[:-1] + bytes([blob[-1] ^ 1]),
            blob[:20],
            b"\x03" + blob[1:],
            b"\x05" + blob[1:],
        ):
            conn.execute(
                "UPDATE key_versions SET wrapped_key = ? WHERE key_id = 'edited'", (edited,)
            )
            conn.commit()
            with pytest.raises(IntegrityFailure):
                service_factory().encrypt("edited", b"x")


# -- no key material at rest -------------------------------------------------------------------


def core_secrets(algorithm: str, secret: bytes) -> list[bytes]:
    """The numbers that alone give a key away: the raw key, seed, scalar, exponent or primes.

    The stored PKCS#8 DER of an asymmetric key also holds fixed headers and public parts, which
    are rightly on disk; these core values hold nothing public.
    """
    if algorithm in ENCRYPTION_ALGORITHMS or algorithm in MAC_ALGORITHMS:  # a raw key
        return [secret]
    # Only the numbers are wanted here: checking an RSA key's consistency (about half a second
    # for a 4096-bit one) is kms's business when it loads the key, tested elsewhere.
    private_key = serialization.load_der_private_key(
        secret, password=None, unsafe_skip_rsa_key_validation=True
    )
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return [private_key.private_bytes_raw()]
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        size = (private_key.curve.key_size + 7) // 8
        return [private_key.private_numbers().private_value.to_bytes(size, "big")]
    assert isinstance(private_key, rsa.RSAPrivateKey)
    numbers = private_key.private_numbers()
    return [
        value.to_bytes((value.bit_length() + 7) // 8, "big")
        for value in (numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp)
    ]


def windows(value: bytes, size: int = 16) -> list[bytes]:
    """Every 16-byte slice: a secret split across pages or partly leaked still shows up."""
    return [value[i : i + size] for i in range(max(1, len(value) - size + 1))]


def test_no_key_material_is_stored_in_the_clear(
    initialised: Settings,
    repository: SQLKeyRepository,
    keyring: RootKeyring,
    service: KMSService,
) -> None:
    for algorithm, spec in ALGORITHMS.items():
        key_id = f"key-{algorithm}"
        service.create_key(key_id, spec.purpose.value, algorithm)
        if not algorithm.endswith("-4096"):  # one 4096-bit key per kind is slow enough
            service.rotate_key(key_id)
        # Use each key once so that anything a use might write would be on disk too.
        if spec.purpose is Purpose.ENCRYPT:
            service.decrypt(key_id, service.encrypt(key_id, b"x").ciphertext)
        elif spec.purpose is Purpose.MAC:
            service.mac(key_id, b"x")
        else:
            service.sign(key_id, b"x")

    stored: dict[str, bytes] = {}
    wrapped: list[bytes] = []
    for key in service.list_keys():
        for version in repository.list_versions(key.key_id):
            record = repository.get_key(key.key_id)
            aad = KeyIdentity(
                key.key_id, version.version, key.purpose, key.algorithm, record.incarnation
            )
            stored[f"{key.key_id} v{version.version}"] = bytes(
                keyring.unwrap(version.wrapped_key, aad)
            )
            wrapped.append(version.wrapped_key)
    assert len(stored) == 2 * len(ALGORITHMS) - 2

    # Close every connection so SQLite checkpoints; then read whatever files it left.
    repository.close()
    path = database_path(initialised)
    files = sorted(path.parent.glob(path.name + "*"))
    assert path in files
    at_rest = b"".join(file.read_bytes() for file in files)

    # The search must be able to find what is there: the wrapped blobs are on disk.
    for blob in wrapped:
        assert blob in at_rest
    found = [label for label, secret in stored.items() if secret in at_rest]
    found += [
        f"{label}: {len(core)}-byte core value"
        for label, secret in stored.items()
        for core in core_secrets(label.split()[0].removeprefix("key-"), secret)
        if any(window in at_rest for window in windows(core))
    ]
    assert found == []


def test_a_trim_deletes_the_wrapped_keys_of_the_versions_below_it(
    initialised: Settings, service: KMSService
) -> None:
    """docs/api.md, key states: a trim destroys the versions below ``min_available_version`` for
    good; their wrapped keys leave the database (not only the API's view), the others stay."""
    service.create_key("trimmed")
    service.create_key("beside")
    for _ in range(3):
        service.rotate_key("trimmed")
        service.rotate_key("beside")
    service.update_key("trimmed", min_decryption_version=3)
    service.trim_key("trimmed", min_available_version=3)
    with raw_sql(initialised) as conn:
        rows = conn.execute(
            "SELECT key_id, version FROM key_versions ORDER BY key_id, version"
        ).fetchall()
    assert rows == [("beside", 1), ("beside", 2), ("beside", 3), ("beside", 4)] + [
        ("trimmed", 3),
        ("trimmed", 4),
    ]


def test_readiness_fails_once_the_master_key_no_longer_opens_the_init_marker(
    initialised: Settings, service: KMSService
) -> None:
    """docs/operations.md, health: ready means the database answers *and* the master key unwraps
    the init marker; a marker replaced behind kms (another keystore's database) is not ready."""
    service.check_ready()
    with raw_sql(initialised) as conn:
        (marker,) = conn.execute(
            "SELECT value FROM kms_metadata WHERE name = 'init_marker'"
        ).fetchone()
        changed = bytes(marker[:-1]) + bytes([marker[-1] ^ 1])
        conn.execute("UPDATE kms_metadata SET value = ? WHERE name = 'init_marker'", (changed,))
    with pytest.raises(UnwrapFailed):
        service.check_ready()
