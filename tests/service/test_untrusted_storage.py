"""The database is untrusted storage: writes behind kms's back are refused, never obeyed.

Each test plays someone who can write to the database but does not know the master passphrase
(issue 14's findings): SQL in the test changes a row, then kms must refuse to use it
(``IntegrityFailure``, which the API answers as 500 "internal error") instead of giving a wrong
answer. Every test runs on a real SQLite file and, given --postgres-dsn, on a real PostgreSQL
database.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kms.crypto.algorithms import public_key_der
from kms.errors import FencedCiphertext, InvalidCiphertext, KeyChanged, KeyNotFound
from kms.master import check_database, open_master_keyring
from tests.helpers.keystore import TEST_PASSPHRASE, Store, assert_refused

# -- finding 1: a swapped public key ------------------------------------------------------------


def test_a_swapped_public_key_is_refused_by_verify_and_export(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    service = store.service()
    service.create_key("releases", "sign", "Ed25519")
    attacker = ed25519.Ed25519PrivateKey.generate()
    changed = store.sql(
        "UPDATE key_versions SET public_key = :der WHERE key_id = 'releases' AND version = 1",
        der=public_key_der(attacker.public_key()),
    )
    assert changed == 1
    forged = attacker.sign(b"pay the attacker")
    fresh = store.service()  # nothing cached: it must read the row
    assert_refused(
        lambda: fresh.verify("releases", b"pay the attacker", forged), "releases", caplog
    )
    assert_refused(lambda: fresh.public_key("releases"), "releases", caplog)


def test_a_swapped_rsa_oaep_public_key_is_refused_by_encrypt_and_export(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Encrypting under an attacker's public key would hand them every later plaintext.
    service = store.service()
    service.create_key("inbox", "encrypt", "RSA-OAEP-2048")
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    changed = store.sql(
        "UPDATE key_versions SET public_key = :der WHERE key_id = 'inbox' AND version = 1",
        der=public_key_der(attacker.public_key()),
    )
    assert changed == 1
    fresh = store.service()
    assert_refused(lambda: fresh.encrypt("inbox", b"salary data"), "inbox", caplog)
    assert_refused(lambda: fresh.public_key("inbox"), "inbox", caplog)
    assert any("inbox" in failure for failure in fresh.check_integrity().failures)


def test_a_public_key_of_another_type_is_refused(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Before row MACs this was a 500 from deep inside verify; now it is the same clean refusal.
    service = store.service()
    service.create_key("ecdsa", "sign", "ECDSA-P256")
    service.create_key("edwards", "sign", "Ed25519")
    store.sql(
        "UPDATE key_versions SET public_key = "
        "(SELECT public_key FROM key_versions WHERE key_id = 'edwards' AND version = 1) "
        "WHERE key_id = 'ecdsa' AND version = 1"
    )
    assert_refused(lambda: store.service().verify("ecdsa", b"m", b"s" * 64), "ecdsa", caplog)


# -- finding 2: key rows ------------------------------------------------------------------------


def test_a_lowered_latest_version_is_refused_even_with_the_old_version_cached(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    service = store.service()
    service.create_key("orders")
    service.encrypt("orders", b"warm the cache for version 1")
    service.rotate_key("orders")
    assert service.encrypt("orders", b"x").version == 2
    assert store.sql("UPDATE keys SET latest_version = 1 WHERE key_id = 'orders'") == 1
    # The warm service has version 1 cached; it still reads (and checks) the row every call.
    for worker in (service, store.service()):
        assert_refused(lambda w=worker: w.encrypt("orders", b"x"), "orders", caplog)
        assert_refused(lambda w=worker: w.get_key("orders"), "orders", caplog)
        assert_refused(lambda w=worker: w.list_keys(), "orders", caplog)


def test_a_restored_pre_recreate_wrapped_key_does_not_decrypt_old_ciphertexts(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    service = store.service()
    service.create_key("orders")
    before = service.encrypt("orders", b"from before the recreate").ciphertext
    old = store.row(
        "SELECT wrapped_key, mac FROM key_versions WHERE key_id = 'orders' AND version = 1"
    )
    service.recreate_key("orders")
    # First the blob alone, then the whole old version row with its own (once valid) MAC.
    for columns in (
        {"wrapped_key": old.wrapped_key},
        {"wrapped_key": old.wrapped_key, "mac": old.mac},
    ):
        assignments = ", ".join(f"{name} = :{name}" for name in columns)
        store.sql(
            f"UPDATE key_versions SET {assignments} WHERE key_id = 'orders' AND version = 1",  # noqa: S608
            **columns,
        )
        assert_refused(lambda: store.service().decrypt("orders", before), "orders", caplog)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("algorithm", "ChaCha20-Poly1305"),
        ("purpose", "sign"),
        ("state", "disabled"),
        ("incarnation", "0" * 32),
        ("latest_version", 7),
    ],
)
def test_a_changed_key_row_field_is_refused(
    store: Store, caplog: pytest.LogCaptureFixture, column: str, value: object
) -> None:
    service = store.service()
    service.create_key("orders", "encrypt", "AES-256-GCM")
    ciphertext = service.encrypt("orders", b"x").ciphertext
    store.sql(f"UPDATE keys SET {column} = :value WHERE key_id = 'orders'", value=value)  # noqa: S608
    for worker in (service, store.service()):
        assert_refused(lambda w=worker: w.encrypt("orders", b"x"), "orders", caplog)
        assert_refused(lambda w=worker: w.decrypt("orders", ciphertext), "orders", caplog)
        assert_refused(lambda w=worker: w.rotate_key("orders"), "orders", caplog)
        assert_refused(lambda w=worker: w.recreate_key("orders"), "orders", caplog)


def test_a_cleared_mac_is_refused(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    service = store.service()
    service.create_key("orders")
    store.sql("UPDATE keys SET mac = NULL WHERE key_id = 'orders'")
    assert_refused(lambda: service.encrypt("orders", b"x"), "orders", caplog)


def test_a_key_row_copied_under_another_key_id_is_refused(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    service = store.service()
    service.create_key("victim")
    service.create_key("donor")
    store.sql(
        "UPDATE keys SET mac = (SELECT mac FROM keys WHERE key_id = 'donor'), "
        "incarnation = (SELECT incarnation FROM keys WHERE key_id = 'donor') "
        "WHERE key_id = 'victim'"
    )
    assert_refused(lambda: store.service().encrypt("victim", b"x"), "victim", caplog)
    assert store.service().encrypt("donor", b"x").version == 1


def test_untouched_keys_keep_working_beside_a_tampered_one(store: Store) -> None:
    service = store.service()
    service.create_key("tampered")
    service.create_key("intact")
    store.sql("UPDATE keys SET latest_version = 2 WHERE key_id = 'tampered'")
    fresh = store.service()
    assert fresh.decrypt("intact", fresh.encrypt("intact", b"x").ciphertext).plaintext == b"x"


# -- finding 3: rotate and recreate against a key that changed under them -------------------------


def replace_key(store: Store, algorithm: str) -> Callable[[str], None]:
    """A hook that deletes the key and creates another under the same key_id (another operator)."""
    other = store.service()

    def hook(key_id: str) -> None:
        other.delete_key(key_id)
        purpose = "encrypt" if algorithm in ("AES-256-GCM", "ChaCha20-Poly1305") else "sign"
        other.create_key(key_id, purpose, algorithm)

    return hook


@pytest.mark.parametrize("operation", ["rotate_key", "recreate_key"])
@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "Ed25519", "RSA-2048"])
def test_rotate_or_recreate_against_a_replaced_key_writes_nothing(
    store: Store, operation: str, algorithm: str
) -> None:
    store.service().create_key("contested", "encrypt", "AES-256-GCM")
    racing = store.service(after_generation=replace_key(store, algorithm))
    with pytest.raises(KeyChanged):
        getattr(racing, operation)("contested")
    # Only the other operator's key is there: its algorithm, its one version, all authentic.
    key = store.service().get_key("contested")
    assert (key.algorithm, key.version, [v.version for v in key.key_versions]) == (
        algorithm,
        1,
        [1],
    )
    report = check_database(store.settings)
    assert (report.keys, report.versions, report.failures) == (1, 1, [])


@pytest.mark.parametrize("operation", ["rotate_key", "recreate_key"])
def test_rotate_or_recreate_against_a_recreated_key_writes_nothing(
    store: Store, operation: str
) -> None:
    setup = store.service()
    setup.create_key("contested")
    setup.rotate_key("contested")
    other = store.service()
    racing = store.service(after_generation=lambda key_id: other.recreate_key(key_id))
    with pytest.raises(KeyChanged):
        getattr(racing, operation)("contested")
    assert [v.version for v in store.service().get_key("contested").key_versions] == [1]
    assert check_database(store.settings).failures == []


def test_rotate_against_a_deleted_key_is_not_found(store: Store) -> None:
    store.service().create_key("gone")
    other = store.service()
    racing = store.service(after_generation=lambda key_id: other.delete_key(key_id))
    with pytest.raises(KeyNotFound):
        racing.rotate_key("gone")
    assert store.service().list_keys() == []


def test_rotate_after_another_rotation_takes_the_next_number(store: Store) -> None:
    # Not a conflict: same algorithm, same incarnation. The number is fixed under the lock.
    store.service().create_key("busy", "sign", "ECDSA-P256")
    other = store.service()
    racing = store.service(after_generation=lambda key_id: other.rotate_key(key_id))
    assert racing.rotate_key("busy").version == 3
    fresh = store.service()
    assert [v.version for v in fresh.get_key("busy").key_versions] == [1, 2, 3]
    signed = fresh.sign("busy", b"m")
    assert signed.version == 3
    assert fresh.verify("busy", b"m", signed.signature).version == 3
    report = check_database(store.settings)
    assert (report.versions, report.failures) == (3, [])


# -- kms check -----------------------------------------------------------------------------------


def test_check_passes_on_an_untouched_database_and_names_every_tampered_row(store: Store) -> None:
    service = store.service()
    service.create_key("enc", "encrypt", "ChaCha20-Poly1305")
    service.rotate_key("enc")
    service.create_key("sig", "sign", "ECDSA-P256")
    service.create_key("fine", "sign", "Ed25519")
    report = check_database(store.settings)
    assert (report.keys, report.versions, report.failures) == (3, 4, [])

    store.sql("UPDATE keys SET state = 'disabled' WHERE key_id = 'enc'")
    other = ed25519.Ed25519PrivateKey.generate()
    store.sql(
        "UPDATE key_versions SET public_key = :der WHERE key_id = 'sig'",
        der=public_key_der(other.public_key()),
    )
    report = check_database(store.settings)
    assert report.keys == 3
    assert report.failures == [
        "key 'enc': key row: MAC does not match",
        "key 'sig': version 1: MAC does not match",
    ]


# -- finding 4: KDF parameters --------------------------------------------------------------------


def tampered_kdf(value: bytes, case: str) -> bytes:
    head, _, salt = value.rpartition(b"$")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    flipped = alphabet.index(salt[-3:-2]) ^ 1  # a padding bit: same bytes, another spelling
    return {
        "non-ascii": value.replace(b"sha256", b"sha\xff56"),
        "huge-count": value.replace(b"i=1000,", b"i=9999999999,"),
        "tiny-count": value.replace(b"i=1000,", b"i=1,"),
        "leading-zero": value.replace(b"i=1000,", b"i=01000,"),
        "non-canonical-salt": head + b"$" + salt[:-3] + alphabet[flipped : flipped + 1] + b"==",
    }[case]


@pytest.mark.parametrize(
    "case", ["non-ascii", "huge-count", "tiny-count", "leading-zero", "non-canonical-salt"]
)
def test_tampered_kdf_parameters_are_one_clear_startup_line(store: Store, case: str) -> None:
    from kms.errors import InvalidKDFParameters
    from kms.master import describe_database

    value = bytes(store.row("SELECT value FROM kms_metadata WHERE name = 'kdf_parameters'").value)
    assert value.startswith(b"$pbkdf2-sha256$i=1000,")
    tampered = tampered_kdf(value, case)
    assert tampered != value
    store.sql(
        "UPDATE kms_metadata SET value = :value WHERE name = 'kdf_parameters'", value=tampered
    )
    with pytest.raises(InvalidKDFParameters) as excinfo:
        open_master_keyring(store.settings)
    message = excinfo.value.public_message
    assert "\n" not in message
    assert "KDF" in message
    assert describe_database(store.settings) in message
    assert TEST_PASSPHRASE.decode() not in message
    if store.settings.database_url.startswith("postgresql"):
        assert "kms_test:kms_test@" not in message  # the URL's password stays out


def test_production_settings_refuse_test_strength_kdf_parameters(store: Store) -> None:
    # The test keystore was made with 1,000 iterations through the test-only floor. Settings as a
    # deployment has them (the floor is no setting) refuse it: reads never go below 600,000.
    from kms.errors import InvalidKDFParameters

    production = store.settings.with_overrides(insecure_test_kdf_floor=None)
    with pytest.raises(InvalidKDFParameters) as excinfo:
        open_master_keyring(production)
    assert "1000 PBKDF2 iterations; kms accepts 600000 to 10000000" in excinfo.value.public_message


def test_a_trimmed_version_row_put_back_is_never_unwrapped(store: Store) -> None:
    """A trim destroys the versions below `min_available_version`; a row put back behind kms
    (genuine, MAC and all) is not used: the key row, which says what is available, wins. The
    ciphertext is invalid as one naming no version is, not a genuine fenced one (which it could
    only be found to be by unwrapping the destroyed version: the audit line and the metrics
    would call it fenced)."""
    service = store.service()
    service.create_key("orders")
    before = service.encrypt("orders", b"under version 1").ciphertext
    saved = store.rows("SELECT * FROM key_versions WHERE key_id = 'orders' AND version = 1")
    service.rotate_key("orders")
    service.update_key("orders", min_decryption_version=2)
    service.trim_key("orders", 2)
    assert store.rows("SELECT version FROM key_versions WHERE key_id = 'orders'") == [(2,)]
    names = list(store.row("SELECT * FROM key_versions WHERE key_id = 'orders'")._mapping)
    store.sql(
        f"INSERT INTO key_versions ({', '.join(names)}) "  # noqa: S608
        f"VALUES ({', '.join(':' + name for name in names)})",
        **dict(zip(names, saved[0], strict=True)),
    )
    with pytest.raises(InvalidCiphertext) as refused:
        store.service().decrypt("orders", before)
    assert not isinstance(refused.value, FencedCiphertext)
