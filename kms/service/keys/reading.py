"""Reading keys: one key, its versions, a page of keys in a caller's scope, and the answer
(``KeyInfo``) every lifecycle call returns. ``KeyLifecycle`` (kms.service.keys.lifecycle) is a
``KeyReading`` and sets what it reads with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import timedelta
from fnmatch import fnmatchcase

from kms.crypto.algorithms import RSA_ENCRYPTION_ALGORITHMS, Purpose
from kms.errors import InvalidRequest, ListingTimedOut
from kms.service.keys.limits import encryption_limit
from kms.service.keys.results import (
    KeyInfo,
    KeyPage,
    KeyVersionInfo,
    last_use_attempt,
    version_info,
)
from kms.service.keys.trust import TrustedRows
from kms.service.keys.validation import (
    KEY_DETAIL_VERSIONS,
    MAX_ROWS_EXAMINED,
    format_rotation_period,
    is_integer,
    parse_label_filter,
    validate_key_id,
    validate_limit,
    validate_state,
)
from kms.store.patterns import glob_to_like
from kms.store.records import KeyRecord, KeyRepository


class KeyReading:
    _repository: KeyRepository
    _trust: TrustedRows
    _default_max_encryptions: int
    #: ``kms.list_deadline_ms`` in seconds, measured by ``_monotonic``.
    _list_deadline: float
    _monotonic: Callable[[], float]

    # -- reading ---------------------------------------------------------------------------

    def get_key(self, key_id: str) -> KeyInfo:
        """The key with its newest KEY_DETAIL_VERSIONS versions (oldest of them first)."""
        key = self._trust.get(key_id)
        newest = self._repository.newest_versions(key.key_id, KEY_DETAIL_VERSIONS)
        return self.info(key, tuple(version_info(v) for v in newest))

    def key_info(self, key_id: str) -> KeyInfo:
        """The key without its versions: what an operation needs to know of its type."""
        return self.info(self._trust.get(key_id))

    def list_versions(
        self, key_id: str, limit: int = 100, after: int | None = None
    ) -> list[KeyVersionInfo]:
        """A page of the key's versions, oldest first, after version ``after``."""
        validate_limit(limit)
        if after is not None and not is_integer(after):
            raise InvalidRequest("after must be a version number")
        key = self._trust.get(key_id)
        return [version_info(v) for v in self._repository.version_page(key.key_id, limit, after)]

    def list_rotations(
        self, key_id: str, limit: int = 100, after: int | None = None
    ) -> tuple[list[KeyVersionInfo], bool]:
        """A page of the key's rotations, oldest first, after version ``after``, and whether
        more follow. A rotation is a version after the first (version 1 is made with the key,
        or by a recreate); destroyed (trimmed) versions are gone from it."""
        validate_limit(limit)
        if after is not None and not is_integer(after):
            raise InvalidRequest("after must be a version number")
        key = self._trust.get(key_id)
        page = self._repository.version_page(key.key_id, limit + 1, max(after or 1, 1))
        return [version_info(v) for v in page[:limit]], len(page) > limit

    def list_keys(
        self,
        limit: int = 100,
        after: str | None = None,
        state: str | None = None,
        label: str | None = None,
        key_patterns: Sequence[str] | None = None,
    ) -> list[KeyInfo]:
        """The keys of ``list_page``, without its cursor."""
        return self.list_page(limit, after, state, label, key_patterns).keys

    def list_page(
        self,
        limit: int = 100,
        after: str | None = None,
        state: str | None = None,
        label: str | None = None,
        key_patterns: Sequence[str] | None = None,
    ) -> KeyPage:
        """Up to ``limit`` keys after ``after`` in key_id order, in ``state``, carrying the
        label ``name:value`` if given, whose key_id matches one of the globs ``key_patterns``
        (``fnmatchcase``; None: any key; the caller's scope).

        The state and the globs are conditions in the query (the database returns only rows in
        scope, through the primary key's index where a glob has a literal prefix); the label is
        checked on the authenticated row. Whatever the scope and the filters, at most
        MAX_ROWS_EXAMINED rows are read and MAC-checked: a page not full by then is answered
        as it is, with the cursor to continue from. A listing still running after
        ``list_deadline`` seconds is stopped (``ListingTimedOut``).
        """
        validate_limit(limit)
        if after is not None:
            validate_key_id(after)
        validate_state(state)
        wanted = None if label is None else parse_label_filter(label)
        deadline = self._monotonic() + self._list_deadline
        # Rows come back in scope, except for globs with a set, which the query widens.
        exact = key_patterns is None or all(glob_to_like(p).exact for p in key_patterns)
        found: list[KeyInfo] = []
        examined = 0
        while True:
            if exact and wanted is None:
                batch = min(limit - len(found), MAX_ROWS_EXAMINED - examined)
            else:
                batch = MAX_ROWS_EXAMINED - examined
            since = self._trust.mark()
            page = self._repository.scan_keys(batch, after, state, key_patterns, deadline)
            for key in page:
                examined += 1
                after = key.key_id
                if self._monotonic() > deadline:
                    raise ListingTimedOut()
                if key_patterns is not None and not any(
                    fnmatchcase(key.key_id, pattern) for pattern in key_patterns
                ):
                    continue
                checked = self._trust.checked(key, since)
                if wanted is None or json.loads(checked.labels).get(wanted[0]) == wanted[1]:
                    found.append(self.info(checked))
                    if len(found) == limit:
                        return KeyPage(found, next_after=checked.key_id, rows_examined=examined)
            if len(page) < batch:
                return KeyPage(found, next_after=None, rows_examined=examined)
            if examined >= MAX_ROWS_EXAMINED:
                return KeyPage(found, next_after=after, rows_examined=examined)

    def count_rotating_keys(self) -> int:
        return self._repository.count_keys_with_rotation_period()

    # -- answers ---------------------------------------------------------------------------

    def info(self, key: KeyRecord, versions: tuple[KeyVersionInfo, ...] = ()) -> KeyInfo:
        next_rotation_at = None
        if key.rotation_period is not None:
            latest = next((v for v in versions if v.version == key.latest_version), None)
            if latest is None:
                newest = self._repository.newest_versions(key.key_id, 1)
                latest = version_info(newest[-1]) if newest else None  # none: just destroyed
            if latest is not None:
                next_rotation_at = latest.created_at + timedelta(seconds=key.rotation_period)
        return KeyInfo(
            key_id=key.key_id,
            purpose=key.purpose,
            algorithm=key.algorithm,
            version=key.latest_version,
            created_at=key.created_at,
            state=key.state,
            description=key.description,
            labels=json.loads(key.labels),
            min_decryption_version=key.min_decryption_version,
            min_available_version=key.min_available_version,
            deletion_allowed=key.deletion_allowed,
            pending_deletion_at=key.pending_deletion_at,
            use_attempts_while_pending=key.use_attempts_while_pending,
            last_use_attempt=last_use_attempt(key.last_use_attempt),
            key_versions=versions,
            rotation_period=None
            if key.rotation_period is None
            else format_rotation_period(key.rotation_period),
            next_rotation_at=next_rotation_at,
            # Use limits apply to AEAD keys only (kms.service.keys.limits).
            max_encryptions_per_version=encryption_limit(key, self._default_max_encryptions)
            if key.purpose == Purpose.ENCRYPT.value
            and key.algorithm not in RSA_ENCRYPTION_ALGORITHMS
            else None,
        )
