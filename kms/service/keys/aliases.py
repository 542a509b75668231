"""Aliases: names (``alias/<name>``) that stand for a key, as AWS KMS has them.

**Resolution.** ``alias/<name>`` is the alias row of that name if there is one, else the key
whose key_id is ``<name>`` (every key has the alias of its own key_id, which is no row). A row
wins: creating a key later whose key_id equals an alias's name never takes the alias over, and
creating an alias is refused while a key has that key_id (``AliasExists``), so no alias can
take over a key's own name either.

**Trust.** The database is untrusted storage: an alias row binds its name to its key under a
MAC (kms.service.integrity.encode_alias_row) and carries the generation of the change that wrote
it, so a row re-pointed at another key, renamed, copied or replayed behind kms's back is refused
like a key row (``IntegrityFailure``, 500; ``RolledBack``, 503), never obeyed. Deleting an alias
row behind kms's back makes the name fail as unknown (or, if a key was since created with that
key_id, name that key), which that insider could cause by deleting the key row as well.

**Changes.** Each change takes, in order, the row of the key the alias is to name, the keystore
epoch row and the alias row (kms.store.aliases), raises the epoch and stamps the alias row with
it. An alias names a key that is not pending deletion when it is made or moved; it moves only to
a key of the same usage and kind (``rules.require_alias_move``). A key's aliases stay while it
is pending deletion (as in AWS KMS: using them is refused as using the key is) and go with it
when it is destroyed, in the same transaction. ``expected_key_id``: the key the caller was
authorised against; the change is refused (``KeyChanged``) if the alias names another by the
time it holds the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from fnmatch import fnmatchcase

from kms.errors import AliasExists, AliasNotFound, InvalidRequest, KeyChanged, KeyNotFound
from kms.service.keys import rules
from kms.service.keys.results import AliasInfo, AliasPage, KeyPage
from kms.service.keys.trust import TrustedRows
from kms.service.keys.validation import (
    ALIAS_PREFIX,
    KEY_ID_PATTERN,
    MAX_ALIAS_NAME_CHARS,
    MAX_ROWS_EXAMINED,
    validate_alias_name,
    validate_key_id,
    validate_limit,
)
from kms.store.records import AliasChange, AliasRecord, KeyRecord, KeyRepository, utc_now

#: An alias listing's cursor: named aliases first (``n:<last alias name>``), then the alias of
#: each key's key_id (``k:<last key_id>``).
NAMED_CURSOR = "n:"
KEYS_CURSOR = "k:"


class KeyAliases:
    def __init__(
        self,
        repository: KeyRepository,
        trust: TrustedRows,
        list_keys: Callable[..., KeyPage],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """``list_keys`` is ``KeyReading.list_page`` (the listing of the implicit aliases)."""
        self._repository = repository
        self._trust = trust
        self._list_keys = list_keys
        self._clock = clock

    # -- resolving -------------------------------------------------------------------------

    def resolve_alias(self, alias_name: str) -> str:
        """The key_id ``alias_name`` names; ``AliasNotFound`` if it names none."""
        row = self._row(alias_name)
        if row is not None:
            return row.key_id
        implicit = alias_name[len(ALIAS_PREFIX) :]
        if KEY_ID_PATTERN.fullmatch(implicit) is None:
            raise AliasNotFound()
        return implicit

    def _row(self, alias_name: str) -> AliasRecord | None:
        """The alias row, checked; None if there is none."""
        if not alias_name.startswith(ALIAS_PREFIX) or len(alias_name) > MAX_ALIAS_NAME_CHARS:
            raise AliasNotFound()
        since = self._trust.mark()
        row = self._repository.get_alias(alias_name)
        return None if row is None else self._trust.checked_alias(row, since)

    # -- changing --------------------------------------------------------------------------

    def create_alias(self, alias_name: str, key_id: str) -> AliasInfo:
        validate_alias_name(alias_name)
        validate_key_id(key_id)
        taken = alias_name[len(ALIAS_PREFIX) :]
        if KEY_ID_PATTERN.fullmatch(taken) is not None:
            try:
                self._trust.get(taken)
                raise AliasExists("a key has this name as its key_id: alias/<key_id> names it")
            except KeyNotFound:
                pass

        def plan(
            current: AliasRecord | None, target: KeyRecord | None, epoch: bytes | None
        ) -> AliasChange:
            if current is not None:
                raise AliasExists()
            rules.require_alias_target(self._trust.checked(_present(target)))
            now = self._clock()
            new = AliasRecord(alias_name, key_id, created_at=now, updated_at=now, generation=0)
            return self._stamped(new, epoch)

        return self._change(alias_name, key_id, plan)

    def update_alias(
        self, alias_name: str, key_id: str, expected_key_id: str | None = None
    ) -> AliasInfo:
        """Point an existing alias row at another key (the alias of a key_id is no row:
        ``AliasNotFound``)."""
        validate_alias_name(alias_name)
        validate_key_id(key_id)
        before = self._row(alias_name)
        if before is None:
            raise AliasNotFound()
        _expect(before, expected_key_id)
        current_key = self._trust.get(before.key_id)

        def plan(
            current: AliasRecord | None, target: KeyRecord | None, epoch: bytes | None
        ) -> AliasChange:
            _expect(_existing(current), before.key_id)
            self._trust.checked_alias(_existing(current))
            rules.require_alias_move(current_key, self._trust.checked(_present(target)))
            moved = replace(_existing(current), key_id=key_id, updated_at=self._clock())
            return self._stamped(moved, epoch)

        return self._change(alias_name, key_id, plan)

    def delete_alias(self, alias_name: str, expected_key_id: str | None = None) -> None:
        if not alias_name.startswith(ALIAS_PREFIX) or len(alias_name) > MAX_ALIAS_NAME_CHARS:
            raise AliasNotFound()
        deleted: list[int] = []

        def plan(
            current: AliasRecord | None, _target: KeyRecord | None, epoch: bytes | None
        ) -> AliasChange:
            alias = self._trust.checked_alias(_existing(current))
            _expect(alias, expected_key_id)
            generation = self._trust.next_generation(epoch, alias.generation)
            deleted.append(generation)
            return AliasChange(alias=None, epoch=self._trust.epoch_row(generation))

        self._repository.change_alias(alias_name, None, plan)
        self._trust.alias_changed(alias_name, deleted[-1])

    def _stamped(self, alias: AliasRecord, epoch: bytes | None) -> AliasChange:
        stamped, epoch_row = self._trust.stamp_alias(alias, epoch)
        return AliasChange(alias=stamped, epoch=epoch_row)

    def _change(self, alias_name: str, key_id: str, plan: Callable[..., AliasChange]) -> AliasInfo:
        written: list[AliasRecord] = []

        def recorded(
            current: AliasRecord | None, target: KeyRecord | None, epoch: bytes | None
        ) -> AliasChange:
            change = plan(current, target, epoch)
            if change.alias is not None:
                written.append(change.alias)
            return change

        self._repository.change_alias(alias_name, key_id, recorded)
        alias = written[-1]
        self._trust.alias_changed(alias.alias_name, alias.generation)
        return alias_info(alias)

    # -- listing ---------------------------------------------------------------------------

    def list_aliases(
        self,
        limit: int = 100,
        after: str | None = None,
        key_patterns: Sequence[str] | None = None,
        key_id: str | None = None,
    ) -> AliasPage:
        """Up to ``limit`` aliases of keys whose key_id matches one of ``key_patterns``
        (``fnmatchcase``; None: any key; the caller's scope), of ``key_id`` only if given:
        the alias rows in binary order of their names, then the alias of each key's key_id in
        key_id order. ``after`` is a page's ``next_after``; a page may be short, and at most
        MAX_ROWS_EXAMINED alias rows are read for it."""
        validate_limit(limit)
        key = None if key_id is None else self._trust.get(key_id)
        if after is not None and not after.startswith((NAMED_CURSOR, KEYS_CURSOR)):
            raise InvalidRequest("the marker is not one this listing gave")
        found: list[AliasInfo] = []
        examined = 0
        keys_after = after[len(KEYS_CURSOR) :] if after and after.startswith(KEYS_CURSOR) else ""
        if after is None or after.startswith(NAMED_CURSOR):
            named_after = None if after is None else after[len(NAMED_CURSOR) :] or None
            while True:
                if len(found) == limit or examined >= MAX_ROWS_EXAMINED:
                    return AliasPage(found, NAMED_CURSOR + (named_after or ""), examined)
                batch = min(limit - len(found), MAX_ROWS_EXAMINED - examined)
                since = self._trust.mark()
                rows = self._repository.list_aliases(batch, named_after, key_id)
                examined += len(rows)
                for row in rows:
                    named_after = row.alias_name
                    alias = self._trust.checked_alias(row, since)
                    if key_patterns is None or any(
                        fnmatchcase(alias.key_id, pattern) for pattern in key_patterns
                    ):
                        found.append(alias_info(alias))
                if len(rows) < batch:
                    break  # every alias row listed: on to the keys' own aliases
            if len(found) == limit:
                return AliasPage(found, KEYS_CURSOR, examined)
        if key is not None:  # one key: its own alias
            if not keys_after:
                found.append(implicit_alias(key.key_id, key.created_at))
            return AliasPage(found, None, examined)
        page = self._list_keys(
            limit=limit - len(found), after=keys_after or None, key_patterns=key_patterns
        )
        found.extend(implicit_alias(k.key_id, k.created_at) for k in page.keys)
        return AliasPage(
            found,
            None if page.next_after is None else KEYS_CURSOR + page.next_after,
            examined + page.rows_examined,
        )


def alias_info(alias: AliasRecord) -> AliasInfo:
    return AliasInfo(alias.alias_name, alias.key_id, alias.created_at, alias.updated_at)


def implicit_alias(key_id: str, created_at: datetime) -> AliasInfo:
    return AliasInfo(ALIAS_PREFIX + key_id, key_id, created_at, created_at, implicit=True)


def _present(key: KeyRecord | None) -> KeyRecord:
    if key is None:  # the repository locks the key of every create and update
        raise KeyNotFound()
    return key


def _existing(alias: AliasRecord | None) -> AliasRecord:
    if alias is None:
        raise AliasNotFound()
    return alias


def _expect(alias: AliasRecord, key_id: str | None) -> None:
    if key_id is not None and alias.key_id != key_id:
        raise KeyChanged()
