"""Master key lifecycle from settings: ``kms init``, ``kms check``, ``kms destroy-due`` and
``kms rotate-due``, and the startup that opens the keystore, which the other operator commands
share: ``kms upgrade`` (kms.upgrade), ``kms rekey`` (kms.rekey), ``kms backup`` and ``kms restore``
(kms.backups). The database file, its faults and making a new one live in kms.database.

Each runs in one process before any worker exists (the CLI, or gunicorn's master), and each
disposes of its database connections before returning, so nothing is shared across a fork.

Every problem either meets becomes a ``KeystoreError`` whose message is one line naming the
database and the cause; nothing else escapes (no traceback reaches the operator).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine

from kms.audit import AuditKey
from kms.audit_verify import verify_files
from kms.database import (
    NewDatabase,
    database_faults,
    database_of,
    directory_problem,
    is_empty_file,
    listing,
    not_initialised,
)
from kms.errors import (
    ConfigurationError,
    DatabaseUnusable,
    IntegrityFailure,
    InvalidKDFParameters,
    KeystoreTampered,
    KMSError,
    NotInitialised,
    RolledBack,
    UpgradeNeeded,
)
from kms.service.integrity import read_epoch
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keys import Generations, IntegrityReport, KeyInfo, KMSService, Rotated
from kms.service.keys.maintenance import newest_generations
from kms.service.keystore import (
    OpenedKeystore,
    new_keystore,
    open_keystore,
)
from kms.service.masterkey import MasterKeyBackend, PassphraseBackend
from kms.service.passphrase import obtain_passphrase, require_long_passphrase
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.faults import existing_tables
from kms.store.generations import GenerationJournal, journal_path
from kms.store.keystore_rows import write_keystore
from kms.store.records import EPOCH
from kms.store.repository import SQLKeyRepository
from kms.store.schema import current_revision, head_revision
from kms.store.serving import ensure_not_serving


def init_database(
    settings: Settings, *, allow_short_passphrase: bool = False, backend: str | None = None
) -> None:
    """Create the schema, a new root secret sealed by the master-key backend, the keystore id
    and the init marker.

    ``backend`` (``kms init --backend``) must be the backend the settings name
    (``kms.master_key.backend``): the one every later start opens the keystore with. Otherwise
    ``ConfigurationError`` names the setting, before anything is read or written.

    A passphrase shorter than ``MIN_PASSPHRASE_BYTES`` is refused (``PassphraseError``) unless
    ``allow_short_passphrase`` (``kms init --allow-short-passphrase``).

    Only a database that holds nothing is initialised (kms.database): one holding a keystore is
    refused with ``AlreadyInitialised``, one holding anything else (another application's tables,
    sequences, types...) with ``DatabaseNotEmpty``, one a server uses with ``DatabaseInUse``, and
    none of them is written to. The passphrase is read only after those checks.

    It is all or nothing. The schema and the keystore rows are written in one transaction; a
    SQLite database is built in a temporary file beside the target and moved into place only
    when complete. A failure part-way leaves no database behind, so a later ``kms init`` works.
    """
    require_backend(settings, backend, "kms init")
    database = NewDatabase(settings, "initialise")
    passphrase: bytearray | None = None
    if settings.master_key_backend == "passphrase":
        passphrase = obtain_passphrase(settings.master_passphrase_file)
        try:
            require_long_passphrase(
                passphrase, "the passphrase", allow_short=allow_short_passphrase
            )
        except BaseException:
            zeroise(passphrase)
            raise
    with master_key_backend(settings, passphrase) as sealer:
        keystore = new_keystore(sealer)
    database.create(lambda conn: write_keystore(conn, keystore))


def require_backend(settings: Settings, backend: str | None, command: str) -> None:
    """Refuse ``command --backend BACKEND`` unless the settings name the same backend: a
    keystore sealed by another would not open at the next start."""
    if backend is None or backend == settings.master_key_backend:
        return
    raise ConfigurationError(
        f"{command} --backend {backend}: kms.master_key.backend is "
        f"{settings.master_key_backend} ({settings.source}), and kms opens the keystore with "
        f"that backend: set kms.master_key.backend: {backend} (with pkcs11, also module, "
        "token_label, key_label and pin_file); nothing was written"
    )


@contextlib.contextmanager
def master_key_backend(
    settings: Settings, passphrase: bytearray | None = None
) -> Iterator[MasterKeyBackend]:
    """The backend ``kms.master_key.backend`` names, closed on leaving: ``passphrase`` reads
    ``kms.master_passphrase_file`` (or prompts), unless given ``passphrase`` (a buffer it
    overwrites); ``pkcs11`` opens its token (kms.service.pkcs11)."""
    backend: MasterKeyBackend
    if settings.master_key_backend == "pkcs11" and passphrase is None:
        from kms.service.pkcs11 import open_pkcs11_backend  # python-pkcs11: an optional extra

        backend = open_pkcs11_backend(settings)
    else:
        backend = PassphraseBackend(
            obtain_passphrase(settings.master_passphrase_file)
            if passphrase is None
            else passphrase,
            settings.kdf_iterations,
            min_iterations=settings.kdf_floor,
        )
    try:
        yield backend
    finally:
        backend.close()


def check_database_file(settings: Settings) -> tuple[str, Path | None]:
    """For a SQLite database, raise unless its file is there to be opened, without opening it:
    a missing file (or directory: ``kms init`` makes both) is a keystore not initialised yet.
    Run by ``kms serve`` before anything else of the configuration that ``kms init`` makes (the
    audit log's directory), so that starting before ``kms init`` says so. Returns the database's
    name and file (None: not SQLite)."""
    name, path = database_of(settings)
    if path is None:
        return name, path
    if not path.parent.is_dir():
        raise NotInitialised(
            f"the database {path} is not initialised: run `kms init` first (directory "
            f"{path.parent} does not exist)"
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
    return name, path


def open_master_keyring(settings: Settings) -> RootKeyring:
    """Open the root secret once with the configured backend and prove it on the init
    marker."""
    name, path = check_database_file(settings)
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
            require_current_schema(name, engine)
            started = time.perf_counter()
            with master_key_backend(settings) as backend:
                opened = open_named_keystore(settings, name, repository, backend)
            opened.keyring.open_seconds = time.perf_counter() - started
            # What /readyz and /metrics report: the backend in use, and when it opened.
            opened.keyring.backend = settings.master_key_backend
            opened.keyring.opened_at = time.time()
            try:
                _check_epoch(settings, name, opened)
            except BaseException:
                opened.keyring.close()
                raise
            return opened.keyring
        finally:
            engine.dispose()


def node_generations(settings: Settings, keystore_id: bytes) -> Generations:
    """What this node has seen of the keystore ``keystore_id``: its journal
    (``kms.state_file``, or beside a SQLite database), or memory alone."""
    path = journal_path(settings.state_file, settings.database_url)
    return Generations(None if path is None else GenerationJournal(path, keystore_id))


def _check_epoch(settings: Settings, name: str, opened: OpenedKeystore) -> None:
    """Refuse a keystore whose epoch is older than this node has seen (a rolled-back
    database), naming the journal that says so."""
    generations = node_generations(settings, opened.keyring.keystore_id)
    try:
        generations.observe_epoch(read_epoch(opened.keyring, opened.rows.get(EPOCH)))
    except RolledBack as error:
        journal = journal_path(settings.state_file, settings.database_url)
        raise KeystoreTampered(
            f"the database {name} was rolled back: {error.detail} ({journal}); if it was "
            "restored on purpose, remove that file on every node"
        ) from None
    except IntegrityFailure as error:
        raise KeystoreTampered(f"the database {name}: {error.detail}") from None
    finally:
        generations.close()


def check_database(settings: Settings, audit_files: tuple[Path, ...] = ()) -> IntegrityReport:
    """``kms check [--audit FILE]...``: verify every key row and version row, and each key's
    generation against the keystore epoch and the newest the audit trail records; the report
    names each failure."""
    trail = None
    if audit_files:
        lines: list[bytes] = []
        for file in audit_files:
            try:
                lines += file.read_bytes().splitlines()
            except OSError as error:
                raise ConfigurationError(
                    f"cannot read the audit log {file}: {error.strerror}"
                ) from None
        trail = newest_generations(lines)
    with command_keystore(settings, "check") as opened:
        keyring = opened.keyring
        service = KMSService.from_settings(settings, opened.repository, keyring)
        report = service.check_integrity(trail=trail)
        report.root_secret_seconds = keyring.open_seconds
        if audit_files:
            # A trail with lines deleted or edited could hide a rollback: its chain first.
            broken = verify_files(audit_files, AuditKey.of(keyring)).failure
            if broken is not None:
                report.failures.append(
                    f"audit trail {broken.path}:{broken.line}: chain broken: {broken.reason}"
                )
        return report


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
    with command_keystore(settings, "open") as opened:
        service = KMSService.from_settings(settings, opened.repository, opened.keyring)
        return service.destroy_due(now, on_destroyed=on_destroyed, on_failure=on_failure)


class Progress(Protocol):
    """What a long operator command reports to whoever shows it (the CLI's progress bar)."""

    def start(self, total: int, label: str) -> None: ...
    def advance(self, count: int = 1) -> None: ...


class NoProgress:
    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, count: int = 1) -> None:
        pass


def rotate_due_database(settings: Settings, progress: Progress | None = None) -> list[Rotated]:
    """``kms rotate-due``: rotate every key whose latest version is older than its period.

    Safe while servers run and while other ``rotate-due`` run at the same moment: each key is
    rotated under its row lock only if its latest version is still the one found due.
    """
    progress = progress or NoProgress()
    with command_keystore(settings, "rotate keys in") as opened:
        service = KMSService.from_settings(settings, opened.repository, opened.keyring)
        progress.start(service.count_rotating_keys(), "checking keys with a rotation period")
        return service.rotate_due(on_checked=lambda _: progress.advance())


def describe_database(settings: Settings) -> str:
    """The database for messages: its file, or its URL without the password."""
    return database_of(settings)[0]


@contextlib.contextmanager
def keystore_engine(settings: Settings, action: str) -> Iterator[tuple[str, Engine]]:
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


def require_current_schema(name: str, engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise UpgradeNeeded(
            f"the database {name} has schema revision {current}, this kms "
            f"needs {head}: stop kms and run `kms upgrade`"
        )


def open_keyring(settings: Settings, name: str, repository: SQLKeyRepository) -> RootKeyring:
    started = time.perf_counter()
    with master_key_backend(settings) as backend:
        keyring = open_named_keystore(settings, name, repository, backend).keyring
    keyring.open_seconds = time.perf_counter() - started
    return keyring


@dataclass(frozen=True)
class CommandKeystore:
    """The keystore as an operator command has it open: the database's ``name`` for messages,
    its ``engine`` and ``repository``, and the ``keyring`` holding the root secret."""

    name: str
    engine: Engine
    repository: SQLKeyRepository
    keyring: RootKeyring


@contextlib.contextmanager
def command_keystore(
    settings: Settings, action: str, *, alone: bool = False
) -> Iterator[CommandKeystore]:
    """Open an initialised keystore for an operator command (``kms check``, ``destroy-due``,
    ``rotate-due``, ``backup``, ``rekey``), ``action`` naming it in messages ("cannot {action}
    database ...", "refusing to {action}"), in this order:

    the database opened (``keystore_engine``: every fault one line naming it); ``NotInitialised``
    before anything else is asked; ``UpgradeNeeded`` unless the schema is current; with
    ``alone``, ``DatabaseInUse`` while a kms server uses the database, which is then held alone
    until the block ends (kms.store.serving); last, the root secret opened by the configured
    backend (the passphrase is read only once all the above passed).

    On leaving, the keyring is closed (the root secret overwritten), then the engine disposed.
    Closing the keyring earlier inside the block is allowed: a second close does nothing.
    """
    with keystore_engine(settings, action) as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        require_current_schema(name, engine)
        serving = (
            ensure_not_serving(settings.database_url, engine, action)
            if alone
            else contextlib.nullcontext()
        )
        with serving:
            keyring = open_keyring(settings, name, repository)
            try:
                yield CommandKeystore(name, engine, repository, keyring)
            finally:
                keyring.close()


def open_named_keystore(
    settings: Settings,
    name: str,
    repository: SQLKeyRepository,
    backend: MasterKeyBackend,
    *,
    allow_old: bool = False,
) -> OpenedKeystore:
    """``open_keystore``, its refusals naming the database ``name``."""
    try:
        return open_keystore(repository, backend, allow_old=allow_old)

    except UpgradeNeeded:
        raise UpgradeNeeded(
            f"the keystore {name} is of an older format (its rows carry no MACs, or MACs bound "
            "to no keystore): stop kms and run `kms upgrade`"
        ) from None
    except KeystoreTampered as error:
        raise KeystoreTampered(f"{name}: {error.public_message}") from None
    except InvalidKDFParameters as error:
        raise InvalidKDFParameters(f"{error.public_message} (kms_metadata in {name})") from None
