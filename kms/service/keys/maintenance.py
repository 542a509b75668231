"""What operators run over the whole keystore: the integrity check, sealing the rows of an old
database, re-keying under a new master key, and the readiness check and counts of the probes.

Nothing here is on a request's path; each walks every row and checks it under the current
master key before it writes anything, so a row changed behind kms's back is reported, never
laundered into a valid MAC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kms.crypto.algorithms import ALGORITHMS
from kms.errors import IntegrityFailure, UnwrapFailed
from kms.service.integrity import encode_key_row, encode_version_row
from kms.service.keyring import Keyring, zeroise
from kms.service.keys.material import identity_of
from kms.service.keys.results import IntegrityReport
from kms.service.keys.trust import TrustedRows
from kms.service.keys.validation import MAX_PAGE_SIZE
from kms.service.keystore import INIT_MARKER_AAD
from kms.store.records import KeyRecord, KeyRepository, KeyVersionRecord


class KeyMaintenance:
    def __init__(self, repository: KeyRepository, keyring: Keyring, trust: TrustedRows) -> None:
        self._repository = repository
        self._keyring = keyring
        self._trust = trust

    def check_ready(self) -> None:
        """Raise unless the database answers and the master key unwraps the init marker."""
        _, marker = self._repository.read_keystore()
        zeroise(self._keyring.unwrap(marker, INIT_MARKER_AAD))

    def key_counts_by_state(self) -> dict[str, int]:
        return self._repository.count_keys_by_state()

    def count_versions(self) -> int:
        return self._repository.count_versions()

    def check_integrity(self, page_size: int = MAX_PAGE_SIZE) -> IntegrityReport:
        """Verify every key row and version row: MACs, unwrapping, and material that fits.

        For ``kms check``. Failures are collected, not raised, so one report names them all.
        """
        report = IntegrityReport()
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
                for record in self._repository.list_versions(key.key_id):
                    report.versions += 1
                    try:
                        self._trust.verify_version(key, record)
                        self._verify_material(key, record)
                    except IntegrityFailure as error:
                        report.failures.append(error.detail)
        return report

    def seal_rows(self, init_marker: bytes) -> tuple[int, int]:
        """Compute the MAC of every row of a database made before row MACs (``kms upgrade``).

        Trust on first use, made as safe as it can be: a key row is sealed only if its algorithm
        and purpose agree, and a version row only if its wrapped key unwraps under its identity,
        fits its algorithm and (signing keys) carries the private key's own public key. Anything
        else raises ``IntegrityFailure`` and nothing is written. ``init_marker`` (wrapped under
        the sealed-keystore AAD) is written in the same transaction: from then on a row without
        a MAC is refused. Returns the number of key rows and version rows sealed.
        """

        def seal_key(key: KeyRecord) -> bytes:
            spec = ALGORITHMS.get(key.algorithm)
            if spec is None or spec.purpose.value != key.purpose:
                raise IntegrityFailure(f"key {key.key_id!r}: algorithm and purpose do not match")
            return self._keyring.tag(encode_key_row(replace(key, mac=None)))

        def seal_version(key: KeyRecord, record: KeyVersionRecord) -> bytes:
            self._verify_material(key, record)
            return self._keyring.tag(
                encode_version_row(key, record.version, record.wrapped_key, record.public_key)
            )

        return self._repository.seal_all(seal_key, seal_version, init_marker)

    def rekey(
        self,
        new_keyring: Keyring,
        kdf_parameters: bytes,
        init_marker: bytes,
        *,
        after_version: Callable[[], None] | None = None,
    ) -> tuple[int, int]:
        """Re-wrap every version under ``new_keyring`` and re-MAC every row (``kms rekey``).

        Every row is verified under the current keyring first and every wrapped key is
        unwrapped under its own identity. All of it, with the new KDF parameters and init marker
        (made by ``new_keyring``), is written in one transaction: stopped at any point, nothing
        changed. ``after_version`` is called after each version (progress; a test stops there).
        Returns the number of key rows and version rows.
        """

        def seal_key(key: KeyRecord) -> bytes:
            self._trust.verify_key(key)
            return new_keyring.tag(encode_key_row(replace(key, mac=None)))

        def rewrap_version(key: KeyRecord, record: KeyVersionRecord) -> tuple[bytes, bytes]:
            self._trust.verify_version(key, record)
            identity = identity_of(key, record.version)
            try:
                secret = self._keyring.unwrap(record.wrapped_key, identity)
            except UnwrapFailed:
                raise IntegrityFailure(
                    f"key {key.key_id!r}: version {record.version}: the wrapped key does not unwrap"
                ) from None
            try:
                wrapped_key = new_keyring.wrap(secret, identity.aad())
            finally:
                zeroise(secret)
            mac = new_keyring.tag(
                encode_version_row(key, record.version, wrapped_key, record.public_key)
            )
            if after_version is not None:
                after_version()
            return wrapped_key, mac

        return self._repository.rewrap_all(seal_key, rewrap_version, kdf_parameters, init_marker)

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
