"""Reading key rows and version rows so that nothing unchecked feeds a decision.

The database is untrusted storage (kms.service.integrity): every key row is used only once its
MAC and its algorithm check out, every version row only once its MAC, bound to the key row's
identity, does. ``TrustedRows`` is the one place rows come in through, and the one place rows
are sealed on the way out.

Caches, each keyed so that only the very row that passed can hit:
- verified key rows, kept whole (MAC included): encoding and MAC-checking a row costs about
  10 us, a hit about 2.5 us, on a hot path of about 190 us (docs/performance.md);
- the key rows of the cryptographic operations (``KeyRowCache``: bounded in age and invalidated
  by the change counters);
- the latest version row read in one statement with its key row and not used yet, keyed by the
  key row's MAC, for the operation that follows on a key this worker has not loaded.

Every key row that passes its MAC is also held against the generation this node has seen of it
(``Generations``), cached or not: an older row is refused (``RolledBack``). Sealing a change
stamps the row with the next keystore epoch (``stamp``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kms.crypto.algorithms import ALGORITHMS
from kms.errors import IntegrityFailure, KeyNotFound, RolledBack
from kms.service.cache import KeyMaterialCache, KeyRowCache, secret_cache_key
from kms.service.integrity import (
    encode_alias_row,
    encode_key_row,
    encode_version_row,
    epoch_row,
    read_epoch,
)
from kms.service.keyring import Keyring
from kms.service.keys.generations import Generations, record_change
from kms.service.keys.rules import require_same_key
from kms.service.keys.validation import ALIAS_NAME_PATTERN, validate_key_id
from kms.store.records import AliasRecord, KeyRecord, KeyRepository, KeyVersionRecord

log = logging.getLogger("kms.integrity")

#: Key rows whose MAC was verified, kept whole (MAC included) so only an identical row hits.
VERIFIED_ROWS_CACHE_SIZE = 1024
#: Version rows read with their key row and not yet used: at most this many before they are
#: dropped (a few hundred bytes each; an RSA key's, a few KB).
PREFETCHED_VERSIONS_LIMIT = 1024


def verify_key_row(keyring: Keyring, key: KeyRecord, *, legacy: bool = False) -> None:
    """Raise ``IntegrityFailure`` unless the row's MAC (format 2 bound to ``keyring``'s keystore,
    or with ``legacy`` format 1) and its algorithm check out."""
    verify = keyring.verify_legacy_tag if legacy else keyring.verify_tag
    verify(encode_key_row(key), key.mac, f"key {key.key_id!r}: key row")
    spec = ALGORITHMS.get(key.algorithm)
    if spec is None or spec.purpose.value != key.purpose:
        raise IntegrityFailure(f"key {key.key_id!r}: algorithm and purpose do not match")


def verify_alias_row(keyring: Keyring, alias: AliasRecord) -> None:
    """Raise ``IntegrityFailure`` unless the alias row's MAC checks out: the name still names the
    key, at the generation, it was written with."""
    keyring.verify_tag(encode_alias_row(alias), alias.mac, f"alias {alias.alias_name!r}: alias row")


def verify_version_row(
    keyring: Keyring, key: KeyRecord, record: KeyVersionRecord, *, legacy: bool = False
) -> None:
    """Raise ``IntegrityFailure`` unless the version row's MAC, bound to ``key``, checks out."""
    verify = keyring.verify_legacy_tag if legacy else keyring.verify_tag
    encoded = encode_version_row(key, record.version, record.wrapped_key, record.public_key)
    verify(encoded, record.mac, f"key {key.key_id!r}: version {record.version}")


class StaleRow(Exception):
    """A version row did not match the key row it was read for, and the key row has changed
    since (recreated, trimmed): the operation is tried again on the row as it is now."""


