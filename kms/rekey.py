"""``kms rekey``: a new root secret with every key version re-wrapped under it, or
(``--to``) the same root secret sealed by another master-key backend. Opening the keystore is
kms.master's.

Each runs in one process, refuses while a server uses the database, and disposes of its
database connections before returning; every problem becomes a ``KeystoreError`` whose message
is one line naming the database and the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.errors import ConfigurationError
from kms.master import NoProgress, Progress, command_keystore, master_key_backend
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keys import KMSService
from kms.service.keystore import new_root_secret, sealed_keystore_rows
from kms.service.masterkey import BACKEND_ROWS
from kms.settings import Settings


@dataclass(frozen=True)
class RekeyResult:
    keys: int
    versions: int


def rekey_database(
    settings: Settings,
    new_passphrase: bytearray | None,
    progress: Progress | None = None,
    *,
    key_label: str | None = None,
) -> RekeyResult:
    """``kms rekey``: a new root secret, every version re-wrapped (in wrap format 4), every row
    re-MAC'd. The ``passphrase`` backend seals the new root secret under ``new_passphrase`` (a
    new salt); the ``pkcs11`` backend by the HSM's key, or by the key ``key_label`` of the same
    token (an HSM key rotation: ``kms rekey --key-label NEW``, after ``kms hsm init`` made it).
    The new seal is opened again before anything is written.

    Refuses while a server uses the database (kms.store.serving). One transaction: killed at any
    point, the old passphrase (or HSM key) still opens the keystore and every key works; once it
    returns, only the new one does, and a copy of the old database opened the old way yields a
    root secret that opens nothing written since. ``new_passphrase`` is overwritten either way.
    """
    progress = progress or NoProgress()
    try:
        target = _rekey_target(settings, new_passphrase, key_label)
        with command_keystore(settings, "rekey", alone=True) as opened:
            old = opened.keyring
            new = RootKeyring(new_root_secret(), old.keystore_id)
            try:
                service = KMSService.from_settings(settings, opened.repository, old)
                # The backend overwrites its copy; the finally below, the original.
                passphrase = None if new_passphrase is None else bytearray(new_passphrase)
                with master_key_backend(target, passphrase) as backend:
                    keystore = sealed_keystore_rows(backend, new, service.read_epoch())
                    zeroise(backend.unseal(keystore, new.keystore_id))
                progress.start(service.count_versions(), "re-wrapping key versions")
                keys, versions = service.rekey(new, keystore, after_version=progress.advance)
            finally:
                new.close()
    finally:
        if new_passphrase is not None:
            zeroise(new_passphrase)
    return RekeyResult(keys, versions)


def _rekey_target(
    settings: Settings, new_passphrase: bytearray | None, key_label: str | None
) -> Settings:
    """The settings of the backend that seals the new root secret; ``ConfigurationError`` when
    the arguments are not for the backend in use."""
    if settings.master_key_backend == "pkcs11":
        if new_passphrase is not None:
            raise ConfigurationError(
                "kms.master_key.backend is pkcs11: kms rekey seals the new root secret by the "
                "HSM's key, and takes no new passphrase (`kms rekey --to passphrase` moves the "
                "root secret to one)"
            )
        if key_label is None:
            return settings
        return settings.with_overrides(pkcs11_key_label=key_label)
    if key_label is not None:
        raise ConfigurationError(
            "--key-label names an HSM key, but kms.master_key.backend is "
            f"{settings.master_key_backend} (`kms rekey --to pkcs11` moves the root secret to one)"
        )
    if new_passphrase is None:
        raise ConfigurationError("kms rekey needs the new passphrase")
    return settings


def move_root_secret(
    settings: Settings,
    to: str,
    new_passphrase: bytearray | None = None,
    *,
    key_label: str | None = None,
) -> None:
    """``kms rekey --to BACKEND``: seal the root secret by ``to`` instead of the backend it is
    sealed by now (``kms.master_key.backend``). Only the sealed root secret changes (and the KDF
    parameters come or go): no key version is re-wrapped, no row re-MAC'd.

    ``pkcs11`` uses the ``kms.master_key.*`` settings (``key_label``, when given, instead of
    ``kms.master_key.key_label``); ``passphrase`` the ``new_passphrase`` (overwritten either
    way). Refused while a server uses the database. One transaction: killed
    at any point, the old backend still opens everything; once it returns, only ``to`` does,
    and ``kms.master_key.backend`` must say so.
    """
    try:
        if to == settings.master_key_backend:
            raise ConfigurationError(
                f"the root secret is sealed by {to} already (kms.master_key.backend): "
                "`kms rekey` without --to makes a new root secret"
                + (" (--key-label: sealed by another HSM key)" if to == "pkcs11" else "")
            )
        if key_label is not None and to != "pkcs11":
            raise ConfigurationError("--key-label names an HSM key: it goes with --to pkcs11")
        with command_keystore(settings, "rekey", alone=True) as opened:
            keyring = opened.keyring
            target = settings.with_overrides(master_key_backend=to)
            if key_label is not None:
                target = target.with_overrides(pkcs11_key_label=key_label)
            passphrase = None if new_passphrase is None else bytearray(new_passphrase)
            with master_key_backend(target, passphrase) as backend:
                root_secret = keyring.root_secret()
                try:
                    sealed = backend.seal(root_secret, keyring.keystore_id)
                    # Proven before it is written: the new backend opens what it sealed.
                    zeroise(backend.unseal(sealed, keyring.keystore_id))
                finally:
                    zeroise(root_secret)
            opened.repository.replace_keystore(
                sealed, remove=[row for row in BACKEND_ROWS if row not in sealed]
            )
    finally:
        if new_passphrase is not None:
            zeroise(new_passphrase)
