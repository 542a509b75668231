"""The service's batch forms on a real SQLite file and a real PostgreSQL database: the key row is
read and its material loaded once per batch, an item's own failure stays with it, and a fault of
the server fails the whole batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kms.app import create_app
from kms.errors import (
    IntegrityFailure,
    InvalidCiphertext,
    InvalidRequest,
    KeyNotFound,
    PurposeMismatch,
)
from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import Decrypted, Encrypted, KMSService
from kms.settings import Settings, load_settings
from kms.store.db import create_kms_engine
from tests.helpers.keystore import (
    CountingRepository,
    make_service,
    make_settings,
)
from tests.helpers.tls import client_as


@pytest.fixture(params=["sqlite", "postgresql"])
def settings_for(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    dsn = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = make_settings(tmp_path, dsn)
    init_database(settings)
    return settings


@pytest.fixture
def opened(settings_for: Settings) -> Iterator[tuple[CountingRepository, RootKeyring]]:
    keyring = open_master_keyring(settings_for)
    repository = CountingRepository(create_kms_engine(settings_for.database_url))
    yield repository, keyring
    repository.close()
    keyring.close()


def uncached(opened: tuple[CountingRepository, RootKeyring], **limits: int) -> KMSService:
    # No material cache: every load the service does reaches the repository and the keyring.
    repository, keyring = opened
    return make_service(repository, keyring, KeyMaterialCache(0), **limits)


def test_a_batch_reads_the_key_and_loads_its_material_once(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    repository, _ = opened
    service = uncached(opened)
    service.create_key("orders")
    repository.reset()
    results = service.encrypt_batch("orders", [{"plaintext": bytes(256)}] * 100)
    assert len(results) == 100 and all(isinstance(r, Encrypted) for r in results)
    assert (repository.keys_read, repository.versions_read) == (1, [1])

    # What the batch saves: single calls read the key and load the material every time.
    repository.reset()
    for _ in range(10):
        service.encrypt("orders", bytes(256))
    assert (repository.keys_read, repository.versions_read) == (10, [1] * 10)


def test_a_decrypt_batch_loads_each_version_once(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    repository, _ = opened
    service = uncached(opened)
    service.create_key("orders")
    ciphertexts = []
    for version in (1, 2, 3):
        if version > 1:
            service.rotate_key("orders")
        ciphertexts += [service.encrypt("orders", b"v%d" % version).ciphertext] * 30
    items: list[Any] = [{"ciphertext": c} for c in ciphertexts]
    items += [{"ciphertext": "garbage"}, {"ciphertext": ciphertexts[0], "context": {"a": "b"}}]
    repository.reset()
    results = service.decrypt_batch("orders", items)
    assert repository.keys_read == 1
    assert sorted(repository.versions_read) == [1, 2, 3]
    assert [r.plaintext for r in results[:90] if isinstance(r, Decrypted)] == (
        [b"v1"] * 30 + [b"v2"] * 30 + [b"v3"] * 30
    )
    assert all(isinstance(r, InvalidCiphertext) for r in results[90:])

    # A rewrap batch: one key read, each version loaded once (the latest serves both ways).
    repository.reset()
    rewrapped = service.rewrap_batch("orders", items[:90])
    assert repository.keys_read == 1
    assert sorted(repository.versions_read) == [1, 2, 3]
    assert {r.version for r in rewrapped if isinstance(r, Encrypted)} == {3}


def test_sign_and_verify_batches_read_the_key_once(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    repository, _ = opened
    service = uncached(opened)
    service.create_key("releases", "sign", "Ed25519")
    repository.reset()
    signed = service.sign_batch("releases", [{"message": b"m%d" % i} for i in range(20)])
    assert (repository.keys_read, repository.versions_read) == (1, [1])
    service.rotate_key("releases")
    repository.reset()
    items = [{"message": b"m%d" % i, "signature": s.signature} for i, s in enumerate(signed)]
    verified = service.verify_batch("releases", items + [{"message": b"x", "signature": b""}])
    assert [v.valid for v in verified] == [True] * 20 + [False]
    assert (repository.keys_read, sorted(repository.versions_read)) == (1, [1, 2])


def test_data_key_batches_read_the_key_once(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    repository, _ = opened
    service = uncached(opened)
    service.create_key("orders")
    repository.reset()
    keys = service.generate_data_key_batch(
        "orders", [{"key_bytes": 16}, {"include_plaintext": False}, {"key_bytes": 15}]
    )
    assert (repository.keys_read, repository.versions_read) == (1, [1])
    assert len(keys[0].plaintext) == 16
    assert keys[1].plaintext is None
    assert isinstance(keys[2], InvalidRequest)
    assert "plaintext" not in repr(keys[0]) and repr(keys[0].plaintext) not in repr(keys[0])


def test_an_item_parsed_badly_keeps_its_place(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    service = uncached(opened)
    service.create_key("orders")
    refused = InvalidRequest("plaintext: must be valid standard base64")
    results = service.encrypt_batch("orders", [{"plaintext": b"a"}, refused, {"plaintext": b"c"}])
    assert isinstance(results[0], Encrypted) and isinstance(results[2], Encrypted)
    assert results[1] is refused


def test_the_key_fails_the_whole_batch(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    service = uncached(opened)
    service.create_key("releases", "sign", "Ed25519")
    refused = InvalidRequest("item")
    with pytest.raises(KeyNotFound):
        service.encrypt_batch("missing", [refused])
    with pytest.raises(PurposeMismatch):
        service.encrypt_batch("releases", [{"plaintext": b"x"}])


def test_a_server_fault_fails_the_whole_batch(
    opened: tuple[CountingRepository, RootKeyring], settings_for: Settings
) -> None:
    """A version row changed behind kms's back is the single call's 500, not an item's error."""
    service = uncached(opened)
    service.create_key("orders")
    old = service.encrypt("orders", b"old").ciphertext
    service.rotate_key("orders")
    new = service.encrypt("orders", b"new").ciphertext
    engine = create_kms_engine(settings_for.database_url, pool=False)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE key_versions SET mac = :mac WHERE key_id = 'orders' AND version = 1"),
                {"mac": bytes(32)},
            )
    finally:
        engine.dispose()
    assert service.decrypt_batch("orders", [{"ciphertext": new}])[0].plaintext == b"new"
    with pytest.raises(IntegrityFailure):
        service.decrypt_batch("orders", [{"ciphertext": new}, {"ciphertext": old}])


