"""Master key lifecycle from settings: ``kms init``, ``kms upgrade``, ``kms check``, ``kms rekey``,
``kms backup`` and ``kms restore``, and the startup that opens the keystore. The database file,
its faults and making a new one live in kms.database.

Each runs in one process before any worker exists (the CLI, or gunicorn's master), and each
disposes of its database connections before returning, so nothing is shared across a fork.

Every problem either meets becomes a ``KeystoreError`` whose message is one line naming the
database and the cause; nothing else escapes (no traceback reaches the operator).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine

from kms.database import (
    NewDatabase,
    database_faults,
    database_of,
    directory_problem,
    is_empty_file,
    listing,
    not_initialised,
    sync_directory,
)
from kms.errors import (
    BackupError,
    DatabaseUnusable,
    InvalidBackup,
    InvalidKDFParameters,
    KMSError,
    NotInitialised,
    UpgradeNeeded,
)
from kms.service.backup import BackupWriter, verify_backup
from kms.service.keyring import PassphraseKeyring, zeroise
from kms.service.keys import IntegrityReport, KeyInfo, KMSService, Rotated
from kms.service.keystore import (
    OpenedKeystore,
    new_init_marker,
    new_keystore,
    new_master_key,
    open_keystore,
)
from kms.service.passphrase import obtain_passphrase
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.faults import existing_tables
from kms.store.repository import SQLKeyRepository, write_keystore
from kms.store.schema import current_revision, head_revision, upgrade_to_head
from kms.store.serving import ensure_not_serving
from kms.store.snapshot import column_names, read_snapshot, table_names, write_rows


def init_database(settings: Settings) -> None:
    """Create the schema, the salt, the KDF parameters and the init marker.

    Only a database that holds nothing is initialised (kms.database): one holding a keystore is
    refused with ``AlreadyInitialised``, one holding anything else (another application's tables,
    sequences, types...) with ``DatabaseNotEmpty``, one a server uses with ``DatabaseInUse``, and
    none of them is written to. The passphrase is read only after those checks.

    It is all or nothing. The schema and the keystore rows are written in one transaction; a
    SQLite database is built in a temporary file beside the target and moved into place only
    when complete. A failure part-way leaves no database behind, so a later ``kms init`` works.
    """
    database = NewDatabase(settings, "initialise")
    passphrase = obtain_passphrase(settings.master_passphrase_file)
    try:
        kdf_parameters, init_marker = new_keystore(
            passphrase, settings.kdf_iterations, min_iterations=settings.kdf_floor
        )
    finally:
        zeroise(passphrase)
    database.create(lambda conn: write_keystore(conn, kdf_parameters, init_marker))


def open_master_keyring(settings: Settings) -> PassphraseKeyring:
    """Read the passphrase, derive the master key once and prove it on the init marker."""
    name, path = database_of(settings)
    if path is not None:
        if not path.parent.is_dir():
            raise DatabaseUnusable(
                f"cannot open database {path}: directory {path.parent} does not exist"
            )
        if is_empty_file(path):
            # Connecting would create the file, or write a WAL header into an empty one.
            raise not_initialised(name)
        # SQLite opens a database it cannot write (read-only or full file system, with the -wal
        # and -shm files already there) without complaint; every write would then fail.
        problem = directory_problem(path.parent)
        if problem is None and not os.access(path, os.R_OK | os.W_OK):
            problem = f"the file {path} is not readable and writable by this user"
        if problem is not None:
            raise DatabaseUnusable(f"cannot open database {path}: {problem}")
    with database_faults("open", name, path):
        engine = create_kms_engine(settings.database_url, pool=False)
        try:
            repository = SQLKeyRepository(engine)
            try:
                repository.read_keystore()  # "run kms init" comes before asking for a passphrase
            except NotInitialised:
                tables = existing_tables(engine)
                if tables:
                    raise NotInitialised(
                        f"database {name} is not a kms keystore: it holds other tables "
                        f"({listing(tables)}); check database.dsn"
                    ) from None
                raise not_initialised(name) from None
            _require_current_schema(name, engine)
            return _open(settings, name, repository).keyring
        finally:
            engine.dispose()


@dataclass(frozen=True)
class UpgradeResult:
    sealed_keys: int
    sealed_versions: int
    already_current: bool
    #: The schema revisions before and after, when the schema was migrated (None otherwise).
    migrated: tuple[str | None, str] | None = None


def upgrade_database(settings: Settings) -> UpgradeResult:
    """``kms upgrade``: migrate the schema, then (once) compute the MAC of every existing row.

    Run with every kms node stopped. The MACs need the master key, so the passphrase is read
    after the migration. Rows are sealed only if they are consistent (see
    ``KMSService.seal_rows``); otherwise ``IntegrityFailure`` names the row and no MAC is
    written.
    """
    with _engine(settings, "upgrade") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        before, head = current_revision(engine), head_revision()
        upgrade_to_head(engine)
        migrated = None if before == head else (before, head)
        opened = _open(settings, name, repository, allow_unsealed=True)
        try:
            if opened.sealed:
                return UpgradeResult(0, 0, already_current=migrated is None, migrated=migrated)
            service = KMSService.from_settings(settings, repository, opened.keyring)
            keys, versions = service.seal_rows(new_init_marker(opened.keyring))
            return UpgradeResult(keys, versions, already_current=False, migrated=migrated)
        finally:
            opened.keyring.close()


def check_database(settings: Settings) -> IntegrityReport:
    """``kms check``: verify every key row and version row; the report names each failure."""
    with _engine(settings, "check") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        _require_current_schema(name, engine)
        keyring = _open(settings, name, repository).keyring
        try:
            return KMSService.from_settings(settings, repository, keyring).check_integrity()
        finally:
            keyring.close()


def destroy_due_keys(
    settings: Settings,
    on_destroyed: Callable[[KeyInfo], None],
    on_failure: Callable[[str, KMSError], None],
    now: datetime | None = None,
) -> list[str]:
    """``kms destroy-due``: destroy every key whose deletion window has passed.

    The same service function serves every node; safe to run on several at once (see
    ``KMSService.destroy_due``). ``now`` is for tests; the command always uses the clock.
    """
    with _engine(settings, "open") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        _require_current_schema(name, engine)
        keyring = _open(settings, name, repository).keyring
        try:
            service = KMSService.from_settings(settings, repository, keyring)
            return service.destroy_due(now, on_destroyed=on_destroyed, on_failure=on_failure)
        finally:
            keyring.close()


class Progress(Protocol):
    """What a long operator command reports to whoever shows it (the CLI's progress bar)."""

    def start(self, total: int, label: str) -> None: ...
    def advance(self, count: int = 1) -> None: ...


class NoProgress:
    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass


@dataclass(frozen=True)
class RekeyResult:
    keys: int
    versions: int


def rekey_database(
    settings: Settings, new_passphrase: bytearray, progress: Progress | None = None
) -> RekeyResult:
    """``kms rekey``: a new salt and master key; every version re-wrapped, every row re-MAC'd.

    Refuses while a server uses the database (kms.store.serving). One transaction: killed at any
    point, the old passphrase still opens the keystore and every key works; once it returns,
    only the new passphrase does. ``new_passphrase`` is overwritten either way.
    """
    progress = progress or NoProgress()
    try:
        with _engine(settings, "rekey") as (name, engine):
            repository = SQLKeyRepository(engine)
            repository.read_keystore()
            _require_current_schema(name, engine)
            with ensure_not_serving(settings.database_url, engine, "rekey"):
                old = _open(settings, name, repository).keyring
                try:
                    kdf_parameters, marker, new = new_master_key(
                        new_passphrase, settings.kdf_iterations, min_iterations=settings.kdf_floor
                    )
                    try:
                        service = KMSService.from_settings(settings, repository, old)
                        progress.start(service.count_versions(), "re-wrapping key versions")
                        keys, versions = service.rekey(
                            new, kdf_parameters, marker, after_version=progress.advance
                        )
                    finally:
                        new.close()
                finally:
                    old.close()
    finally:
        zeroise(new_passphrase)
    return RekeyResult(keys, versions)


def rotate_due_database(settings: Settings, progress: Progress | None = None) -> list[Rotated]:
    """``kms rotate-due``: rotate every key whose latest version is older than its period.

    Safe while servers run and while other ``rotate-due`` run at the same moment: each key is
    rotated under its row lock only if its latest version is still the one found due.
    """
    progress = progress or NoProgress()
    with _engine(settings, "rotate keys in") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        _require_current_schema(name, engine)
        keyring = _open(settings, name, repository).keyring
        try:
            service = KMSService.from_settings(settings, repository, keyring)
            progress.start(service.count_rotating_keys(), "checking keys with a rotation period")
            return service.rotate_due(on_checked=lambda _: progress.advance())
        finally:
            keyring.close()


@dataclass(frozen=True)
class BackupResult:
    rows: int
    schema: str


def backup_database(
    settings: Settings, target: Path, progress: Progress | None = None
) -> BackupResult:
    """``kms backup FILE``: a consistent snapshot of the whole database, tagged, mode 0600.

    Safe while servers run (one read transaction). Written to a private temporary file beside
    ``target`` and linked into place only when complete and synced: killed at any point, there
    is either no ``target`` or a whole one. An existing ``target`` is never replaced.
    """
    progress = progress or NoProgress()
    if target.exists():
        raise BackupError(f"refusing to overwrite {target}; choose a new file name")
    with _engine(settings, "back up") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        _require_current_schema(name, engine)
        keyring = _open(settings, name, repository).keyring
        try:
            writer = BackupWriter(keyring)
        finally:
            keyring.close()
        directory = target.parent if str(target.parent) else Path(".")
        try:
            descriptor, temporary_name = tempfile.mkstemp(
                prefix=f".{target.name}.partial-", dir=directory
            )
        except OSError as error:
            raise BackupError(f"cannot write {target}: {error.strerror}") from None
        temporary = Path(temporary_name)
        rows, schema = 0, ""
        try:
            with os.fdopen(descriptor, "wb") as out:  # mkstemp made it 0600

                def started(read_schema: str, total: int) -> None:
                    nonlocal schema
                    schema = read_schema
                    out.write(writer.header(read_schema, total))
                    progress.start(total, f"backing up {total} rows")

                def row(table: str, values: dict[str, Any]) -> None:
                    nonlocal rows
                    out.write(writer.row(table, values))
                    rows += 1
                    progress.advance()

                with database_faults("back up", name, None):
                    read_snapshot(engine, started, row)
                out.write(writer.seal())
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, target)  # fails if target appeared meanwhile: never replaced
            except FileExistsError:
                raise BackupError(
                    f"refusing to overwrite {target}; choose a new file name"
                ) from None
            except OSError as error:
                raise BackupError(f"cannot write {target}: {error.strerror}") from None
            sync_directory(target.parent)
        finally:
            temporary.unlink(missing_ok=True)
    return BackupResult(rows=rows, schema=schema)


