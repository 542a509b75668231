"""The ``pkcs11`` master-key backend in process, on a real SoftHSM2 token
(tests/helpers/softhsm.py): the keystore it makes, ``kms hsm init``, each fault at opening (one
message naming its cause, nothing written), and moving the root secret between backends.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import kms.service.pkcs11
from kms.errors import ConfigurationError, DatabaseInUse, KeystoreError, UpgradeNeeded
from kms.master import init_database, open_master_keyring
from kms.rekey import move_root_secret, rekey_database
from kms.service.keys import KMSService
from kms.service.pkcs11 import create_hsm_key, open_pkcs11_backend
from kms.settings import Settings
from kms.store.serving import hold_serving_lock
from tests.helpers.keystore import TEST_PASSPHRASE, make_settings
from tests.helpers.softhsm import (
    USER_PIN,
    Token,
    add_token,
    make_token,
    session_token,  # noqa: F401 - a fixture
    token,  # noqa: F401 - a fixture
)


def metadata(database: Path) -> dict[str, bytes]:
    with closing(sqlite3.connect(database)) as conn:
        return {name: bytes(value) for name, value in conn.execute("SELECT * FROM kms_metadata")}


@pytest.fixture
def hsm_keystore(token: Token, tmp_path: Path) -> Settings:  # noqa: F811 - the fixture
    """A keystore on the token's key ``kms-root``."""
    settings = token.settings(tmp_path / "kms.db")
    create_hsm_key(settings)
    init_database(settings)
    return settings


def test_a_keystore_on_the_hsm_seals_its_root_secret_there_and_serves(
    hsm_keystore: Settings, open_service: Callable[[Settings], KMSService]
) -> None:
    rows = metadata(Path(hsm_keystore.database_dsn))
    assert rows["root_secret"][:1] == b"\x02"  # sealed by pkcs11
    assert "kdf_parameters" not in rows  # nothing a passphrase could open

    service = open_service(hsm_keystore)
    service.create_key("orders")
    first = service.encrypt("orders", b"before rotation").ciphertext
    service.rotate_key("orders")
    second = service.encrypt("orders", b"after rotation").ciphertext
    service.create_key("signer", "sign", "Ed25519")
    signature = service.sign("signer", b"message").signature

    again = open_service(hsm_keystore)  # a restart: the root secret opened anew by the HSM
    assert again.decrypt("orders", first).plaintext == b"before rotation"
    assert again.decrypt("orders", second).plaintext == b"after rotation"
    assert again.verify("signer", b"message", signature).valid


