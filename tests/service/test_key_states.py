"""Key states at the service, on a real SQLite file and PostgreSQL: disabled keys, the decryption
fence and trims, ``deletion_allowed``, scheduled deletion and ``destroy-due``'s library call.

What the state rules decide is unit-tested on plain records (tests/unit/test_key_rules.py); here
the same rules run through the service and the database: a state is stored, not remembered by a
worker, a trim destroys rows, a refusal changes nothing. tests/http/test_key_states.py checks
that each route answers these refusals with the right status and body.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from kms.app import create_app
from kms.errors import (
    DeletionNotAllowed,
    FencedCiphertext,
    InvalidCiphertext,
    InvalidRequest,
    KeyDisabled,
    KeyNotFound,
    KeyPendingDeletion,
    KeyStateConflict,
    VersionBelowMinimum,
)
from kms.master import destroy_due_keys
from kms.service.keys import CURRENT_REQUESTER, KMSService, Requester
from kms.settings import Settings
from kms.store.records import utc_now
from tests.helpers.keystore import Store
from tests.helpers.tls import client_as

MESSAGE = b"m"


def versions_stored(store: Store, key_id: str) -> list[int]:
    return [
        row[0]
        for row in store.rows(
            "SELECT version FROM key_versions WHERE key_id = :k ORDER BY version", k=key_id
        )
    ]


def every_crypto_operation(
    service: KMSService, enc: str, sig: str, ciphertext: str, signature: bytes
) -> dict[str, Callable[[], object]]:
    """One call of each cryptographic operation on an encryption key and a signing key."""
    return {
        "encrypt": lambda: service.encrypt(enc, b"x"),
        "decrypt": lambda: service.decrypt(enc, ciphertext),
        "sign": lambda: service.sign(sig, MESSAGE),
        "verify": lambda: service.verify(sig, MESSAGE, signature),
        "public_key": lambda: service.public_key(sig),
    }


def test_a_disabled_key_is_stored_so_refuses_use_everywhere_and_keeps_its_material(
    store: Store,
) -> None:
    service = store.service()
    service.create_key("enc")
    service.create_key("sig", "sign", "Ed25519")
    ciphertext = service.encrypt("enc", b"before").ciphertext
    signature = service.sign("sig", MESSAGE).signature
    for key_id in ("enc", "sig"):
        assert service.disable_key(key_id).state == "disabled"

    # Another worker (its own engine, nothing cached) reads the state from the database.
    other = store.service()
    for name, operation in every_crypto_operation(
        other, "enc", "sig", ciphertext, signature
    ).items():
        with pytest.raises(KeyDisabled):
            operation()
            pytest.fail(f"{name} on a disabled key")
    assert other.get_key("enc").state == "disabled"
    assert {"enc", "sig"} <= {key.key_id for key in other.list_keys(state="disabled")}
    # Still rotatable; its material is kept.
    rotated = other.rotate_key("enc")
    assert (rotated.version, rotated.state) == (2, "disabled")
    assert versions_stored(store, "enc") == [1, 2]

    for key_id in ("enc", "sig"):
        assert other.enable_key(key_id).state == "enabled"
    for operation in every_crypto_operation(service, "enc", "sig", ciphertext, signature).values():
        operation()
    assert service.decrypt("enc", ciphertext).plaintext == b"before"
    assert service.encrypt("enc", b"after").version == 2
    assert service.verify("sig", MESSAGE, signature).valid


def test_metadata_is_stored_and_the_list_filters_by_label_and_state(store: Store) -> None:
    service = store.service()
    created = service.create_key("meta-a", description="orders at rest", labels={"team": "t"})
    assert (created.description, created.labels, created.deletion_allowed) == (
        "orders at rest",
        {"team": "t"},
        True,
    )
    service.create_key("meta-b", labels={"team": "t", "env": "prod"})
    service.create_key("meta-c", labels={"team": "other"})
    changed = service.update_key(
        "meta-b", description="billing", labels={"team": "t", "env": "dev:eu"}
    )
    assert (changed.description, changed.labels) == ("billing", {"env": "dev:eu", "team": "t"})

    other = store.service()

    def listed(**filters: Any) -> list[str]:
        return [key.key_id for key in other.list_keys(**filters)]

    assert other.get_key("meta-b").labels == {"env": "dev:eu", "team": "t"}
    assert listed(label="team:t") == ["meta-a", "meta-b"]
    assert listed(label="env:dev:eu") == ["meta-b"]  # the value may hold colons
    assert listed(label="team:t", limit=1) == ["meta-a"]
    assert listed(label="team:t", limit=1, after="meta-a") == ["meta-b"]
    other.disable_key("meta-a")
    assert listed(label="team:t", state="disabled") == ["meta-a"]
    assert listed(label="team:t", state="enabled") == ["meta-b"]
    for bad in ("team", "bad name:t"):
        with pytest.raises(InvalidRequest):
            other.list_keys(label=bad)


def test_the_decryption_fence_moves_within_the_kept_versions_and_a_trim_destroys_below_it(
    store: Store,
) -> None:
    service = store.service()
    service.create_key("fence")
    ciphertexts = [service.encrypt("fence", b"under v1").ciphertext]
    for version in (2, 3):
        service.rotate_key("fence")
        ciphertexts.append(service.encrypt("fence", f"under v{version}".encode()).ciphertext)

    assert service.update_key("fence", min_decryption_version=2).min_decryption_version == 2
    with pytest.raises(FencedCiphertext):
        service.decrypt("fence", ciphertexts[0])
    assert service.decrypt("fence", ciphertexts[1]).plaintext == b"under v2"
    with pytest.raises(InvalidRequest) as above:
        service.update_key("fence", min_decryption_version=4)
    assert above.value.public_message == (
        "min_decryption_version must be from 1 (the oldest version kept) to 3 (the latest version)"
    )
    service.update_key("fence", min_decryption_version=1)  # lowered again
    assert service.decrypt("fence", ciphertexts[0]).plaintext == b"under v1"

    # Trim only what is already fenced off.
    service.update_key("fence", min_decryption_version=2)
    with pytest.raises(KeyStateConflict) as too_far:
        service.trim_key("fence", 3)
    assert too_far.value.public_message == (
        "min_available_version must not exceed min_decryption_version (2); raise that first"
    )
    assert versions_stored(store, "fence") == [1, 2, 3]
    trimmed = service.trim_key("fence", 2)
    assert (trimmed.min_available_version, trimmed.version) == (2, 3)
    assert versions_stored(store, "fence") == [2, 3]  # version 1's row is gone
    other = store.service()
    assert other.decrypt("fence", ciphertexts[1]).plaintext == b"under v2"
    assert other.decrypt("fence", ciphertexts[2]).plaintext == b"under v3"
    # Its material destroyed, version 1's ciphertext cannot even be authenticated.
    with pytest.raises(InvalidCiphertext) as gone:
        other.decrypt("fence", ciphertexts[0])
    assert type(gone.value) is InvalidCiphertext
    # A destroyed version cannot be brought back by lowering the fence.
    with pytest.raises(InvalidRequest) as below:
        other.update_key("fence", min_decryption_version=1)
    assert below.value.public_message == (
        "min_decryption_version must be from 2 (the oldest version kept) to 3 (the latest version)"
    )
    assert [v.version for v in other.list_versions("fence")] == [2, 3]


def test_the_decryption_fence_also_fences_verify_and_the_public_key(store: Store) -> None:
    service = store.service()
    service.create_key("signer", "sign", "ECDSA-P256")
    old = service.sign("signer", MESSAGE).signature
    service.rotate_key("signer")
    new = service.sign("signer", MESSAGE).signature

    service.update_key("signer", min_decryption_version=2)
    with pytest.raises(VersionBelowMinimum):
        service.verify("signer", MESSAGE, old)
    assert service.verify("signer", MESSAGE, new).valid
    assert not service.verify("signer", b"other", new).valid
    with pytest.raises(VersionBelowMinimum):
        service.public_key("signer", 1)
    assert service.public_key("signer", 2).version == 2

    service.update_key("signer", min_decryption_version=1)
    assert service.verify("signer", MESSAGE, old).valid


def test_deletion_allowed_false_refuses_delete_and_recreate_and_changes_nothing(
    store: Store,
) -> None:
    service = store.service()
    service.create_key("keep")
    first = service.encrypt("keep", b"one").ciphertext
    service.rotate_key("keep")
    second = service.encrypt("keep", b"two").ciphertext
    assert service.update_key("keep", deletion_allowed=False).deletion_allowed is False
    before = store.rows("SELECT * FROM key_versions WHERE key_id = 'keep' ORDER BY version")

    for refused in (
        lambda: service.delete_key("keep"),
        lambda: service.delete_key("keep", pending_days=7),
        lambda: service.recreate_key("keep"),
    ):
        with pytest.raises(DeletionNotAllowed):
            refused()

    assert store.rows("SELECT * FROM key_versions WHERE key_id = 'keep' ORDER BY version") == (
        before
    )
    other = store.service()
    assert other.get_key("keep").state == "enabled"
    assert other.decrypt("keep", first).plaintext == b"one"
    assert other.decrypt("keep", second).plaintext == b"two"

    other.update_key("keep", deletion_allowed=True)
    assert other.delete_key("keep") is None
    with pytest.raises(KeyNotFound):
        service.get_key("keep")


def test_a_pending_key_refuses_use_and_change_records_who_asked_and_cancels_to_disabled(
    store: Store,
) -> None:
    now = utc_now()
    service = store.service(clock=lambda: now)
    service.create_key("pending")
    ciphertexts = [service.encrypt("pending", b"one").ciphertext]
    service.rotate_key("pending")
    ciphertexts.append(service.encrypt("pending", b"two").ciphertext)

    scheduled = service.delete_key("pending", pending_days=7)
    assert scheduled is not None and scheduled.state == "pending_deletion"
    assert scheduled.pending_deletion_at == now + timedelta(days=7)
    assert versions_stored(store, "pending") == [1, 2]  # nothing destroyed yet

    # Another service still calls the key, from another worker.
    other = store.service()
    token = CURRENT_REQUESTER.set(Requester(caller="billing-service", operation="decrypt"))
    try:
        asked_at = utc_now()
        for ciphertext in ciphertexts:
            with pytest.raises(KeyPendingDeletion):
                other.decrypt("pending", ciphertext)
    finally:
        CURRENT_REQUESTER.reset(token)
    pending = service.get_key("pending")
    assert pending.use_attempts_while_pending == 2
    attempt = pending.last_use_attempt
    assert attempt is not None
    assert (attempt["caller"], attempt["operation"]) == ("billing-service", "decrypt")
    assert asked_at <= datetime.fromisoformat(attempt["at"]) <= utc_now()

    # Nothing but reading and cancelling is allowed while pending.
    for change in (
        lambda: other.rotate_key("pending"),
        lambda: other.enable_key("pending"),
        lambda: other.disable_key("pending"),
        lambda: other.recreate_key("pending"),
        lambda: other.update_key("pending", description="x"),
        lambda: other.delete_key("pending", pending_days=1),
        lambda: other.delete_key("pending"),
    ):
        with pytest.raises(KeyPendingDeletion):
            change()
    assert "pending" in {key.key_id for key in other.list_keys(state="pending_deletion")}

    cancelled = other.cancel_deletion("pending")
    assert (cancelled.state, cancelled.pending_deletion_at) == ("disabled", None)
    assert cancelled.use_attempts_while_pending == 2  # kept for the operator
    with pytest.raises(KeyDisabled):
        service.decrypt("pending", ciphertexts[0])
    service.enable_key("pending")
    assert [service.decrypt("pending", text).plaintext for text in ciphertexts] == [b"one", b"two"]


def test_destroy_due_destroys_a_key_once_its_window_has_passed(store: Store) -> None:
    """``kms destroy-due``'s library call, its clock moved on instead of waiting."""
    service = store.service()
    for key_id in ("due", "not-due"):
        service.create_key(key_id)
    service.delete_key("due", pending_days=1)
    service.delete_key("not-due", pending_days=3)
    seen: list[str] = []

    def destroy_due(now: datetime) -> list[str]:
        return destroy_due_keys(
            store.settings, lambda key: seen.append(key.key_id), pytest.fail, now=now
        )

    assert destroy_due(utc_now() + timedelta(hours=23)) == []  # inside the window
    assert store.service().get_key("due").state == "pending_deletion"
    assert destroy_due(utc_now() + timedelta(days=1, minutes=1)) == ["due"]
    assert seen == ["due"]
    with pytest.raises(KeyNotFound):
        store.service().get_key("due")
    assert store.rows("SELECT key_id FROM keys WHERE key_id = 'due'") == []
    assert versions_stored(store, "due") == []
    assert store.service().get_key("not-due").state == "pending_deletion"
    assert destroy_due(utc_now() + timedelta(days=1, minutes=1)) == []  # idempotent