def restore_database(settings: Settings, source: Path, progress: Progress | None = None) -> int:
    """``kms restore FILE``: load a backup into an empty database (the configured one).

    Made as ``kms init`` makes one (kms.database.NewDatabase): refused unless the database holds
    nothing and no server uses it (the serving lock ``kms rekey`` takes, held until the end). The
    whole file is read and its tag checked with the passphrase (the master key derives from the
    backup's own KDF parameters) before anything is written or locked; then the schema and every
    row are written in one transaction (SQLite: into a temporary file moved into place when
    complete). Returns the number of rows.
    """
    progress = progress or NoProgress()
    try:
        data = source.read_bytes()
    except OSError as error:
        raise BackupError(f"cannot read {source}: {error.strerror}") from None
    database = NewDatabase(settings, "restore into")
    try:
        backup = verify_backup(
            data,
            obtain_passphrase(settings.master_passphrase_file),
            min_iterations=settings.kdf_floor,
            columns=lambda table: column_names(table) if table in table_names() else None,
        )
    except InvalidBackup as error:
        raise InvalidBackup(f"{source}: {error.public_message}") from None
    if backup.schema != head_revision():
        raise InvalidBackup(
            f"{source} was taken at schema revision {backup.schema}; this kms restores "
            f"{head_revision()} only: restore it with the kms that took it, then `kms upgrade`"
        )

    def fill(conn: Connection) -> None:
        # Started once the database is held alone: a refusal stays the command's one line.
        progress.start(len(backup.rows), f"restoring {len(backup.rows)} rows")
        write_rows(conn, iter(backup.rows), progress.advance)

    database.create(fill)
    return len(backup.rows)