def test_hsm_init_makes_a_key_that_keeps_its_value_and_changes_nothing_when_run_again(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    pkcs11 = pytest.importorskip("pkcs11")
    settings = token.settings(tmp_path / "kms.db", key_label="made-once")
    assert create_hsm_key(settings) is True

    def keys() -> list[tuple[Any, ...]]:
        attribute = pkcs11.Attribute
        with token.session() as session:
            found = list(
                session.get_objects(
                    {attribute.LABEL: "made-once", attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY}
                )
            )
            for key in found:
                with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                    key[attribute.VALUE]
            return [
                (
                    key.key_type,
                    key[attribute.VALUE_LEN],
                    key[attribute.SENSITIVE],
                    key[attribute.EXTRACTABLE],
                    key[attribute.TOKEN],
                    key[attribute.ENCRYPT],
                    key[attribute.DECRYPT],
                    key[attribute.WRAP],
                    key[attribute.UNWRAP],
                    key[attribute.SIGN],
                    key[attribute.DERIVE],
                    key[attribute.NEVER_EXTRACTABLE],
                    key[attribute.PRIVATE],  # not even seen without the PIN
                )
                for key in found
            ]

    made = keys()
    assert made == [
        (pkcs11.KeyType.AES, 32, True, False, True, True, True) + (False,) * 4 + (True, True)
    ]
    assert create_hsm_key(settings) is False
    assert keys() == made


def _weak_key(token: Token, label: str, **template: Any) -> None:  # noqa: F811 - not the fixture
    import pkcs11

    attribute = pkcs11.Attribute
    strong = {
        attribute.TOKEN: True,
        attribute.SENSITIVE: True,
        attribute.EXTRACTABLE: False,
        attribute.ENCRYPT: True,
        attribute.DECRYPT: True,
    }
    size = template.pop("size", 256)
    strong.update({getattr(attribute, name): value for name, value in template.items()})
    with token.session() as session:
        session.generate_key(pkcs11.KeyType.AES, size, label=label, store=True, template=strong)


def test_hsm_init_refuses_and_leaves_alone_an_existing_key_with_weaker_attributes(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    pkcs11 = pytest.importorskip("pkcs11")
    _weak_key(token, "weak-for-init", SENSITIVE=False, EXTRACTABLE=True)
    settings = token.settings(tmp_path / "kms.db", key_label="weak-for-init")
    with pytest.raises(KeystoreError, match="refusing the key 'weak-for-init'.*extractable"):
        create_hsm_key(settings)
    with token.session() as session:
        (key,) = session.get_objects({pkcs11.Attribute.LABEL: "weak-for-init"})
        assert key[pkcs11.Attribute.EXTRACTABLE]  # left as it was


# -- faults at opening: one message each, nothing written ---------------------------------------


def _not_a_library(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    fake = path / "libfake.so"
    fake.write_bytes(b"not an ELF file")
    return settings.with_overrides(pkcs11_module=fake)


def _wrong_pin(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    pin = path / "wrong.pin"
    pin.write_text("0000\n")
    pin.chmod(0o600)
    return settings.with_overrides(pkcs11_pin_file=pin)


def _open_pin_file(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    pin = path / "open.pin"
    pin.write_bytes(token.pin_file.read_bytes())
    pin.chmod(0o644)
    return settings.with_overrides(pkcs11_pin_file=pin)


def _ambiguous(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    _weak_key(token, "twice")
    _weak_key(token, "twice")
    return settings.with_overrides(pkcs11_key_label="twice")


def _extractable(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    _weak_key(token, "extractable", EXTRACTABLE=True)
    return settings.with_overrides(pkcs11_key_label="extractable")


def _aes_128(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    _weak_key(token, "aes-128", size=128)
    return settings.with_overrides(pkcs11_key_label="aes-128")


def _not_sensitive(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    _weak_key(token, "readable", SENSITIVE=False)
    return settings.with_overrides(pkcs11_key_label="readable")


def _encrypt_only(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    _weak_key(token, "encrypt-only", DECRYPT=False)
    return settings.with_overrides(pkcs11_key_label="encrypt-only")


def _another_key(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    create_hsm_key(settings.with_overrides(pkcs11_key_label="another"))
    return settings.with_overrides(pkcs11_key_label="another")


def _tampered(settings: Settings, token: Token, path: Path) -> Settings:  # noqa: F811
    database = Path(settings.database_dsn)
    sealed = bytearray(metadata(database)["root_secret"])
    sealed[-1] ^= 1
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE kms_metadata SET value = ? WHERE name = 'root_secret'", (sealed,))
    return settings


FAULTS: dict[str, tuple[Callable[[Settings, Token, Path], Settings], str]] = {
    "module missing": (
        lambda s, t, p: s.with_overrides(pkcs11_module=p / "missing.so"),
        "the PKCS#11 module {tmp}/missing.so does not exist",
    ),
    "not a PKCS#11 library": (_not_a_library, "{tmp}/libfake.so is not a PKCS#11 library"),
    "token absent": (
        lambda s, t, p: s.with_overrides(pkcs11_token_label="no-such-token"),
        "no token labelled 'no-such-token'",
    ),
    "wrong PIN": (_wrong_pin, "the PIN in {tmp}/wrong.pin is wrong for token 'kms-test'"),
    "PIN file open to others": (_open_pin_file, "PIN file {tmp}/open.pin is accessible"),
    "key absent": (
        lambda s, t, p: s.with_overrides(pkcs11_key_label="no-such-key"),
        "holds no secret key labelled 'no-such-key'",
    ),
    "key ambiguous": (_ambiguous, "more than one secret key labelled 'twice'"),
    "key extractable": (_extractable, "refusing the key 'extractable' of token 'kms-test'"),
    "key of 128 bits": (_aes_128, "it is 128 bits, not 256"),
    "key not sensitive": (
        _not_sensitive,
        "refusing the key 'readable' of token 'kms-test': it is not sensitive (",
    ),
    "key that cannot decrypt": (_encrypt_only, "it is not allowed to encrypt and decrypt"),
    "another key": (_another_key, "root secret does not open with the key 'another'"),
    "sealed root secret altered": (_tampered, "root secret does not open with the key 'kms-root'"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_at_opening_names_its_cause_and_writes_nothing(
    hsm_keystore: Settings,
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    fault: str,
) -> None:
    make, expected = FAULTS[fault]
    faulty_dir = tmp_path / "fault"
    faulty_dir.mkdir()
    settings = make(hsm_keystore.with_overrides(), token, faulty_dir)
    database = Path(hsm_keystore.database_dsn)
    before = database.read_bytes()
    with pytest.raises(KeystoreError) as raised:
        open_master_keyring(settings)
    message = raised.value.public_message
    assert expected.format(tmp=faulty_dir) in message
    assert "\n" not in message
    assert database.read_bytes() == before
    if fault != "sealed root secret altered":
        open_master_keyring(hsm_keystore).close()  # the control: the right settings still open


def test_two_tokens_of_one_label_are_refused_as_ambiguous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = make_token(tmp_path / "softhsm")  # not the session's token: it keeps one of its label
    monkeypatch.setenv("SOFTHSM2_CONF", str(own.config))
    add_token(own, own.label)
    with pytest.raises(KeystoreError, match="more than one token is labelled 'kms-test'"):
        create_hsm_key(own.settings(tmp_path / "kms.db"))


def test_the_pin_buffer_is_overwritten_after_login(
    hsm_keystore: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/security.md: python-pkcs11 takes the PIN as a ``str`` (an immutable copy kms cannot
    overwrite); the buffer kms read it into is overwritten once it is logged in."""
    read: list[bytearray] = []
    real = kms.service.pkcs11.read_secret_file

    def reading(*args: Any) -> bytearray:
        read.append(real(*args))
        return read[-1]

    monkeypatch.setattr(kms.service.pkcs11, "read_secret_file", reading)
    open_master_keyring(hsm_keystore).close()
    assert len(read) == 1 and read[0] == bytearray(len(read[0]))


def test_a_keystore_from_before_root_secrets_is_sent_to_upgrade_with_the_passphrase(
    hsm_keystore: Settings,
) -> None:
    """A keystore without a sealed root secret (format 3) has none the HSM could open."""
    backend = open_pkcs11_backend(hsm_keystore)
    try:
        with pytest.raises(UpgradeNeeded, match="run `kms upgrade` with kms.master_key.backend"):
            backend.legacy_root({})
    finally:
        backend.close()


def test_a_passphrase_keystore_opened_with_the_pkcs11_backend_names_the_backend(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    passphrase_settings = make_settings(tmp_path)
    init_database(passphrase_settings)
    create_hsm_key(token.settings(tmp_path / "kms.db"))
    with pytest.raises(KeystoreError, match="sealed by the passphrase backend, but "):
        open_master_keyring(token.settings(tmp_path / "kms.db"))


# -- moving the root secret between backends -----------------------------------------------------


def test_rekey_passphrase_to_pkcs11_to_passphrase_keeps_every_ciphertext(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    open_service: Callable[[Settings], KMSService],
) -> None:
    on_hsm = token.settings(tmp_path / "kms.db")
    on_passphrase = on_hsm.with_overrides(
        master_key_backend="passphrase",
        master_passphrase_file=make_settings(tmp_path).master_passphrase_file,
    )
    create_hsm_key(on_hsm)

    init_database(on_passphrase)
    service = open_service(on_passphrase)
    service.create_key("orders")
    made = {"passphrase": service.encrypt("orders", b"made on passphrase").ciphertext}
    wrapped_before = _wrapped_keys(on_passphrase)

    move_root_secret(on_passphrase, "pkcs11")
    rows = metadata(Path(on_passphrase.database_dsn))
    assert rows["root_secret"][:1] == b"\x02" and "kdf_parameters" not in rows
    with pytest.raises(KeystoreError, match="sealed by the pkcs11 backend"):
        open_master_keyring(on_passphrase)
    service = open_service(on_hsm)
    assert service.decrypt("orders", made["passphrase"]).plaintext == b"made on passphrase"
    made["pkcs11"] = service.encrypt("orders", b"made on pkcs11").ciphertext

    new_passphrase = tmp_path / "new.key"
    new_passphrase.write_bytes(b"another passphrase entirely\n")
    new_passphrase.chmod(0o600)
    move_root_secret(on_hsm, "passphrase", bytearray(b"another passphrase entirely"))
    back = on_passphrase.with_overrides(master_passphrase_file=new_passphrase)
    service = open_service(back)
    for made_on, ciphertext in made.items():
        assert service.decrypt("orders", ciphertext).plaintext == f"made on {made_on}".encode()
    assert _wrapped_keys(back) == wrapped_before  # the root secret moved; no key was re-wrapped
    with pytest.raises(KeystoreError):  # the old passphrase opens nothing any more
        open_master_keyring(on_passphrase)


def test_rekey_to_the_backend_in_use_is_refused(hsm_keystore: Settings) -> None:
    with pytest.raises(ConfigurationError, match="sealed by pkcs11 already"):
        move_root_secret(hsm_keystore, "pkcs11")


def test_a_move_refused_by_the_new_backend_changes_nothing(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The move is one transaction after the new backend has sealed and opened the root secret:
    a new backend that fails (here a key that is absent) leaves the old one opening it all."""
    on_passphrase = make_settings(tmp_path)
    init_database(on_passphrase)
    database = Path(on_passphrase.database_dsn)
    before = metadata(database)
    absent = token.settings(database, key_label="never-made")
    with pytest.raises(KeystoreError, match="no secret key labelled 'never-made'"):
        move_root_secret(
            on_passphrase.with_overrides(
                pkcs11_module=absent.pkcs11_module,
                pkcs11_token_label=absent.pkcs11_token_label,
                pkcs11_key_label="never-made",
                pkcs11_pin_file=absent.pkcs11_pin_file,
            ),
            "pkcs11",
        )
    assert metadata(database) == before
    open_master_keyring(on_passphrase).close()
    assert TEST_PASSPHRASE  # the passphrase that still opens it


def _wrapped_keys(settings: Settings) -> list[bytes]:
    with closing(sqlite3.connect(settings.database_dsn)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT wrapped_key FROM key_versions")]


@pytest.mark.needs("pkcs11-tool")
def test_a_key_made_by_pkcs11_tool_as_the_docs_say_seals_a_keystore(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    open_service: Callable[[Settings], KMSService],
) -> None:
    """docs/operations.md: a key made by OpenSC's pkcs11-tool with the options it gives."""
    made = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            str(token.module),
            "--token-label",
            token.label,
            "--login",
            "--pin",
            USER_PIN,
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "from-pkcs11-tool",
            "--sensitive",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    settings = token.settings(tmp_path / "kms.db", key_label="from-pkcs11-tool")
    assert create_hsm_key(settings) is False  # found, and strong enough
    init_database(settings)
    service = open_service(settings)
    service.create_key("orders")
    ciphertext = service.encrypt("orders", b"sealed by a pkcs11-tool key").ciphertext
    assert open_service(settings).decrypt("orders", ciphertext).plaintext == (
        b"sealed by a pkcs11-tool key"
    )


@pytest.mark.parametrize(
    "attribute", ["pkcs11_module", "pkcs11_token_label", "pkcs11_key_label", "pkcs11_pin_file"]
)
def test_each_missing_pkcs11_setting_is_named(hsm_keystore: Settings, attribute: str) -> None:
    key = "kms.master_key." + attribute.removeprefix("pkcs11_")
    with pytest.raises(ConfigurationError, match=f"{key} is not set, and kms.master_key.backend"):
        open_master_keyring(hsm_keystore.with_overrides(**{attribute: None}))


def test_a_move_refuses_while_a_server_holds_the_database(hsm_keystore: Settings) -> None:
    database = Path(hsm_keystore.database_dsn)
    before = database.read_bytes()
    fd = hold_serving_lock(hsm_keystore.database_url)
    try:
        with pytest.raises(DatabaseInUse, match="stop every kms server first"):
            move_root_secret(hsm_keystore, "passphrase", bytearray(b"a passphrase"))
    finally:
        assert fd is not None
        os.close(fd)
    assert database.read_bytes() == before


def test_a_move_killed_in_its_transaction_leaves_the_old_backend_opening_everything(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    open_service: Callable[[Settings], KMSService],
) -> None:
    """The child writes the HSM's sealed root secret into its transaction, then is killed
    before the KDF parameters go and before it commits."""
    on_hsm = token.settings(tmp_path / "kms.db")
    create_hsm_key(on_hsm)
    passphrase_file = make_settings(tmp_path).master_passphrase_file
    on_passphrase = on_hsm.with_overrides(
        master_key_backend="passphrase", master_passphrase_file=passphrase_file
    )
    init_database(on_passphrase)
    service = open_service(on_passphrase)
    service.create_key("orders")
    ciphertext = service.encrypt("orders", b"before the kill").ciphertext
    before = metadata(tmp_path / "kms.db")
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        import kms.store.keystore_rows as rows
        from kms.rekey import move_root_secret
        from kms.settings import Settings

        real_replace = rows.replace_keystore_rows

        def replace_then_die(conn, keystore, remove=()):
            real_replace(conn, keystore)  # the sealed root secret, in the open transaction
            os.kill(os.getpid(), signal.SIGKILL)

        import kms.store.repository
        kms.store.repository.replace_keystore_rows = replace_then_die
        settings = Settings(
            database_dsn={str(tmp_path / "kms.db")!r},
            master_key_backend="passphrase",
            master_passphrase_file=Path({str(passphrase_file)!r}),
            pkcs11_module=Path({str(token.module)!r}),
            pkcs11_token_label={token.label!r},
            pkcs11_key_label="kms-root",
            pkcs11_pin_file=Path({str(token.pin_file)!r}),
            insecure_test_kdf_floor=1000,
            kdf_iterations=1000,
        )
        move_root_secret(settings, "pkcs11")
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False
    )
    assert child.returncode == -signal.SIGKILL
    assert metadata(tmp_path / "kms.db") == before
    assert open_service(on_passphrase).decrypt("orders", ciphertext).plaintext == (
        b"before the kill"
    )


# -- kms rekey on the pkcs11 backend: a new root secret, sealed by the HSM's key or another ------


def test_a_rekey_onto_another_hsm_key_killed_half_way_leaves_the_old_key_opening_everything(
    hsm_keystore: Settings,
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    open_service: Callable[[Settings], KMSService],
) -> None:
    """``kms rekey --key-label NEW`` re-wraps every version in one transaction: killed after the
    first of three, the old key still opens the keystore and every key, and NEW opens nothing."""
    service = open_service(hsm_keystore)
    service.create_key("orders")
    service.rotate_key("orders")
    service.rotate_key("orders")
    ciphertext = service.encrypt("orders", b"before the kill").ciphertext
    new_label = f"kill-{tmp_path.name}"
    create_hsm_key(hsm_keystore.with_overrides(pkcs11_key_label=new_label))
    before = metadata(Path(hsm_keystore.database_dsn))
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from kms.rekey import rekey_database
        from kms.settings import Settings

        class KillAfterOne:
            def start(self, total, label):
                assert total == 3
            def advance(self, count=1):
                os.kill(os.getpid(), signal.SIGKILL)

        settings = Settings(
            database_dsn={hsm_keystore.database_dsn!r},
            master_key_backend="pkcs11",
            pkcs11_module=Path({str(token.module)!r}),
            pkcs11_token_label={token.label!r},
            pkcs11_key_label="kms-root",
            pkcs11_pin_file=Path({str(token.pin_file)!r}),
        )
        rekey_database(settings, None, KillAfterOne(), key_label={new_label!r})
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parents[2], check=False
    )
    assert child.returncode == -signal.SIGKILL
    assert metadata(Path(hsm_keystore.database_dsn)) == before
    assert open_service(hsm_keystore).decrypt("orders", ciphertext).plaintext == (
        b"before the kill"
    )
    with pytest.raises(KeystoreError, match=f"does not open with the key '{new_label}'"):
        open_master_keyring(hsm_keystore.with_overrides(pkcs11_key_label=new_label))


def test_a_move_to_pkcs11_with_a_key_label_seals_by_that_key(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    open_service: Callable[[Settings], KMSService],
) -> None:
    on_passphrase = make_settings(tmp_path)
    init_database(on_passphrase)
    service = open_service(on_passphrase)
    service.create_key("orders")
    ciphertext = service.encrypt("orders", b"moved onto a chosen key").ciphertext
    label = f"chosen-{tmp_path.name}"
    on_chosen = token.settings(on_passphrase.database_dsn, key_label=label)
    create_hsm_key(on_chosen)
    move_root_secret(
        on_passphrase.with_overrides(
            pkcs11_module=token.module,
            pkcs11_token_label=token.label,
            pkcs11_key_label="kms-root",
            pkcs11_pin_file=token.pin_file,
        ),
        "pkcs11",
        key_label=label,
    )
    assert open_service(on_chosen).decrypt("orders", ciphertext).plaintext == (
        b"moved onto a chosen key"
    )


def test_rekey_arguments_for_the_other_backend_are_refused_before_anything_is_read(
    hsm_keystore: Settings, tmp_path: Path
) -> None:
    database = Path(hsm_keystore.database_dsn)
    before = database.read_bytes()
    with pytest.raises(ConfigurationError, match="takes no new passphrase"):
        rekey_database(hsm_keystore, bytearray(b"a new passphrase, unused"))
    on_passphrase = make_settings(tmp_path)
    with pytest.raises(ConfigurationError, match="--key-label names an HSM key, but"):
        rekey_database(on_passphrase, bytearray(TEST_PASSPHRASE), key_label="kms-root")
    with pytest.raises(ConfigurationError, match="it goes with --to pkcs11"):
        move_root_secret(hsm_keystore, "passphrase", bytearray(TEST_PASSPHRASE), key_label="x")
    assert database.read_bytes() == before