class TrustedRows:
    def __init__(
        self,
        repository: KeyRepository,
        keyring: Keyring,
        material_cache: KeyMaterialCache,
        rows: KeyRowCache | None = None,
        generations: Generations | None = None,
    ) -> None:
        """``rows`` caches key rows for the cryptographic operations (``kms.cache_staleness_ms``);
        without it every operation reads the row. ``material_cache`` is only looked at: a
        version whose secret is loaded already is not kept when read with its key row.
        ``generations``: what this node has seen (none: this object's memory alone)."""
        self._repository = repository
        self._keyring = keyring
        self._material_cache = material_cache
        self.generations = Generations() if generations is None else generations
        #: Rows refused by ``checked`` since start, by kind ("mac", "rollback"): the metrics.
        self.refused = {"mac": 0, "rollback": 0}
        self.rows = KeyRowCache(0, lambda _key_id: 0) if rows is None else rows
        self._verified_rows = KeyMaterialCache(VERIFIED_ROWS_CACHE_SIZE)
        self._prefetched: dict[tuple[str, bytes | None, int], KeyVersionRecord] = {}

    # -- checking --------------------------------------------------------------------------

    def mark(self) -> int:
        """Taken before reading rows that ``checked`` will judge without their write lock."""
        self.generations.refresh()
        return self.generations.mark()

    def checked(self, key: KeyRecord, since: int | None = None) -> KeyRecord:
        """The key row, once its MAC and its algorithm check out and it is no older than this
        node had seen at ``since`` (``mark``; None: read under its write lock, judged against
        everything seen); else log, count and refuse."""
        try:
            if self._verified_rows.get(key) is None:  # else this exact row, MAC included, passed
                self.verify_key(key)
                self._verified_rows.put(key, True)
            self.generations.observe(key, since)  # a row that passed once may be put back
        except IntegrityFailure as error:
            self.refused["rollback" if isinstance(error, RolledBack) else "mac"] += 1
            log.error("integrity check failed: %s", error.detail)
            raise
        return key

    def checked_alias(self, alias: AliasRecord, since: int | None = None) -> AliasRecord:
        """The alias row, once its MAC checks out and it is no older than this node had seen at
        ``since`` (as ``checked``; remembered under its name, which no key id can be)."""
        try:
            verify_alias_row(self._keyring, alias)
            self.generations.observe_row(
                alias.alias_name, alias.generation, since, f"alias {alias.alias_name!r}"
            )
        except IntegrityFailure as error:
            self.refused["rollback" if isinstance(error, RolledBack) else "mac"] += 1
            log.error("integrity check failed: %s", error.detail)
            raise
        return alias

    def verify_key(self, key: KeyRecord) -> None:
        """Raise ``IntegrityFailure`` unless the row's MAC and its algorithm check out."""
        verify_key_row(self._keyring, key)

    def verify_version(self, key: KeyRecord, record: KeyVersionRecord) -> None:
        verify_version_row(self._keyring, key, record)

    def expect_unchanged(self, expected: KeyRecord, current: KeyRecord) -> None:
        """Under the row lock: ``current`` checks out and is the key ``expected`` was (the key
        fresh material was generated for); else ``IntegrityFailure`` or ``KeyChanged``."""
        self.checked(current)
        require_same_key(expected, current)

    def sealed(self, key: KeyRecord) -> KeyRecord:
        """``key`` with the MAC of its fields."""
        return replace(key, mac=self._keyring.tag(encode_key_row(replace(key, mac=None))))

    def stamp(self, key: KeyRecord, stored_epoch: bytes | None) -> tuple[KeyRecord, bytes]:
        """Under the key row's and the epoch row's locks: ``key`` at the next keystore epoch,
        sealed, and the epoch row to write with it. Refuses (``IntegrityFailure``) an epoch row
        that fails its MAC or is older than this node has seen."""
        generation = self.next_generation(stored_epoch, key.generation)
        return self.sealed(replace(key, generation=generation)), epoch_row(
            self._keyring, generation
        )

    def stamp_alias(
        self, alias: AliasRecord, stored_epoch: bytes | None
    ) -> tuple[AliasRecord, bytes]:
        """``stamp`` for an alias row (under the epoch row's lock and the alias row's)."""
        stamped = replace(alias, generation=self.next_generation(stored_epoch, alias.generation))
        sealed = replace(stamped, mac=self._keyring.tag(encode_alias_row(stamped)))
        return sealed, epoch_row(self._keyring, sealed.generation)

    def epoch_row(self, generation: int) -> bytes:
        """The epoch row of a change that raised the epoch to ``generation`` and wrote no row
        of its own (an alias deleted)."""
        return epoch_row(self._keyring, generation)

    def next_generation(self, stored_epoch: bytes | None, floor: int) -> int:
        """Under the epoch row's lock: the generation of the next change, above the stored epoch
        and ``floor``; refuses an epoch row that fails its MAC or is older than seen."""
        try:
            epoch = read_epoch(self._keyring, stored_epoch)
            self.generations.observe_epoch(epoch)
        except IntegrityFailure as error:
            self.refused["rollback" if isinstance(error, RolledBack) else "mac"] += 1
            log.error("integrity check failed: %s", error.detail)
            raise
        return max(epoch, floor) + 1

    def changed(self, key: KeyRecord) -> None:
        """After a change committed: remember its generation, and note it for the audit line."""
        self.generations.remember(key)
        record_change(key.key_id, key.generation)

    def destroyed(self, key_id: str, generation: int, aliases: list[str] | None = None) -> None:
        """After a destroy committed at ``generation`` (the epoch it raised), which deleted the
        key's ``aliases``: an older copy of any of them is a rollback."""
        self.generations.destroyed(key_id, generation)
        for alias_name in aliases or ():
            # Names read from the database unchecked: only a well-formed one reaches the journal
            # (whose lines are "<generation> <name>").
            if ALIAS_NAME_PATTERN.fullmatch(alias_name) is not None:
                self.generations.remember_row(alias_name, generation)
        record_change(key_id, generation)

    def alias_changed(self, alias_name: str, generation: int) -> None:
        """After an alias change (or its deletion) committed at ``generation``. Not recorded for
        the audit line's ``key_generation``: that is the key's, which the change left as it was
        (``kms check --audit`` compares it with the key row)."""
        self.generations.remember_row(alias_name, generation)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key_id: str) -> KeyRecord:
        """The key row from the database, checked (the lifecycle calls: never cached)."""
        since = self.mark()
        return self.checked(self._repository.get_key(validate_key_id(key_id)), since)

    def cached(self, key_id: str) -> KeyRecord | None:
        """The key row from the row cache, if it still holds it (checked when it was read)."""
        return self.rows.get(key_id)

    def read(self, key_id: str) -> KeyRecord:
        """The key row from the database, checked, and cached for the operations.

        The change counter is read first and the clock before the read: a write committed
        after either moved the counter, and the age never understates.
        """
        mark = self.rows.mark(key_id)
        read_at = self.rows.now()
        since = self.mark()
        key, latest = self._repository.get_key_and_latest_version(key_id)
        key = self.checked(key, since)
        if latest is not None and not self._material_cache.holds(
            secret_cache_key(key.key_id, key.incarnation, latest.version)
        ):
            if len(self._prefetched) >= PREFETCHED_VERSIONS_LIMIT:
                self._prefetched.clear()  # left by operations that used another version
            self._prefetched[(key.key_id, key.mac, latest.version)] = latest
        self.rows.put(key, mark, read_at)
        return key

    def reread(self, key: KeyRecord) -> KeyRecord | None:
        """The key row read again; None when it is the row ``key`` already was (its MAC covers
        every field the operations use)."""
        self.rows.drop(key.key_id)
        fresh = self.read(key.key_id)
        return None if fresh.mac == key.mac else fresh

    def version(self, key: KeyRecord, version: int) -> KeyVersionRecord:
        """A version row, its MAC checked against ``key``.

        A row that does not match may only mean that ``key`` is out of date (read from the row
        cache, or just before a recreate): when the key row changed since, that is ``StaleRow``
        (the operation is retried), not an integrity failure.
        """
        if not key.min_available_version <= version <= key.latest_version:
            raise KeyNotFound(key.key_id, version)
        record = self._prefetched.pop((key.key_id, key.mac, version), None)
        if record is None:
            record = self._repository.get_version(key.key_id, version)
        try:
            self.verify_version(key, record)
        except IntegrityFailure as error:
            try:
                current = self._repository.get_key(key.key_id)
            except KeyNotFound:
                raise StaleRow() from None
            if current.mac != key.mac:
                raise StaleRow() from None
            log.error("integrity check failed: %s", error.detail)
            raise
        return record

    def drop_row(self, key_id: str) -> None:
        """Forget the cached row: the key was written, so the next operation reads it."""
        self.rows.drop(key_id)

    def prefetched_count(self, key_id: str | None = None) -> int:
        """Version rows kept from key-row reads and not used yet (of ``key_id``, or all)."""
        return sum(1 for entry in self._prefetched if key_id is None or entry[0] == key_id)

    def forget(self, key_id: str) -> None:
        """Drop the cached row and the version rows read with it (a write changed the key)."""
        self.rows.drop(key_id)
        for entry in [entry for entry in list(self._prefetched) if entry[0] == key_id]:
            self._prefetched.pop(entry, None)
