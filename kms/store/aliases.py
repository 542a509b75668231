"""The alias rows of the key repository: reading, paging, and changing one alias under the locks
of the key it is to name and of the keystore epoch row.

Lock order, the same for every change on every node: key rows, then the epoch row, then alias
rows. Destroying a key follows it too (its row, the epoch, then its aliases), so a change of an
alias and the destruction of a key never wait for each other in a cycle.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from kms.errors import AliasExists, KeyNotFound
from kms.store.guards import translate_database_errors as _translate_database_errors
from kms.store.models import aliases
from kms.store.records import AliasPlanner, AliasRecord, AliasSealer
from kms.store.statements import SELECT_KEY_FOR_UPDATE, as_utc, key_record


def alias_record(row: Row[Any]) -> AliasRecord:
    return AliasRecord(
        alias_name=row.alias_name,
        key_id=row.key_id,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        generation=row.generation,
        mac=bytes(row.mac),
    )


def alias_values(alias: AliasRecord) -> dict[str, object]:
    return {name: getattr(alias, name) for name in alias.__dataclass_fields__}


def delete_aliases_of(conn: Connection, key_id: str) -> list[str]:
    """In the caller's transaction (a key's destruction, after its row and the epoch row):
    delete the key's aliases; returns their names."""
    names = list(
        conn.execute(
            select(aliases.c.alias_name).where(aliases.c.key_id == key_id).with_for_update()
        ).scalars()
    )
    if names:
        conn.execute(delete(aliases).where(aliases.c.key_id == key_id))
    return names


def reseal_aliases(conn: Connection, seal_alias: AliasSealer) -> int:
    """In the caller's transaction (``kms rekey``, ``restore --as-clone``): each alias row's new
    MAC; ``seal_alias`` verifies the row under the old keyring first. Returns the count."""
    count = 0
    for row in conn.execute(select(aliases).order_by(aliases.c.alias_name)).all():
        alias = alias_record(row)
        conn.execute(
            update(aliases)
            .where(aliases.c.alias_name == alias.alias_name)
            .values(mac=seal_alias(alias))
        )
        count += 1
    return count


class AliasRows:
    """Mixed into ``SQLKeyRepository``, which provides the engines and the write path."""

    _engine: Engine
    _one_statement: Engine
    _binary_alias_name: ColumnElement[str]

    def _write(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def _locked_epoch(self, conn: Connection) -> bytes | None:
        raise NotImplementedError

    def _write_epoch(self, conn: Connection, epoch: bytes | None) -> None:
        raise NotImplementedError

    @_translate_database_errors
    def get_alias(self, alias_name: str) -> AliasRecord | None:
        with self._one_statement.connect() as conn:
            row = conn.execute(select(aliases).where(aliases.c.alias_name == alias_name)).first()
        return None if row is None else alias_record(row)

    @_translate_database_errors
    def list_aliases(
        self, limit: int, after: str | None, key_id: str | None = None
    ) -> list[AliasRecord]:
        """Up to ``limit`` aliases after ``after`` in binary order of their names (of ``key_id``
        only, if given)."""
        name = self._binary_alias_name
        query = select(aliases).order_by(name).limit(limit)
        if after is not None:
            query = query.where(name > after)
        if key_id is not None:
            query = query.where(aliases.c.key_id == key_id)
        with self._engine.connect() as conn:
            return [alias_record(row) for row in conn.execute(query)]

    @_translate_database_errors
    def change_alias(self, alias_name: str, key_id: str | None, plan: AliasPlanner) -> None:
        """Create, re-point or delete an alias: ``plan`` gets the alias row as it is now, the
        row of the key it is to name (``key_id``; None for a delete) and the epoch row, under
        their locks, and says what to write. ``KeyNotFound`` if there is no such key,
        ``AliasExists`` if another writer created the alias first."""
        try:
            with self._write() as conn:
                target = None
                if key_id is not None:
                    row = conn.execute(SELECT_KEY_FOR_UPDATE, {"key_id": key_id}).first()
                    if row is None:
                        raise KeyNotFound()
                    target = key_record(row)
                epoch = self._locked_epoch(conn)
                found = conn.execute(
                    select(aliases).where(aliases.c.alias_name == alias_name).with_for_update()
                ).first()
                current = None if found is None else alias_record(found)
                change = plan(current, target, epoch)
                self._write_alias(conn, alias_name, current, change.alias)
                self._write_epoch(conn, change.epoch)
        except IntegrityError as exc:
            raise AliasExists() from exc

    @staticmethod
    def _write_alias(
        conn: Connection, alias_name: str, current: AliasRecord | None, new: AliasRecord | None
    ) -> None:
        named = aliases.c.alias_name == alias_name
        if new is not None and new.alias_name != alias_name:
            raise ValueError("an alias change must keep its name")
        if new is None:
            conn.execute(delete(aliases).where(named))
        elif current is None:
            conn.execute(insert(aliases).values(**alias_values(new)))
        else:
            values = alias_values(new)
            del values["alias_name"]
            conn.execute(update(aliases).where(named).values(**values))