def describe_database(settings: Settings) -> str:
    """The database for messages: its file, or its URL without the password."""
    return database_of(settings)[0]


@contextlib.contextmanager
def _engine(settings: Settings, action: str) -> Iterator[tuple[str, Engine]]:
    name, path = database_of(settings)
    if path is not None and is_empty_file(path):
        # Connecting would create the file, or write a WAL header into an empty one.
        raise not_initialised(name)
    with database_faults(action, name, path):
        engine = create_kms_engine(settings.database_url, pool=False)
        try:
            yield name, engine
        finally:
            engine.dispose()


def _require_current_schema(name: str, engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise UpgradeNeeded(
            f"the database {name} has schema revision {current}, this kms "
            f"needs {head}: stop kms and run `kms upgrade`"
        )


def _open(
    settings: Settings, name: str, repository: SQLKeyRepository, *, allow_unsealed: bool = False
) -> OpenedKeystore:
    try:
        return open_keystore(
            repository,
            obtain_passphrase(settings.master_passphrase_file),
            min_iterations=settings.kdf_floor,
            allow_unsealed=allow_unsealed,
        )
    except UpgradeNeeded:
        raise UpgradeNeeded(
            f"the rows of {name} carry no MACs yet: stop kms and run `kms upgrade`"
        ) from None
    except InvalidKDFParameters as error:
        raise InvalidKDFParameters(f"{error.public_message} (kms_metadata in {name})") from None