# -- kms.deletion.min_pending_days, from the settings through the app --------------------------


@pytest.fixture
def strict_app(store: Store) -> Flask:
    settings: Settings = store.settings.with_overrides(deletion_min_pending_days=7)
    return create_app(settings, keyring=store.keyring)


def test_min_pending_days_makes_the_window_mandatory(store: Store, strict_app: Flask) -> None:
    client = client_as(strict_app)
    assert client.post("/v1/kms/keys", json={"key_id": "strict"}).status_code == 201
    ciphertext = store.service().encrypt("strict", b"kept").ciphertext
    before = store.rows("SELECT * FROM keys WHERE key_id = 'strict'")
    message = (
        "deletion needs a waiting period of at least 7 days (kms.deletion.min_pending_days): "
        "DELETE with ?pending_days=N"
    )
    for response in (
        client.delete("/v1/kms/keys/strict"),
        client.delete("/v1/kms/keys/strict?pending_days=6"),
    ):
        assert (response.status_code, response.get_json()) == (409, {"error": message})
    assert client.post("/v1/kms/keys/strict/recreate").status_code == 409
    assert store.rows("SELECT * FROM keys WHERE key_id = 'strict'") == before
    assert versions_stored(store, "strict") == [1]
    assert store.service().decrypt("strict", ciphertext).plaintext == b"kept"

    scheduled = client.delete("/v1/kms/keys/strict?pending_days=7")
    assert (scheduled.status_code, scheduled.get_json()["state"]) == (200, "pending_deletion")
