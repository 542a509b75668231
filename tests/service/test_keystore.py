"""``kms init`` and startup (init_database, open_master_keyring) on real SQLite files.

Every refusal must leave the database exactly as it was: a failed start must never half-create,
migrate or convert a keystore. Hence the byte-for-byte comparisons.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from kms.crypto.kdf import MIN_ITERATIONS, KDFParameters
from kms.errors import (
    AlreadyInitialised,
    KeystoreError,
    NotInitialised,
    PassphraseError,
    WrongPassphrase,
)
from kms.master import init_database, open_master_keyring
from kms.service.keystore import KeystoreFormat
from kms.settings import Settings
from kms.store.records import KDF_PARAMETERS
from tests.helpers.keystore import TEST_ITERATIONS, TEST_PASSPHRASE, write_passphrase_file


def database_file(settings: Settings) -> Path:
    return Path(settings.database_dsn)


def sqlite_files(settings: Settings) -> set[Path]:
    """The database file and whatever -wal, -shm or -journal SQLite left beside it."""
    path = database_file(settings)
    return set(path.parent.glob(path.name + "*"))


#: Long enough for ``kms init`` (MIN_PASSPHRASE_BYTES), newline aside.
PASSPHRASE = b"a passphrase of its own"


def passphrase_file(directory: Path, content: bytes, mode: int = 0o400) -> Path:
    path = directory / "passphrase"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def open_and_close(settings: Settings) -> None:
    open_master_keyring(settings).close()


def stored_kdf_parameters(settings: Settings) -> KDFParameters:
    with contextlib.closing(sqlite3.connect(database_file(settings))) as conn:
        (value,) = conn.execute(
            "SELECT value FROM kms_metadata WHERE name = ?", (KDF_PARAMETERS,)
        ).fetchone()
    return KDFParameters.decode(bytes(value), min_iterations=TEST_ITERATIONS)


# -- the happy path, for contrast -----------------------------------------------------------


def test_init_then_open(settings: Settings) -> None:
    assert not database_file(settings).exists()
    init_database(settings)
    keyring = open_master_keyring(settings)
    try:
        blob = keyring.wrap(b"secret", b"aad")
        assert keyring.unwrap(blob, b"aad") == bytearray(b"secret")
    finally:
        keyring.close()


def test_init_creates_missing_parent_directories(tmp_path: Path, settings: Settings) -> None:
    nested = settings.with_overrides(database_dsn=str(tmp_path / "data" / "nested" / "kms.db"))
    init_database(nested)
    open_and_close(nested)


def test_stored_kdf_parameters_record_iterations_and_a_fresh_salt(
    tmp_path: Path, settings: Settings
) -> None:
    init_database(settings)
    params = stored_kdf_parameters(settings)
    assert params.iterations == TEST_ITERATIONS
    assert len(params.salt) == 16
    assert params.length == 32
    second = settings.with_overrides(database_dsn=str(tmp_path / "second.db"))
    init_database(second)
    assert stored_kdf_parameters(second).salt != params.salt


def test_stored_iterations_are_used_whatever_the_settings_say(initialised: Settings) -> None:
    # The iterations in force are the stored ones: raising the setting later must not lock the
    # operator out of an existing keystore.
    open_and_close(initialised.with_overrides(kdf_iterations=MIN_ITERATIONS * 2))


def test_production_default_is_600000_iterations() -> None:
    assert MIN_ITERATIONS == 600_000
    assert Settings(database_dsn="kms.db").kdf_iterations == 600_000


# -- wrong passphrase ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrong",
    [b"wrong", TEST_PASSPHRASE.upper(), TEST_PASSPHRASE + b" ", TEST_PASSPHRASE[:-1]],
    ids=["other", "case", "trailing-space", "one-byte-short"],
)
def test_wrong_passphrase_is_refused(tmp_path: Path, initialised: Settings, wrong: bytes) -> None:
    before = database_file(initialised).read_bytes()
    bad = initialised.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "wrong.key", wrong)
    )
    with pytest.raises(WrongPassphrase):
        open_master_keyring(bad)
    assert database_file(initialised).read_bytes() == before
    open_and_close(initialised)  # the right one still works


# -- the passphrase file -----------------------------------------------------------------------

GROUP_OR_OTHER_MODES = [0o400 | bit for bit in (0o040, 0o020, 0o010, 0o004, 0o002, 0o001)] + [
    0o440,
    0o404,
    0o644,
    0o660,
    0o777,
]


@pytest.mark.parametrize("mode", GROUP_OR_OTHER_MODES, ids=lambda mode: f"{mode:04o}")
def test_open_refuses_a_passphrase_file_others_can_access(
    tmp_path: Path, initialised: Settings, mode: int
) -> None:
    before = database_file(initialised).read_bytes()
    exposed = initialised.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, TEST_PASSPHRASE, mode)
    )
    with pytest.raises(PassphraseError) as excinfo:
        open_master_keyring(exposed)
    assert "chmod 0400" in str(excinfo.value)
    assert database_file(initialised).read_bytes() == before


@pytest.mark.parametrize("mode", [0o400, 0o600], ids=lambda mode: f"{mode:04o}")
def test_open_accepts_a_passphrase_file_only_its_owner_can_access(
    tmp_path: Path, initialised: Settings, mode: int
) -> None:
    private = initialised.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, TEST_PASSPHRASE, mode)
    )
    open_and_close(private)


@pytest.mark.parametrize("mode", [0o440, 0o404], ids=lambda mode: f"{mode:04o}")
def test_init_refuses_an_exposed_passphrase_file_and_creates_nothing(
    tmp_path: Path, settings: Settings, mode: int
) -> None:
    exposed = settings.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, TEST_PASSPHRASE, mode)
    )
    with pytest.raises(PassphraseError):
        init_database(exposed)
    assert sqlite_files(settings) == set()


@pytest.mark.parametrize("content", [b"", b"\n"], ids=["empty", "newline-only"])
def test_an_empty_passphrase_is_refused(tmp_path: Path, settings: Settings, content: bytes) -> None:
    empty = settings.with_overrides(master_passphrase_file=passphrase_file(tmp_path, content))
    with pytest.raises(PassphraseError):
        init_database(empty)
    assert sqlite_files(settings) == set()
    init_database(settings)
    before = database_file(settings).read_bytes()
    with pytest.raises(PassphraseError):
        open_master_keyring(empty)
    assert database_file(settings).read_bytes() == before


def test_a_missing_passphrase_file_is_refused(tmp_path: Path, initialised: Settings) -> None:
    missing = initialised.with_overrides(master_passphrase_file=tmp_path / "absent.key")
    with pytest.raises(PassphraseError):
        open_master_keyring(missing)


def test_a_symlinked_passphrase_file_is_refused(tmp_path: Path, initialised: Settings) -> None:
    # O_NOFOLLOW: the mode check must be about the file actually read, not a link to it.
    link = tmp_path / "link.key"
    link.symlink_to(initialised.master_passphrase_file)
    with pytest.raises(PassphraseError):
        open_master_keyring(initialised.with_overrides(master_passphrase_file=link))


def test_a_directory_is_not_a_passphrase_file(tmp_path: Path, initialised: Settings) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises(PassphraseError):
        open_master_keyring(initialised.with_overrides(master_passphrase_file=directory))


def test_one_trailing_newline_is_stripped(tmp_path: Path, settings: Settings) -> None:
    with_newline = settings.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, PASSPHRASE + b"\n")
    )
    init_database(with_newline)
    (tmp_path / "passphrase").unlink()
    open_and_close(
        settings.with_overrides(master_passphrase_file=passphrase_file(tmp_path, PASSPHRASE))
    )


def test_only_one_trailing_newline_is_stripped(tmp_path: Path, settings: Settings) -> None:
    # "P\n\n" holds the passphrase "P\n": the second newline is part of it.
    two_newlines = settings.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, PASSPHRASE + b"\n\n")
    )
    init_database(two_newlines)
    (tmp_path / "passphrase").unlink()
    with pytest.raises(WrongPassphrase):
        open_master_keyring(
            settings.with_overrides(
                master_passphrase_file=passphrase_file(tmp_path, PASSPHRASE + b"\n")
            )
        )
    (tmp_path / "passphrase").unlink()
    passphrase_file(tmp_path, PASSPHRASE + b"\n\n")
    open_and_close(two_newlines)


# -- uninitialised and initialised databases -----------------------------------------------------


def test_open_of_a_missing_database_says_run_kms_init(settings: Settings) -> None:
    with pytest.raises(NotInitialised) as excinfo:
        open_master_keyring(settings)
    assert "kms init" in str(excinfo.value)
    assert "kms init" in excinfo.value.public_message
    assert sqlite_files(settings) == set()  # opening must not create the file


def test_open_of_an_empty_sqlite_file_says_run_kms_init(settings: Settings) -> None:
    # What `sqlite3 kms.db .quit` or a connect-and-close leaves behind: a zero-byte file.
    sqlite3.connect(database_file(settings)).close()
    assert database_file(settings).read_bytes() == b""
    with pytest.raises(NotInitialised) as excinfo:
        open_master_keyring(settings)
    assert "kms init" in str(excinfo.value)
    assert database_file(settings).read_bytes() == b""
    assert sqlite_files(settings) == {database_file(settings)}


def test_uninitialised_comes_before_the_passphrase(tmp_path: Path, settings: Settings) -> None:
    # No passphrase file at all: the operator should first hear that init is missing.
    no_file = settings.with_overrides(master_passphrase_file=tmp_path / "absent.key")
    with pytest.raises(NotInitialised):
        open_master_keyring(no_file)


def test_init_of_an_empty_sqlite_file_works(settings: Settings) -> None:
    sqlite3.connect(database_file(settings)).close()
    init_database(settings)
    open_and_close(settings)


def test_second_init_is_refused_and_changes_nothing(tmp_path: Path, initialised: Settings) -> None:
    before = database_file(initialised).read_bytes()
    params = stored_kdf_parameters(initialised)
    other_passphrase = initialised.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "other.key", b"another"),
        kdf_iterations=TEST_ITERATIONS + 1,
    )
    for attempt in (initialised, other_passphrase):
        with pytest.raises(AlreadyInitialised):
            init_database(attempt)
        assert database_file(initialised).read_bytes() == before
    assert stored_kdf_parameters(initialised) == params
    open_and_close(initialised)
    with pytest.raises(WrongPassphrase):
        open_master_keyring(other_passphrase)


def test_second_init_is_refused_before_reading_the_passphrase(
    tmp_path: Path, initialised: Settings
) -> None:
    # "Already initialised" is the useful answer, not a complaint about the passphrase file.
    no_file = initialised.with_overrides(master_passphrase_file=tmp_path / "absent.key")
    with pytest.raises(AlreadyInitialised):
        init_database(no_file)


def test_keystore_errors_share_a_base_and_hold_no_passphrase(
    tmp_path: Path, initialised: Settings
) -> None:
    secret = b"do-not-print-me"
    bad = initialised.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, secret, 0o444)
    )
    with pytest.raises(KeystoreError) as excinfo:
        open_master_keyring(bad)
    assert secret.decode() not in str(excinfo.value)
    wrong = initialised.with_overrides(
        master_passphrase_file=write_passphrase_file(tmp_path / "wrong.key", secret)
    )
    with pytest.raises(KeystoreError) as excinfo:
        open_master_keyring(wrong)
    assert secret.decode() not in str(excinfo.value)


def test_init_creates_the_database_readable_by_its_owner_only(
    tmp_path: Path, settings: Settings
) -> None:
    nested = settings.with_overrides(database_dsn=str(tmp_path / "private" / "kms.db"))
    init_database(nested)
    path = database_file(nested)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_a_missing_database_named_by_a_driver_url_is_not_created(settings: Settings) -> None:
    path = database_file(settings)
    explicit = settings.with_overrides(database_dsn=f"sqlite+pysqlite:///{path}")
    with pytest.raises(NotInitialised):
        open_master_keyring(explicit)
    assert not path.exists()


def test_a_sqlite_file_that_is_not_a_keystore_is_left_as_it_was(settings: Settings) -> None:
    path = database_file(settings)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('someone else''s data')")
    before = path.read_bytes()
    with pytest.raises(NotInitialised):
        open_master_keyring(settings)
    assert path.read_bytes() == before


def test_a_passphrase_file_over_64_kib_is_refused(tmp_path: Path, settings: Settings) -> None:
    from kms.service.passphrase import MAX_PASSPHRASE_BYTES, read_passphrase_file

    longest = passphrase_file(tmp_path, b"p" * MAX_PASSPHRASE_BYTES)
    assert read_passphrase_file(longest) == bytearray(b"p" * MAX_PASSPHRASE_BYTES)
    longest.unlink()
    too_long = settings.with_overrides(
        master_passphrase_file=passphrase_file(tmp_path, b"p" * (MAX_PASSPHRASE_BYTES + 1))
    )
    with pytest.raises(PassphraseError) as excinfo:
        init_database(too_long)
    assert "longer than 65536 bytes" in excinfo.value.public_message
    assert sqlite_files(settings) == set()


def test_each_keystore_format_is_its_own_number() -> None:
    """The formats' numbers are the ones the operator's messages name (`the init marker is of
    keystore format 3`); two formats sharing one would make one an alias of the other, and a
    format-3 keystore (an unsealed root) count as current, so `kms upgrade` would never seal it."""
    assert {format.name: format.value for format in KeystoreFormat} == {
        "UNSEALED": 1,
        "UNBOUND": 2,
        "UNWRAPPED_ROOT": 3,
        "CURRENT": 4,
    }
