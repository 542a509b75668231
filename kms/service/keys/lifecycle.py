"""The key lifecycle: create, change, rotate, recreate, schedule and destroy (reading and
listing: kms.service.keys.reading).

Every change is made under the key row's write lock: the repository hands the row as it is now
(and the keystore epoch row) to a plan, the plan re-checks it (``TrustedRows``) and applies a
rule (``rules``), and the result is stamped with the next epoch as its generation and sealed
before it is written (kms.service.keys.generations). Material for a new version is generated
before the lock is taken (an RSA-4096 key takes far longer than the wrap) and wrapped under the
lock, once the row is known to still be the key it was made for.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from kms.crypto.algorithms import (
    ALGORITHMS,
    Algorithm,
)
from kms.errors import (
    InvalidRequest,
    KeyChanged,
    KeyExists,
    KeyNotFound,
    KeyStateConflict,
    KMSError,
    TooManyVersions,
)
from kms.service.integrity import encode_version_row
from kms.service.keyring import Keyring, zeroise
from kms.service.keys import rules
from kms.service.keys.material import KeyMaterial, identity_of
from kms.service.keys.reading import KeyReading
from kms.service.keys.results import (
    KeyInfo,
    Rotated,
)
from kms.service.keys.rules import KeyUpdate, NotDue, NotLatest
from kms.service.keys.trust import TrustedRows
from kms.service.keys.validation import (
    MAX_PAGE_SIZE,
    algorithm_for,
    encode_labels,
    integer_from,
    is_integer,
    parse_rotation_period,
    validate_deletion_allowed,
    validate_description,
    validate_key_id,
    validate_labels,
    validate_max_encryptions,
    validate_pending_days,
)
from kms.store.records import (
    DestroyCheck,
    KeyChange,
    KeyPlanner,
    KeyRecord,
    KeyRepository,
    KeyState,
    NewVersion,
    utc_now,
)

log = logging.getLogger("kms.integrity")
lifecycle_log = logging.getLogger("kms.lifecycle")

#: ``update_key``'s marker for "left out" (None means "clear").
UNCHANGED: object = ...


class KeyLifecycle(KeyReading):
    """The changes to keys (reading them and their answers: ``KeyReading``)."""

    def __init__(
        self,
        repository: KeyRepository,
        keyring: Keyring,
        trust: TrustedRows,
        material: KeyMaterial,
        *,
        max_versions: int,
        min_pending_days: int,
        default_max_encryptions: int,
        clock: Callable[[], datetime] = utc_now,
        after_generation: Callable[[str], None] | None = None,
        list_deadline: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``after_generation`` is a test hook: called with the key_id once fresh material is
        generated and before the write transaction starts, so a test can change the key in that
        window deterministically. Production code never passes it. ``clock`` gives "now" (tests
        move it instead of sleeping); ``min_pending_days`` is ``kms.deletion.min_pending_days``;
        ``list_deadline`` is ``kms.list_deadline_ms`` in seconds, measured by ``monotonic``."""
        self._repository = repository
        self._keyring = keyring
        self._trust = trust
        self._material = material
        self._max_versions = max_versions
        self._min_pending_days = min_pending_days
        self._default_max_encryptions = default_max_encryptions
        self._clock = clock
        self._after_generation = after_generation
        self._list_deadline = list_deadline
        self._monotonic = monotonic

    # -- creating and changing -------------------------------------------------------------

    def create_key(
        self,
        key_id: str | None = None,
        purpose: str = "encrypt",
        algorithm: str | None = None,
        description: str = "",
        labels: dict[str, str] | None = None,
        *,
        min_decryption_version: int = 1,
        deletion_allowed: bool = True,
        rotation_period: str | None = None,
        max_encryptions_per_version: int | None = None,
    ) -> KeyInfo:
        key_id = str(uuid.uuid4()) if key_id is None else validate_key_id(key_id)
        validate_description(description)
        # A new key has one version: the only minimum it can have is 1.
        integer_from(
            min_decryption_version,
            1,
            1,
            "min_decryption_version of a new key must be 1 (its only version)",
        )
        validate_deletion_allowed(deletion_allowed)
        stored_labels = encode_labels(validate_labels({} if labels is None else labels))
        spec = algorithm_for(purpose, algorithm)
        record = KeyRecord(
            key_id=key_id,
            purpose=spec.purpose.value,
            algorithm=spec.name,
            state=KeyState.ENABLED,
            latest_version=1,
            incarnation=secrets.token_hex(16),
            created_at=self._clock(),
            description=description,
            labels=stored_labels,
            deletion_allowed=deletion_allowed,
            rotation_period=None
            if rotation_period is None
            else parse_rotation_period(rotation_period),
            max_encryptions_per_version=None
            if max_encryptions_per_version is None
            else validate_max_encryptions(max_encryptions_per_version),
        )
        created = self._store_new_version(
            spec,
            key_id,
            lambda current: record,
            lambda plan: self._repository.create_key(record, plan),
        )
        self._trust.drop_row(key_id)
        self._trust.changed(created)
        return self.info(created)

    def ensure_key(
        self,
        key_id: str,
        purpose: str,
        algorithm: str,
        *,
        deletion_allowed: bool,
        rotation_period: str | None = None,
    ) -> tuple[KeyInfo, bool]:
        """Create the key unless a key of that id exists: ``(key, created)``. An existing key is
        left as it is, whatever its type (Vault's create of a key that exists)."""
        try:
            created = self.create_key(
                key_id,
                purpose,
                algorithm,
                deletion_allowed=deletion_allowed,
                rotation_period=rotation_period,
            )
        except KeyExists:
            return self.get_key(key_id), False
        return created, True

    def update_key(
        self,
        key_id: str,
        *,
        description: str | None = None,
        labels: dict[str, str] | None = None,
        min_decryption_version: int | None = None,
        deletion_allowed: bool | None = None,
        rotation_period: str | None | object = UNCHANGED,
        max_encryptions_per_version: int | None | object = UNCHANGED,
    ) -> KeyInfo:
        """Change metadata, version policy and rotation settings (``PATCH``), all or nothing:
        every argument is validated, and the change made under the row lock, before anything
        is written; refused (409) while the key is pending deletion.

        For ``description``, ``labels``, ``min_decryption_version`` and ``deletion_allowed``
        None leaves the field as it is; ``labels`` replaces the key's labels as a whole.
        ``rotation_period`` and ``max_encryptions_per_version`` left out stay as they are, and
        None clears them (no rotation by time; the configured limit).
        """
        if description is not None:
            validate_description(description)
        stored_labels = None if labels is None else encode_labels(validate_labels(labels))
        if min_decryption_version is not None and not is_integer(min_decryption_version):
            raise InvalidRequest("min_decryption_version must be an integer")
        if deletion_allowed is not None:
            validate_deletion_allowed(deletion_allowed)
        period: tuple[int | None] | None = None
        if rotation_period is not UNCHANGED:
            period = (None if rotation_period is None else parse_rotation_period(rotation_period),)
        limit: tuple[int | None] | None = None
        if max_encryptions_per_version is not UNCHANGED:
            limit = (
                None
                if max_encryptions_per_version is None
                else validate_max_encryptions(max_encryptions_per_version),
            )
        change = KeyUpdate(
            description=description,
            labels=stored_labels,
            min_decryption_version=min_decryption_version,
            deletion_allowed=deletion_allowed,
            rotation_period=period,
            max_encryptions_per_version=limit,
        )
        return self.info(self._update(key_id, lambda current: rules.update(current, change)))

    def disable_key(self, key_id: str) -> KeyInfo:
        """Refuse every cryptographic operation with the key until it is enabled; its material,
        metadata and versions stay, and it can still be read and rotated."""
        disabled = self._update(key_id, lambda key: rules.set_state(key, KeyState.DISABLED))
        return self.info(disabled)

    def enable_key(self, key_id: str) -> KeyInfo:
        enabled = self._update(key_id, lambda key: rules.set_state(key, KeyState.ENABLED))
        return self.info(enabled)

    def _update(self, key_id: str, change: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        """Change a key row (no new version) under its write lock, stamping and sealing the
        result."""
        try:
            changed = self._repository.update_key(
                validate_key_id(key_id),
                lambda current, epoch: self._stamped(change(self._trust.checked(current)), epoch),
            )
        finally:
            self._trust.drop_row(key_id)
        self._trust.changed(changed)
        return changed

    def _stamped(
        self, key: KeyRecord, stored_epoch: bytes | None, delete_versions_below: int | None = None
    ) -> KeyChange:
        stamped, epoch = self._trust.stamp(key, stored_epoch)
        return KeyChange(key=stamped, epoch=epoch, delete_versions_below=delete_versions_below)

    def _destroy(self, key_id: str, rule: Callable[[KeyRecord], object]) -> KeyRecord:
        """Destroy a key if ``rule`` passes on its row (checked) under its write lock, raising
        the epoch; returns the row destroyed."""
        stamped: list[int] = []

        def check(current: KeyRecord, stored_epoch: bytes | None) -> bytes:
            rule(self._trust.checked(current))
            key, epoch = self._trust.stamp(current, stored_epoch)
            stamped.append(key.generation)
            return epoch

        destroy_check: DestroyCheck = check
        gone, alias_names = self._repository.destroy_key(key_id, destroy_check)
        self._trust.destroyed(key_id, stamped[-1], alias_names)
        return gone

    # -- deletion --------------------------------------------------------------------------

    def delete_key(self, key_id: str, pending_days: int | None = None) -> KeyInfo | None:
        """Destroy a key now (``pending_days`` None), or schedule its destruction.

        Scheduling puts the key in ``pending_deletion`` at once, due ``pending_days`` (1-30) days
        from now; the returned key says when. Refused (409, nothing destroyed) when the key's
        ``deletion_allowed`` is false, when it is already pending, or when
        ``kms.deletion.min_pending_days`` asks for a longer window.
        """
        validate_key_id(key_id)
        if pending_days is not None:
            validate_pending_days(pending_days)
        if self._min_pending_days > 0 and (
            pending_days is None or pending_days < self._min_pending_days
        ):
            raise KeyStateConflict(
                f"deletion needs a waiting period of at least {self._min_pending_days} days "
                "(kms.deletion.min_pending_days): DELETE with ?pending_days=N"
            )
        if pending_days is None:
            self._destroy(key_id, rules.require_deletable)
            self._forget(key_id)
            self._repository.reclaim_destroyed()
            lifecycle_log.info("key %r destroyed", key_id)
            return None
        due_at = self._clock() + timedelta(days=pending_days)
        scheduled = self._update(key_id, lambda key: rules.schedule_deletion(key, due_at))
        lifecycle_log.info(
            "key %r scheduled for deletion at %s", key_id, scheduled.pending_deletion_at
        )
        return self.info(scheduled)

    def cancel_deletion(self, key_id: str) -> KeyInfo:
        """Take a key out of ``pending_deletion``; it comes back ``disabled`` (as in AWS KMS), so
        that it is enabled again deliberately. The use-attempt bookkeeping is kept."""
        return self.info(self._update(key_id, rules.cancel_deletion))

    def trim_key(self, key_id: str, min_available_version: int) -> KeyInfo:
        """Destroy every version below ``min_available_version``, for good.

        Only versions already fenced off may go: ``min_available_version`` must not exceed
        ``min_decryption_version`` (409 otherwise), so a trim never breaks a ciphertext that still
        decrypts. The row keeps the new lower bound under its MAC: a destroyed version restored
        into the database from a backup is refused.
        """
        integer_from(
            min_available_version, 1, None, "min_available_version must be a positive integer"
        )

        destroyed: list[bool] = []

        def trim(current: KeyRecord, stored_epoch: bytes | None) -> KeyChange:
            trimmed = rules.trim(self._trust.checked(current), min_available_version)
            destroyed[:] = [trimmed is not None]
            if trimmed is None:
                return KeyChange(key=current)  # already trimmed that far: nothing to destroy
            return self._stamped(trimmed, stored_epoch, min_available_version)

        key = self._repository.update_key(validate_key_id(key_id), trim)
        self._forget(key_id)
        if any(destroyed):
            self._repository.reclaim_destroyed()
        self._trust.changed(key)
        return self.info(key)

    def destroy_due(
        self,
        now: datetime | None = None,
        on_destroyed: Callable[[KeyInfo], None] | None = None,
        on_failure: Callable[[str, KMSError], None] | None = None,
    ) -> list[str]:
        """Destroy every key whose deletion window has passed by ``now`` (default: the clock).

        Idempotent, and safe when several processes run it at once: each key is re-checked
        (MAC, state, deadline) under its row's write lock, and a key another process destroyed
        first is skipped, so each is destroyed exactly once. A row that fails its check is
        left alone. Returns the key_ids this call destroyed.
        """
        now = self._clock() if now is None else now
        destroyed: list[str] = []
        after: str | None = None
        while page := self._repository.due_keys(now, MAX_PAGE_SIZE, after):
            after = page[-1]
            for key_id in page:
                try:
                    gone = self._destroy(key_id, lambda current: rules.require_due(current, now))
                except (KeyNotFound, NotDue):
                    continue  # destroyed by another process, or cancelled meanwhile
                except KMSError as error:
                    if on_failure is None:
                        raise
                    on_failure(key_id, error)
                    continue
                self._forget(key_id)
                destroyed.append(key_id)
                lifecycle_log.info("key %r destroyed: its deletion window ended", key_id)
                if on_destroyed is not None:
                    on_destroyed(self.info(gone))
        if destroyed:
            self._repository.reclaim_destroyed()  # once for the whole run
        return destroyed

    def _forget(self, key_id: str) -> None:
        """Drop whatever this worker holds of a key whose material went."""
        self._trust.forget(key_id)
        self._material.forget(key_id)

    # -- new versions ----------------------------------------------------------------------

    def rotate_key(self, key_id: str) -> KeyInfo:
        key = self._trust.get(key_id)
        rules.require_not_pending(key)
        return self.info(self.rotate(key, only_from=None))

    def rotate_from(self, key: KeyRecord) -> KeyRecord:
        """Rotate only if the latest version is still ``key``'s (see ``rotate``)."""
        return self.rotate(key, only_from=key.latest_version)

    def rotate(self, key: KeyRecord, only_from: int | None) -> KeyRecord:
        """Add a version. With ``only_from``, only if the latest version is still that one:
        racing processes that all saw it run out (or come due) rotate it exactly once, and the
        losers raise ``NotLatest`` having written nothing. Refused while pending deletion,
        checked again under the row lock."""
        if key.latest_version >= self._max_versions:
            # Checked before generating material (an RSA key takes a while), and again under the
            # row's write lock, where racing rotations cannot slip past.
            raise rules.too_many_versions(self._max_versions)

        def next_version(current: KeyRecord) -> KeyRecord:
            self._trust.expect_unchanged(key, current)
            return rules.next_version(current, only_from, self._max_versions)

        try:
            rotated = self._store_new_version(
                ALGORITHMS[key.algorithm],
                key.key_id,
                next_version,
                lambda plan: self._repository.rotate_key(key.key_id, plan),
            )
        finally:
            self._trust.drop_row(key.key_id)
        self._trust.changed(rotated)
        return rotated

    def rotate_due(
        self,
        now: datetime | None = None,
        on_checked: Callable[[Rotated | None], None] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> list[Rotated]:
        """Rotate every key whose latest version is older than its ``rotation_period``.

        Each rotation happens under the key row's write lock and only if the latest version is
        still the one found due, so several ``kms rotate-due`` on several nodes at the same
        moment rotate each key exactly once. ``on_checked`` is called once per key with a
        rotation period, with what was rotated or None (progress).
        """
        now = now or self._clock()
        rotated: list[Rotated] = []
        after: str | None = None
        while True:
            since = self._trust.mark()
            page = self._repository.keys_with_rotation_period(page_size, after)
            if not page:
                break
            after = page[-1].key.key_id
            for due in page:
                done = None
                if rules.rotation_due(due.key, due.latest_created_at, now):
                    done = self._rotate_due_key(due.key, since)
                if done is not None:
                    rotated.append(done)
                if on_checked is not None:
                    on_checked(done)
        return rotated

    def _rotate_due_key(self, key: KeyRecord, since: int) -> Rotated | None:
        try:
            new = self.rotate_from(self._trust.checked(key, since))
        except (NotLatest, KeyChanged, KeyNotFound):
            return None  # another process rotated or recreated it, or it was deleted
        except TooManyVersions:
            log.error("rotate-due: key %r is at kms.max_versions", key.key_id)
            return None
        return Rotated(new.key_id, new.latest_version)

    def recreate_key(self, key_id: str) -> KeyInfo:
        """Wipe every version and issue version 1 with fresh material; state and metadata stay.

        It destroys material like a DELETE, so it is refused (409) when the key's
        ``deletion_allowed`` is false, while it is pending deletion, and whenever
        ``kms.deletion.min_pending_days`` makes a waiting period mandatory.
        """
        key = self._trust.get(key_id)
        # Before generating material; again under the lock below.
        rules.require_recreatable(key, self._min_pending_days)

        def fresh_incarnation(current: KeyRecord) -> KeyRecord:
            self._trust.expect_unchanged(key, current)
            return rules.recreate(
                current, secrets.token_hex(16), self._clock(), self._min_pending_days
            )

        recreated = self._store_new_version(
            ALGORITHMS[key.algorithm],
            key_id,
            fresh_incarnation,
            lambda plan: self._repository.recreate_key(key_id, plan),
            replace_versions=True,
        )
        self._forget(key_id)
        self._repository.reclaim_destroyed()
        self._trust.changed(recreated)
        return self.info(recreated)

    def _store_new_version(
        self,
        spec: Algorithm,
        key_id: str,
        next_record: Callable[[KeyRecord], KeyRecord],
        store: Callable[[KeyPlanner], KeyRecord],
        *,
        replace_versions: bool = False,
    ) -> KeyRecord:
        """Generate fresh material, let ``store`` persist it, and overwrite the plaintext copy.

        Under the lock the repository hands ``plan`` the row as it is now; ``next_record``
        checks it is still the key the material was made for (or raises ``KeyChanged``) and
        says what the row becomes; ``plan`` seals that row and wraps the material under its
        identity.
        """
        secret = spec.generate()
        public_key = spec.public_key_der(secret)

        def plan(current: KeyRecord, stored_epoch: bytes | None) -> KeyChange:
            key, epoch = self._trust.stamp(next_record(current), stored_epoch)
            wrapped_key = self._keyring.wrap(secret, identity_of(key, key.latest_version))
            version_mac = self._keyring.tag(
                encode_version_row(key, key.latest_version, wrapped_key, public_key)
            )
            return KeyChange(
                key=key,
                version=NewVersion(wrapped_key=wrapped_key, public_key=public_key, mac=version_mac),
                replace_versions=replace_versions,
                epoch=epoch,
            )

        try:
            if self._after_generation is not None:
                self._after_generation(key_id)
            return store(plan)
        finally:
            zeroise(secret)
