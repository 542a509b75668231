"""Aliases in the service (kms.service.keys.aliases): AWS KMS's rules for names and targets, what
a key's deletion does to them, paging, and the alias rows as untrusted storage: a row re-pointed,
replayed or copied behind kms's back is refused, and ``kms rekey`` keeps them valid. Every test
runs on a real SQLite file and, given --postgres-dsn, on a real PostgreSQL database."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from kms.errors import (
    AliasExists,
    AliasNotFound,
    IntegrityFailure,
    InvalidAliasName,
    InvalidRequest,
    KeyChanged,
    KeyNotFound,
    KeyPendingDeletion,
    RolledBack,
)
from kms.master import check_database, open_master_keyring
from kms.rekey import rekey_database
from kms.service.cache import KeyMaterialCache
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import Store, make_service, write_passphrase_file


def test_an_alias_names_its_key_and_moves_and_goes(store: Store) -> None:
    service = store.service()
    service.create_key("payments-1")
    service.create_key("payments-2")
    made = service.create_alias("alias/payments", "payments-1")
    assert (made.alias_name, made.key_id) == ("alias/payments", "payments-1")
    assert service.resolve_alias("alias/payments") == "payments-1"
    service.update_alias("alias/payments", "payments-2")
    assert service.resolve_alias("alias/payments") == "payments-2"
    # Another worker, with nothing cached, reads the same.
    assert store.service().resolve_alias("alias/payments") == "payments-2"
    service.delete_alias("alias/payments")
    assert_names_no_key(service, "alias/payments")


def assert_names_no_key(service: KMSService, alias_name: str) -> None:
    """No row: the name is the alias of a key_id, which no key has."""
    with pytest.raises(KeyNotFound):
        service.key_info(service.resolve_alias(alias_name))


def test_every_key_keeps_the_alias_of_its_key_id(store: Store) -> None:
    service = store.service()
    service.create_key("device123")
    assert service.resolve_alias("alias/device123") == "device123"
    # Not a row: it is neither moved nor deleted, and no alias can take its name.
    service.create_key("other")
    with pytest.raises(AliasNotFound):
        service.update_alias("alias/device123", "other")
    with pytest.raises(AliasNotFound):
        service.delete_alias("alias/device123")
    with pytest.raises(AliasExists):
        service.create_alias("alias/device123", "other")
    assert service.resolve_alias("alias/device123") == "device123"


def test_an_alias_row_wins_over_a_key_made_later_with_its_name(store: Store) -> None:
    service = store.service()
    service.create_key("target")
    service.create_alias("alias/billing", "target")
    service.create_key("billing")  # by its key_id only: the alias keeps naming its key
    assert service.resolve_alias("alias/billing") == "target"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("payments", "starts with alias/"),
        ("alias/", "letters, digits"),
        ("alias/has space", "letters, digits"),
        ("alias/dot.ted", "letters, digits"),
        ("alias/" + "x" * 251, "at most 256"),
        ("alias/aws/s3", "reserved"),
        ("alias/aws/", "reserved"),
    ],
)
def test_alias_names_follow_aws_rules(store: Store, name: str, why: str) -> None:
    service = store.service()
    service.create_key("k")
    with pytest.raises(InvalidAliasName) as refused:
        service.create_alias(name, "k")
    assert why in refused.value.public_message
    assert store.rows("SELECT alias_name FROM aliases") == []


def test_the_longest_and_the_widest_names_are_accepted(store: Store) -> None:
    service = store.service()
    service.create_key("k")
    for name in ("alias/" + "x" * 250, "alias/Team_1/app-2/AWSish"):
        service.create_alias(name, "k")
        assert service.resolve_alias(name) == "k"


def test_a_taken_name_is_already_exists_and_changes_nothing(store: Store) -> None:
    service = store.service()
    service.create_key("a")
    service.create_key("b")
    service.create_alias("alias/app", "a")
    before = store.rows("SELECT * FROM aliases")
    with pytest.raises(AliasExists):
        service.create_alias("alias/app", "b")
    assert store.rows("SELECT * FROM aliases") == before


def test_an_alias_names_an_existing_key_not_pending_deletion(store: Store) -> None:
    service = store.service()
    with pytest.raises(KeyNotFound):
        service.create_alias("alias/none", "no-such-key")
    service.create_key("going")
    service.delete_key("going", pending_days=7)
    with pytest.raises(KeyPendingDeletion):
        service.create_alias("alias/late", "going")
    service.create_key("staying")
    service.create_alias("alias/app", "staying")
    with pytest.raises(KeyPendingDeletion):
        service.update_alias("alias/app", "going")
    assert store.rows("SELECT alias_name, key_id FROM aliases") == [("alias/app", "staying")]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("encrypt", "AES-256-GCM"), ("encrypt", "RSA-OAEP-2048")),  # symmetric, asymmetric
        (("encrypt", "AES-256-GCM"), ("mac", "HMAC-SHA256")),
        (("sign", "ECDSA-P256"), ("encrypt", "RSA-OAEP-2048")),  # same kind, other usage
    ],
)
def test_an_alias_moves_only_to_a_key_of_the_same_usage_and_type(
    store: Store, first: tuple[str, str], second: tuple[str, str]
) -> None:
    service = store.service()
    service.create_key("first", *first)
    service.create_key("second", *second)
    service.create_alias("alias/app", "first")
    with pytest.raises(InvalidRequest) as refused:
        service.update_alias("alias/app", "second")
    assert "same key usage and type" in refused.value.public_message
    assert service.resolve_alias("alias/app") == "first"


def test_an_alias_moves_between_keys_of_one_type_and_other_algorithms(store: Store) -> None:
    service = store.service()
    service.create_key("aes", "encrypt", "AES-256-GCM")
    service.create_key("chacha", "encrypt", "ChaCha20-Poly1305")
    service.create_key("p256", "sign", "ECDSA-P256")
    service.create_key("rsa", "sign", "RSA-2048")
    service.create_alias("alias/data", "aes")
    service.update_alias("alias/data", "chacha")
    service.create_alias("alias/signer", "p256")
    service.update_alias("alias/signer", "rsa")
    assert service.resolve_alias("alias/signer") == "rsa"


def test_a_change_refuses_an_alias_that_names_another_key_than_authorised(store: Store) -> None:
    service = store.service()
    service.create_key("a")
    service.create_key("b")
    service.create_alias("alias/app", "a")
    with pytest.raises(KeyChanged):
        service.update_alias("alias/app", "b", expected_key_id="b")
    with pytest.raises(KeyChanged):
        service.delete_alias("alias/app", expected_key_id="b")
    assert service.resolve_alias("alias/app") == "a"


def test_aliases_stay_while_pending_and_go_when_the_key_is_destroyed(store: Store) -> None:
    service = store.service()
    service.create_key("old")
    service.create_key("keep")
    service.create_alias("alias/one", "old")
    service.create_alias("alias/two", "old")
    service.create_alias("alias/kept", "keep")
    service.delete_key("old", pending_days=7)
    assert service.resolve_alias("alias/one") == "old"  # using it is refused as the key is
    service.cancel_deletion("old")
    assert service.resolve_alias("alias/two") == "old"
    service.delete_key("old")
    assert store.rows("SELECT alias_name FROM aliases") == [("alias/kept",)]
    for name in ("alias/one", "alias/two"):
        assert_names_no_key(service, name)
    # A key made again with that key_id is not what the old aliases named.
    service.create_key("old")
    assert_names_no_key(service, "alias/one")


def test_listing_pages_the_rows_then_the_keys_own_aliases(store: Store) -> None:
    service = store.service()
    for key_id in ("k1", "k2", "k3"):
        service.create_key(key_id)
    for name, key_id in (("alias/b", "k1"), ("alias/a", "k2"), ("alias/c", "k1")):
        service.create_alias(name, key_id)
    seen, after = [], None
    while True:
        page = service.list_aliases(limit=2, after=after)
        assert len(page.aliases) <= 2
        seen += [(a.alias_name, a.key_id, a.implicit) for a in page.aliases]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [
        ("alias/a", "k2", False),
        ("alias/b", "k1", False),
        ("alias/c", "k1", False),
        ("alias/k1", "k1", True),
        ("alias/k2", "k2", True),
        ("alias/k3", "k3", True),
    ]
    one_key = service.list_aliases(limit=10, key_id="k1")
    assert [a.alias_name for a in one_key.aliases] == ["alias/b", "alias/c", "alias/k1"]
    assert one_key.next_after is None
    scoped = service.list_aliases(limit=10, key_patterns=["k2"])
    assert [a.alias_name for a in scoped.aliases] == ["alias/a", "alias/k2"]
    with pytest.raises(InvalidRequest):
        service.list_aliases(limit=10, after="not a marker")


# -- untrusted storage --------------------------------------------------------------------------


def test_an_alias_row_re_pointed_behind_kms_back_is_refused(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Re-pointing an alias at the insider's key would redirect every encryption under it.
    service = store.service()
    service.create_key("victim")
    service.create_key("insider")
    service.create_alias("alias/payroll", "victim")
    changed = store.sql("UPDATE aliases SET key_id = 'insider' WHERE alias_name = 'alias/payroll'")
    assert changed == 1
    fresh = store.service()
    with caplog.at_level(logging.ERROR, logger="kms.integrity"), pytest.raises(IntegrityFailure):
        fresh.resolve_alias("alias/payroll")
    assert "alias 'alias/payroll'" in caplog.text
    with pytest.raises(IntegrityFailure):
        fresh.update_alias("alias/payroll", "victim")
    assert any("alias/payroll" in failure for failure in fresh.check_integrity().failures)


def test_an_alias_row_copied_under_another_name_is_refused(store: Store) -> None:
    service = store.service()
    service.create_key("victim")
    service.create_key("insider")
    service.create_alias("alias/insider-key", "insider")
    store.sql(
        "INSERT INTO aliases (alias_name, key_id, created_at, updated_at, generation, mac) "
        "SELECT 'alias/payroll', key_id, created_at, updated_at, generation, mac FROM aliases "
        "WHERE alias_name = 'alias/insider-key'"
    )
    with pytest.raises(IntegrityFailure):
        store.service().resolve_alias("alias/payroll")


def test_an_alias_row_rolled_back_is_refused(store: Store) -> None:
    # The old row's MAC is genuine: only its generation shows it is not the newest.
    service = store.service()
    service.create_key("old")
    service.create_key("new")
    service.create_alias("alias/app", "old")
    saved = store.row(
        "SELECT key_id, updated_at, generation, mac FROM aliases WHERE alias_name = 'alias/app'"
    )
    service.update_alias("alias/app", "new")
    store.sql(
        "UPDATE aliases SET key_id = :key_id, updated_at = :updated_at, generation = :generation,"
        " mac = :mac WHERE alias_name = 'alias/app'",
        key_id=saved[0],
        updated_at=saved[1],
        generation=saved[2],
        mac=saved[3],
    )
    with pytest.raises(RolledBack):
        service.resolve_alias("alias/app")


def test_a_deleted_alias_put_back_is_refused(store: Store) -> None:
    service = store.service()
    service.create_key("k")
    service.create_alias("alias/app", "k")
    saved = store.rows("SELECT * FROM aliases")
    service.delete_alias("alias/app")
    store.sql(
        "INSERT INTO aliases VALUES (:a, :b, :c, :d, :e, :f)",
        **dict(zip("abcdef", saved[0], strict=True)),
    )
    with pytest.raises(RolledBack):
        service.resolve_alias("alias/app")


def test_rekey_keeps_the_alias_rows_valid(initialised: Settings, tmp_path: Path) -> None:
    def service_of(settings: Settings) -> tuple[KMSService, Callable[[], None]]:
        keyring = open_master_keyring(settings)
        repository = SQLKeyRepository(create_kms_engine(settings.database_url))
        return make_service(repository, keyring, KeyMaterialCache(0)), lambda: (
            repository.close(),
            keyring.close(),
        )

    service, close = service_of(initialised)
    service.create_key("k")
    service.create_alias("alias/app", "k")
    close()
    passphrase = b"a new and longer passphrase for the master key"
    rekey_database(initialised, bytearray(passphrase))
    rekeyed = replace(
        initialised,
        master_passphrase_file=write_passphrase_file(tmp_path / "new.key", passphrase),
    )
    assert check_database(rekeyed).failures == []
    service, close = service_of(rekeyed)
    try:
        assert service.resolve_alias("alias/app") == "k"
    finally:
        close()


def test_an_alias_deleted_with_its_destroyed_key_put_back_is_refused(store: Store) -> None:
    """A destroy deletes the key's aliases at the epoch it raised: their rows, put back behind
    kms (genuine MACs, older generations), are a rollback, even once the key_id is made again."""
    service = store.service()
    service.create_key("old")
    service.create_alias("alias/app", "old")
    saved = store.rows("SELECT * FROM aliases")
    service.delete_key("old")
    service.create_key("old")
    store.sql(
        "INSERT INTO aliases VALUES (:a, :b, :c, :d, :e, :f)",
        **dict(zip("abcdef", saved[0], strict=True)),
    )
    with pytest.raises(RolledBack):
        service.resolve_alias("alias/app")


def test_a_name_without_the_alias_prefix_names_no_alias(store: Store) -> None:
    """The service's own check, whoever calls it: `resolve_alias` takes only `alias/...` names
    (never the key_id of a name whose first six characters happen to be cut off)."""
    service = store.service()
    service.create_key("orders")
    assert service.resolve_alias("alias/orders") == "orders"
    for name in ("xxxxxxorders", "alias/" + "a" * 251):
        with pytest.raises(AliasNotFound):
            service.resolve_alias(name)