def test_the_batch_size_is_bounded_by_the_setting(
    opened: tuple[CountingRepository, RootKeyring],
) -> None:
    service = uncached(opened, max_batch_items=3)
    service.create_key("orders")
    assert len(service.encrypt_batch("orders", [{"plaintext": b"x"}] * 3)) == 3
    for count, message in ((4, "batch: at most 3 items"), (0, "batch: must hold at least one")):
        with pytest.raises(InvalidRequest, match=message):
            service.encrypt_batch("orders", [{"plaintext": b"x"}] * count)
    # The default is 1,000.
    default = uncached(opened)
    default.check_batch_size(1000)
    with pytest.raises(InvalidRequest, match="at most 1000 items"):
        default.check_batch_size(1001)


def test_max_batch_items_is_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  max_batch_items: 10\ndatabase:\n  dsn: kms.db\n", "utf-8")
    assert load_settings(config, environ={}).max_batch_items == 10
    overridden = load_settings(config, environ={"KMS_SERVER_MAX_BATCH_ITEMS": "20"})
    assert overridden.max_batch_items == 20
    config.write_text("database:\n  dsn: kms.db\n", encoding="utf-8")
    assert load_settings(config, environ={}).max_batch_items == 1000
    for bad in ("0", "x", "100001"):
        config.write_text(f"server:\n  max_batch_items: {bad}\ndatabase:\n  dsn: kms.db\n")
        with pytest.raises(Exception, match="server.max_batch_items"):
            load_settings(config, environ={})


def test_the_app_passes_the_setting_to_the_service(
    initialised: Settings, keyring: RootKeyring
) -> None:
    app = create_app(initialised.with_overrides(max_batch_items=2), keyring=keyring)
    client = client_as(app)
    assert client.post("/v1/kms/keys", json={"key_id": "orders"}).status_code == 201
    items = [{"plaintext": "AA=="}] * 3
    response = client.post("/v1/kms/encrypt", json={"key_id": "orders", "batch": items})
    assert response.status_code == 400
    assert response.get_json() == {"error": "batch: at most 2 items (server.max_batch_items)"}
    response = client.post("/v1/kms/encrypt", json={"key_id": "orders", "batch": items[:2]})
    assert response.status_code == 200 and len(response.get_json()["results"]) == 2
