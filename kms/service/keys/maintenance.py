"""What operators run over the whole keystore: the integrity check (against the audit trail
too), bringing an older keystore to the current format, re-keying under a new master key, and
the readiness check and counts of the probes.

Nothing here is on a request's path; each walks every row and checks it under the current
master key before it writes anything, so a row changed behind kms's back is reported, never
laundered into a valid MAC.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from kms.crypto.algorithms import ALGORITHMS
from kms.errors import IntegrityFailure, UnwrapFailed
from kms.service.integrity import (
    encode_alias_row,
    encode_key_row,
    encode_version_row,
    read_epoch,
)
from kms.service.keyring import Keyring, zeroise
from kms.service.keys.material import identity_of
from kms.service.keys.results import IntegrityReport
from kms.service.keys.trust import (
    TrustedRows,
    verify_alias_row,
    verify_key_row,
    verify_version_row,
)
from kms.service.keys.validation import MAX_PAGE_SIZE
from kms.service.keystore import KeystoreFormat, init_marker_aad
from kms.store.records import (
    EPOCH,
    AliasRecord,
    AliasSealer,
    KeyRecord,
    KeyRepository,
    KeySealer,
    KeyVersionRecord,
    VersionRewrapper,
)

#: How many failures ``upgrade`` names before it says "and N more".
NAMED_FAILURES = 20


def newest_generations(lines: Iterable[bytes]) -> dict[str, int]:
    """The newest generation of each key an audit trail records (kms.api.audit: the
    ``key_generation`` of the answer to a change). Lines that are not such a record are
    skipped: the chain is ``kms audit verify``'s to check."""
    newest: dict[str, int] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        key_id, generation = record.get("key_id"), record.get("key_generation")
        if (
            isinstance(key_id, str)
            and isinstance(generation, int)
            and not isinstance(generation, bool)
            and generation > newest.get(key_id, 0)
        ):
            newest[key_id] = generation
    return newest


def rekey_rows(
    old: Keyring, new: Keyring, after_version: Callable[[], None] | None = None
) -> tuple[KeySealer, VersionRewrapper, AliasSealer]:
    """What ``kms rekey`` and ``kms restore --as-clone`` write for each row: every row verified
    under ``old``, every wrapped key unwrapped under its identity there and wrapped again under
    ``new`` (and its keystore id), every MAC computed under ``new``."""

    def seal_key(key: KeyRecord) -> bytes:
        verify_key_row(old, key)
        return new.tag(encode_key_row(key))

    def rewrap_version(key: KeyRecord, record: KeyVersionRecord) -> tuple[bytes, bytes]:
        verify_version_row(old, key, record)
        identity = identity_of(key, record.version)
        try:
            secret = old.unwrap(record.wrapped_key, identity)
        except UnwrapFailed:
            raise IntegrityFailure(
                f"key {key.key_id!r}: version {record.version}: the wrapped key does not unwrap"
            ) from None
        try:
            wrapped_key = new.wrap(secret, identity)
        finally:
            zeroise(secret)
        mac = new.tag(encode_version_row(key, record.version, wrapped_key, record.public_key))
        if after_version is not None:
            after_version()
        return wrapped_key, mac

    def seal_alias(alias: AliasRecord) -> bytes:
        verify_alias_row(old, alias)
        return new.tag(encode_alias_row(alias))

    return seal_key, rewrap_version, seal_alias


