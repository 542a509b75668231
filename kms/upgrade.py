"""``kms upgrade``: bring a database made by an earlier kms to this release's schema and
keystore format. Opening the keystore is kms.master's.

Runs in one process with every kms node stopped, and disposes of its database connections
before returning; every problem becomes a ``KeystoreError`` whose message is one line naming the
database and the cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kms.errors import KeystoreTampered
from kms.master import keystore_engine, master_key_backend, open_named_keystore
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keys import KMSService
from kms.service.keystore import (
    FIRST_EPOCH,
    KEYSTORE_ID_BYTES,
    KeystoreFormat,
    init_marker_aad,
    sealed_keystore_rows,
)
from kms.service.masterkey import MasterKeyBackend
from kms.settings import Settings
from kms.store.generations import journal_path
from kms.store.records import INIT_MARKER
from kms.store.repository import SQLKeyRepository
from kms.store.schema import current_revision, head_revision, upgrade_to_head


@dataclass(frozen=True)
class UpgradeResult:
    """``sealed_keys`` and ``sealed_versions``: rows given their (new) MACs."""

    sealed_keys: int
    sealed_versions: int
    already_current: bool
    #: The schema revisions before and after, when the schema was migrated (None otherwise).
    migrated: tuple[str | None, str] | None = None
    #: The root secret was sealed by the backend (keystore format 3 to 4).
    root_sealed: bool = False


def upgrade_database(settings: Settings) -> UpgradeResult:
    """``kms upgrade``: migrate the schema, then (once) bring the keystore to the current format:
    a keystore id, the first epoch, and every row's MAC bound to the id.

    Run with every kms node stopped. The MACs need the master key, so the passphrase is read
    after the migration (which only adds columns whose defaults keep every MAC valid). Every
    existing MAC is verified before any is written (``KeyMaintenance.upgrade``); otherwise
    ``IntegrityFailure`` names the rows and no MAC is written. An older init marker on a
    database whose rows say it is newer is ``KeystoreTampered``, not an upgrade.
    """
    with keystore_engine(settings, "upgrade") as (name, engine):
        repository = SQLKeyRepository(engine)
        repository.read_keystore()
        before, head = current_revision(engine), head_revision()
        upgrade_to_head(engine)
        migrated = None if before == head else (before, head)
        with master_key_backend(settings) as backend:
            opened = open_named_keystore(settings, name, repository, backend, allow_old=True)
            try:
                if opened.sealed:
                    return UpgradeResult(0, 0, already_current=migrated is None, migrated=migrated)
                if opened.format is KeystoreFormat.UNWRAPPED_ROOT:
                    _seal_root(repository, backend, opened.keyring)
                    return UpgradeResult(
                        0, 0, already_current=False, migrated=migrated, root_sealed=True
                    )

                _refuse_if_node_saw_current(settings, name)
                bound = opened.keyring.bound_to(os.urandom(KEYSTORE_ID_BYTES))
                try:
                    service = KMSService.from_settings(settings, repository, bound)
                    keys, versions = service.upgrade_rows(
                        opened.keyring,
                        opened.format,
                        sealed_keystore_rows(backend, bound, FIRST_EPOCH),
                    )
                finally:
                    bound.close()
                return UpgradeResult(keys, versions, already_current=False, migrated=migrated)
            finally:
                opened.keyring.close()


def _seal_root(
    repository: SQLKeyRepository, backend: MasterKeyBackend, keyring: RootKeyring
) -> None:
    """Keystore format 3 to 4: the passphrase-derived key becomes the root secret, sealed by
    ``backend`` (a new salt), with an init marker of format 4; one transaction. Every row MAC
    and every earlier wrap stays valid: the root secret is the key that made them."""
    root_secret = keyring.root_secret()
    try:
        sealed = backend.seal(root_secret, keyring.keystore_id)
    finally:
        zeroise(root_secret)
    marker = keyring.wrap(os.urandom(32), init_marker_aad(keyring.keystore_id))
    repository.replace_keystore({**sealed, INIT_MARKER: marker})


def _refuse_if_node_saw_current(settings: Settings, name: str) -> None:
    """A node's journal for this database means it was of the current format once: an older
    one now was put back."""
    path = journal_path(settings.state_file, settings.database_url)
    if path is not None and path.is_file() and path.stat().st_size > 0:
        raise KeystoreTampered(
            f"the database {name} has an init marker of an older keystore format, but this node "
            f"served it in the current format ({path}): an older marker was put back; nothing "
            "was written"
        )
