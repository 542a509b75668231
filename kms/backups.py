"""``kms backup FILE`` and ``kms restore FILE``: the keystore copied out while kms serves, and
loaded into an empty database (or, ``--as-clone``, into a keystore of its own).

The file format and the rules for trusting one are kms.service.backup's; this module is the
operator command around it: the snapshot read, the file written atomically, the restore made as
``kms init`` makes a database (kms.database.NewDatabase). Opening the keystore is kms.master's.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from kms.database import NewDatabase, database_faults, sync_directory
from kms.errors import BackupError, IntegrityFailure, InvalidBackup
from kms.master import NoProgress, Progress, command_keystore, master_key_backend
from kms.service.backup import BackupWriter, VerifiedBackup, verify_backup
from kms.service.integrity import read_epoch
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keys.maintenance import rekey_rows
from kms.service.keystore import KEYSTORE_ID_BYTES, new_root_secret, sealed_keystore_rows
from kms.service.masterkey import sealed_rows
from kms.settings import Settings
from kms.store.aliases import reseal_aliases
from kms.store.generations import journal_path, reset_journal
from kms.store.keystore_rows import rewrite_every_row
from kms.store.models import kms_metadata
from kms.store.records import EPOCH
from kms.store.schema import head_revision
from kms.store.snapshot import column_names, read_snapshot, table_names, write_rows


@dataclass(frozen=True)
class BackupResult:
    rows: int
    schema: str


def backup_database(
    settings: Settings, target: Path, progress: Progress | None = None
) -> BackupResult:
    """``kms backup FILE``: a consistent snapshot of the whole database, encrypted and
    authenticated under a key derived from the master key (kms.service.backup), mode 0600.

    Safe while servers run (one read transaction). Written to a private temporary file beside
    ``target`` and linked into place only when complete and synced: killed at any point, there
    is either no ``target`` or a whole one. An existing ``target`` is never replaced.
    """
    progress = progress or NoProgress()
    if target.exists():
        raise BackupError(f"refusing to overwrite {target}; choose a new file name")
    with command_keystore(settings, "back up") as opened:
        name, engine = opened.name, opened.engine
        try:
            metadata = opened.repository.read_metadata()
            writer = BackupWriter(opened.keyring, sealed_rows(metadata))
        finally:
            # The writer holds the keys it needs: the root secret goes before the rows are read.
            opened.keyring.close()
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


def restore_database(
    settings: Settings,
    source: Path,
    progress: Progress | None = None,
    *,
    clone_passphrase: bytearray | None = None,
) -> int:
    """``kms restore FILE``: load a backup into an empty database (the configured one).

    Made as ``kms init`` makes one (kms.database.NewDatabase): refused unless the database holds
    nothing and no server uses it (the serving lock ``kms rekey`` takes, held until the end). The
    whole file is read and its tag checked with the passphrase (the master key derives from the
    backup's own KDF parameters) before anything is written or locked; then the schema and every
    row are written in one transaction (SQLite: into a temporary file moved into place when
    complete). Returns the number of rows.

    With ``clone_passphrase`` (``--as-clone``) the restored keystore is another keystore: a new
    keystore id and a new master key from that passphrase (a new salt), every version re-wrapped
    and every row re-MAC'd in the same transaction. Its rows never verify in the original, nor
    the original's in it, and it cannot unwrap what the original wraps from then on.

    A restore is a deliberate rollback: this node's journal of generations is started afresh
    (other nodes must remove theirs, docs/operations.md).
    """
    try:
        try:
            data = source.read_bytes()
        except OSError as error:
            raise BackupError(f"cannot read {source}: {error.strerror}") from None
        database = NewDatabase(settings, "restore into")
        try:
            with master_key_backend(settings) as backend:
                backup = verify_backup(
                    data,
                    backend,
                    columns=lambda table: column_names(table) if table in table_names() else None,
                    keep_keyring=clone_passphrase is not None,
                )

        except InvalidBackup as error:
            raise InvalidBackup(f"{source}: {error.public_message}") from None
        try:
            _restore_verified(
                settings, database, source, backup, progress or NoProgress(), clone_passphrase
            )
        finally:
            if backup.keyring is not None:
                backup.keyring.close()
    finally:
        if clone_passphrase is not None:
            zeroise(clone_passphrase)
    reset_journal(journal_path(settings.state_file, settings.database_url))
    return len(backup.rows)


def _restore_verified(
    settings: Settings,
    database: NewDatabase,
    source: Path,
    backup: VerifiedBackup,
    progress: Progress,
    clone_passphrase: bytearray | None,
) -> None:
    if backup.schema != head_revision():
        raise InvalidBackup(
            f"{source} was taken at schema revision {backup.schema}; this kms restores "
            f"{head_revision()} only: restore it with the kms that took it, then `kms upgrade`"
        )
    clone = None
    if clone_passphrase is not None and backup.keyring is not None:
        clone = _clone_of(settings, backup.keyring, backup.rows, clone_passphrase)

    def fill(conn: Connection) -> None:
        # Started once the database is held alone: a refusal stays the command's one line.
        progress.start(len(backup.rows), f"restoring {len(backup.rows)} rows")
        write_rows(conn, iter(backup.rows), progress.advance)
        if clone is not None and backup.keyring is not None:
            keystore, new = clone
            seal_key, rewrap_version, seal_alias = rekey_rows(backup.keyring, new)

            def rewrapped(key: Any, version: Any) -> dict[str, object]:
                wrapped_key, mac = rewrap_version(key, version)
                return {"wrapped_key": wrapped_key, "mac": mac}

            rewrite_every_row(conn, seal_key, rewrapped, keystore)
            reseal_aliases(conn, seal_alias)

    try:
        database.create(fill)
    finally:
        if clone is not None:
            clone[1].close()


def _clone_of(
    settings: Settings,
    keyring: RootKeyring,
    rows: list[tuple[str, dict[str, Any]]],
    passphrase: bytearray,
) -> tuple[dict[str, bytes], RootKeyring]:
    """The keystore rows of a clone (a new root secret sealed under ``passphrase``, a new id,
    init marker; the backup's epoch) and the clone's keyring; the caller closes it."""
    stored = {row["name"]: row["value"] for table, row in rows if table == kms_metadata.name}
    try:
        epoch = read_epoch(keyring, stored.get(EPOCH))
    except IntegrityFailure as error:
        raise InvalidBackup(f"the backup's {error.detail}") from None
    new = RootKeyring(new_root_secret(), os.urandom(KEYSTORE_ID_BYTES))
    try:
        with master_key_backend(settings, bytearray(passphrase)) as backend:
            return sealed_keystore_rows(backend, new, epoch), new
    except BaseException:
        new.close()
        raise