class KeyMaintenance:
    def __init__(self, repository: KeyRepository, keyring: Keyring, trust: TrustedRows) -> None:
        self._repository = repository
        self._keyring = keyring
        self._trust = trust

    def check_ready(self) -> None:
        """Raise unless the database answers and the master key unwraps the init marker."""
        marker = self._repository.read_keystore()
        zeroise(self._keyring.unwrap(marker, init_marker_aad(self._keyring.keystore_id)))

    def master_key(self) -> tuple[str, float | None]:
        """The master-key backend that opened the root secret, and when (Unix time)."""
        return self._keyring.backend, self._keyring.opened_at

    def key_counts_by_state(self) -> dict[str, int]:
        return self._repository.count_keys_by_state()

    def count_versions(self) -> int:
        return self._repository.count_versions()

    def read_epoch(self) -> int:
        """The keystore epoch, its MAC checked."""
        return read_epoch(self._keyring, self._repository.read_metadata().get(EPOCH))

    def check_integrity(
        self, page_size: int = MAX_PAGE_SIZE, trail: dict[str, int] | None = None
    ) -> IntegrityReport:
        """Verify every key row and version row: MACs, unwrapping, and material that fits; and
        each key's generation against the keystore epoch and, given ``trail`` (the newest
        generation of each key the audit trail records), against the trail.

        For ``kms check``. Failures are collected, not raised, so one report names them all.
        """
        report = IntegrityReport()
        try:
            report.epoch = self.read_epoch()
        except IntegrityFailure as error:
            report.failures.append(error.detail)
        if trail is not None:
            report.trail_epoch = max(trail.values(), default=0)
            if report.epoch is not None and report.epoch < report.trail_epoch:
                report.failures.append(
                    f"the keystore epoch {report.epoch} is older than epoch "
                    f"{report.trail_epoch}, which the audit trail records: the whole database "
                    "was rolled back"
                )
        after: str | None = None
        while page := self._repository.list_keys(page_size, after):
            after = page[-1].key_id
            for key in page:
                report.keys += 1
                try:
                    self._trust.verify_key(key)
                except IntegrityFailure as error:
                    report.failures.append(error.detail)
                    continue  # its versions cannot be judged against an untrusted row
                report.failures.extend(self._generation_failures(key, report.epoch, trail))
                for record in self._repository.list_versions(key.key_id):
                    report.versions += 1
                    try:
                        self._trust.verify_version(key, record)
                        self._verify_material(key, record)
                    except IntegrityFailure as error:
                        report.failures.append(error.detail)
        report.failures.extend(self._alias_failures(page_size, report.epoch))
        return report

    def _alias_failures(self, page_size: int, epoch: int | None) -> list[str]:
        """Every alias row's MAC, and its generation against the keystore epoch."""
        failures: list[str] = []
        after: str | None = None
        while page := self._repository.list_aliases(page_size, after):
            after = page[-1].alias_name
            for alias in page:
                try:
                    verify_alias_row(self._keyring, alias)
                except IntegrityFailure as error:
                    failures.append(error.detail)
                    continue
                if epoch is not None and alias.generation > epoch:
                    failures.append(
                        f"alias {alias.alias_name!r}: generation {alias.generation} is above the "
                        f"keystore epoch {epoch}: the epoch row was rolled back"
                    )
        return failures

    @staticmethod
    def _generation_failures(
        key: KeyRecord, epoch: int | None, trail: dict[str, int] | None
    ) -> list[str]:
        failures = []
        if epoch is not None and key.generation > epoch:
            failures.append(
                f"key {key.key_id!r}: generation {key.generation} is above the keystore epoch "
                f"{epoch}: the epoch row was rolled back"
            )
        recorded = None if trail is None else trail.get(key.key_id)
        if recorded is not None and key.generation < recorded:
            failures.append(
                f"key {key.key_id!r}: rolled back: the row is at generation {key.generation}, "
                f"the audit trail records generation {recorded}"
            )
        return failures

    def upgrade(
        self, old: Keyring, old_format: KeystoreFormat, keystore: dict[str, bytes]
    ) -> tuple[int, int]:
        """Bring a keystore of an older format to the current one (``kms upgrade``); this
        service's keyring is the one bound to the keystore's new id, ``old`` the same master key
        without it, and ``keystore`` the new keystore rows (id, init marker, first epoch).

        Every existing MAC (format 1, under ``old``) is verified first, with every row's
        material, and nothing is written unless all pass: ``IntegrityFailure`` names the rows
        that do not. A keystore made before row MACs has none to verify: a key row is sealed
        only if its algorithm and purpose agree, a version row only if its material unwraps and
        fits (trust on first use, as safe as it can be). Then, in one transaction, every row is
        verified again and gets its format-2 MAC, with the keystore rows. Returns the number of
        key rows and version rows sealed.
        """
        legacy = old_format is KeystoreFormat.UNBOUND

        def verified_key(key: KeyRecord) -> None:
            if legacy:
                verify_key_row(old, key, legacy=True)
            elif (spec := ALGORITHMS.get(key.algorithm)) is None or (
                spec.purpose.value != key.purpose
            ):
                raise IntegrityFailure(f"key {key.key_id!r}: algorithm and purpose do not match")

        def verified_version(key: KeyRecord, record: KeyVersionRecord) -> None:
            if legacy:
                verify_version_row(old, key, record, legacy=True)
            self._verify_material(key, record)

        failures: list[str] = []
        after: str | None = None
        while page := self._repository.list_keys(MAX_PAGE_SIZE, after):
            after = page[-1].key_id
            for key in page:
                try:
                    verified_key(key)
                    for record in self._repository.list_versions(key.key_id):
                        verified_version(key, record)
                except IntegrityFailure as error:
                    failures.append(error.detail)
        if failures:
            more = len(failures) - NAMED_FAILURES
            raise IntegrityFailure(
                "; ".join(failures[:NAMED_FAILURES])
                + (f"; and {more} more" if more > 0 else "")
                + "; nothing was written"
            )

        def seal_key(key: KeyRecord) -> bytes:
            verified_key(key)
            return self._keyring.tag(encode_key_row(key))

        def seal_version(key: KeyRecord, record: KeyVersionRecord) -> bytes:
            verified_version(key, record)
            return self._keyring.tag(
                encode_version_row(key, record.version, record.wrapped_key, record.public_key)
            )

        return self._repository.seal_all(seal_key, seal_version, keystore)

    def rekey(
        self,
        new_keyring: Keyring,
        keystore: dict[str, bytes],
        *,
        after_version: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Re-wrap every version under ``new_keyring`` and re-MAC every row (``kms rekey``).

        Every row is verified under the current keyring first and every wrapped key is
        unwrapped under its own identity. All of it, with ``keystore`` (the new KDF parameters,
        init marker and epoch row, made by ``new_keyring``), is written in one transaction:
        stopped at any point, nothing changed. ``after_version`` is called after each version
        (progress; a test stops there). Returns the number of key rows and version rows.
        """
        seal_key, rewrap_version, seal_alias = rekey_rows(self._keyring, new_keyring, after_version)
        counts = self._repository.rewrap_all(seal_key, rewrap_version, keystore, seal_alias)
        # The old wrapped keys and KDF parameters open with the old passphrase: no copy of them
        # may stay readable in the database files.
        self._repository.reclaim_destroyed(keystore=True)
        return counts

    def _verify_material(self, key: KeyRecord, record: KeyVersionRecord) -> None:
        """Raise ``IntegrityFailure`` unless the version is in range, unwraps under its identity,
        fits its algorithm and (signing keys) its public key is the private key's."""
        where = f"key {key.key_id!r}: version {record.version}"
        if not 1 <= record.version <= key.latest_version:
            raise IntegrityFailure(f"{where}: above the latest version {key.latest_version}")
        if record.version < key.min_available_version:
            raise IntegrityFailure(
                f"{where}: below min_available_version {key.min_available_version} (trimmed)"
            )
        try:
            secret = self._keyring.unwrap(record.wrapped_key, identity_of(key, record.version))
        except UnwrapFailed:
            raise IntegrityFailure(f"{where}: the wrapped key does not unwrap") from None
        spec = ALGORITHMS[key.algorithm]
        try:
            spec.load(secret)
            if spec.public_key_der(secret) != record.public_key:
                raise IntegrityFailure("the public key is not the private key's")
        except IntegrityFailure as error:
            raise IntegrityFailure(f"{where}: {error.detail}") from None
        finally:
            zeroise(secret)
