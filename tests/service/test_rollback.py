"""Replay of an older genuine key row, as an attacker who can write the database does it: keep a
copy of the row (a backup, a replica, a SELECT made earlier), let kms change the key, put the
copy back with SQL. The row's MAC is genuine; only its generation is old.

For each of the seven changes an attacker would want undone (disable, rotate, fence, deletion
protection, scheduled deletion, use limit, trim), on SQLite and PostgreSQL: a node that saw the
change refuses the old row (``RolledBack``), and so does that node after a restart (its journal);
the control, a node that never saw the change, obeys the old row, which is exactly what every
node did before generations. ``kms check --audit`` names the rolled-back key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kms.errors import KeyNotFound, KeyStateConflict, RolledBack
from kms.master import check_database
from kms.service.keys import Generations, KMSService
from kms.store.generations import GenerationJournal
from tests.helpers.keystore import Store


def node(store: Store, journal: Path | None) -> KMSService:
    """A service as one node runs it: its generations in ``journal`` (None: a node that never
    saw anything)."""
    generations = Generations(
        None if journal is None else GenerationJournal(journal, store.keyring.keystore_id)
    )
    return store.service(generations=generations)


def snapshot(store: Store, key_id: str) -> dict[str, Any]:
    return dict(store.row("SELECT * FROM keys WHERE key_id = :k", k=key_id)._mapping)


def put_back(store: Store, row: dict[str, Any]) -> None:
    columns = [name for name in row if name != "key_id"]
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    assert store.sql(f"UPDATE keys SET {assignments} WHERE key_id = :key_id", **row) == 1  # noqa: S608


@dataclass(frozen=True)
class Case:
    """``prepare`` before the old row is copied; ``change`` the change the attacker undoes;
    ``use`` what the attacker gains with the old row back (it must then fail)."""

    prepare: Callable[[KMSService, str], Any]
    change: Callable[[KMSService, str], None]
    use: Callable[[KMSService, str, Any], object]
    #: Version rows to copy and put back too (trim destroys them).
    versions: bool = False


def _ciphertext_of_version_1(service: KMSService, key_id: str) -> str:
    ciphertext = service.encrypt(key_id, b"under version 1").ciphertext
    service.rotate_key(key_id)
    return ciphertext


def _fence_and_trim(service: KMSService, key_id: str) -> None:
    service.update_key(key_id, min_decryption_version=2)
    service.trim_key(key_id, 2)


CASES = {
    "disable": Case(
        prepare=lambda service, key_id: None,
        change=lambda service, key_id: service.disable_key(key_id),
        use=lambda service, key_id, _: service.encrypt(key_id, b"x"),
    ),
    "rotate": Case(
        prepare=lambda service, key_id: None,
        change=lambda service, key_id: service.rotate_key(key_id),
        use=lambda service, key_id, _: service.encrypt(key_id, b"x"),
    ),
    "fence": Case(
        prepare=_ciphertext_of_version_1,
        change=lambda service, key_id: service.update_key(key_id, min_decryption_version=2),
        use=lambda service, key_id, ciphertext: service.decrypt(key_id, ciphertext),
    ),
    "deletion protection": Case(
        prepare=lambda service, key_id: None,
        change=lambda service, key_id: service.update_key(key_id, deletion_allowed=False),
        use=lambda service, key_id, _: service.delete_key(key_id),
    ),
    "scheduled deletion": Case(
        prepare=lambda service, key_id: None,
        change=lambda service, key_id: service.delete_key(key_id, pending_days=7),
        use=lambda service, key_id, _: service.encrypt(key_id, b"x"),
    ),
    "use limit": Case(
        prepare=lambda service, key_id: None,
        change=lambda service, key_id: service.update_key(key_id, max_encryptions_per_version=1),
        use=lambda service, key_id, _: service.encrypt_batch(key_id, [{"plaintext": b"x"}] * 3),
    ),
    "trim": Case(
        prepare=_ciphertext_of_version_1,
        change=lambda service, key_id: _fence_and_trim(service, key_id),
        use=lambda service, key_id, ciphertext: service.decrypt(key_id, ciphertext),
        versions=True,
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_an_older_genuine_row_put_back_is_refused_by_every_node_that_saw_the_change(
    store: Store, tmp_path: Path, case: str
) -> None:
    attack = CASES[case]
    journal = tmp_path / "node.generations"
    service = node(store, journal)
    service.create_key("target")
    prepared = attack.prepare(service, "target")
    old_row = snapshot(store, "target")
    old_versions = store.rows("SELECT * FROM key_versions WHERE key_id = 'target'")
    version_columns = list(
        store.row("SELECT * FROM key_versions WHERE key_id = 'target' LIMIT 1")._mapping
    )
    attack.change(service, "target")
    new_row = snapshot(store, "target")
    assert new_row["generation"] > old_row["generation"]

    put_back(store, old_row)
    if attack.versions:
        for values in old_versions:
            row = dict(zip(version_columns, values, strict=True))
            store.sql(
                "DELETE FROM key_versions WHERE key_id = :key_id AND version = :version", **row
            )
            names = ", ".join(row)
            store.sql(
                f"INSERT INTO key_versions ({names}) VALUES ({', '.join(':' + n for n in row)})",  # noqa: S608
                **row,
            )

    # The node that made the change refuses it, and so does that node restarted.
    for witness in (service, node(store, journal)):
        with pytest.raises(RolledBack):
            attack.use(witness, "target", prepared)
    with pytest.raises(RolledBack):
        node(store, journal).get_key("target")
    # With the current row back, the same node serves the key as the change left it.
    put_back(store, new_row)
    assert node(store, journal).get_key("target").key_id == "target"
    # The control: a node that never saw the change obeys the old row (MAC and all genuine),
    # as every node did before generations.
    put_back(store, old_row)
    attack.use(node(store, None), "target", prepared)


def test_a_node_that_only_read_the_newer_row_refuses_the_older_one(
    store: Store, tmp_path: Path
) -> None:
    """Another node made the change; this one only read the key afterwards (multi-node
    PostgreSQL): reading is enough to remember, and newer rows from other nodes are taken."""
    writer, reader = node(store, tmp_path / "writer"), node(store, tmp_path / "reader")
    writer.create_key("shared")
    old_row = snapshot(store, "shared")
    assert reader.encrypt("shared", b"x").version == 1
    writer.rotate_key("shared")
    assert reader.encrypt("shared", b"x").version == 2  # newer, by another node: taken
    put_back(store, old_row)
    with pytest.raises(RolledBack):
        reader.encrypt("shared", b"x")


def test_a_key_destroyed_and_put_back_is_refused(store: Store, tmp_path: Path) -> None:
    service = node(store, tmp_path / "node")
    service.create_key("gone")
    old_row = snapshot(store, "gone")
    old_versions = store.rows(
        "SELECT key_id, version, wrapped_key, public_key, created_at, mac "
        "FROM key_versions WHERE key_id = 'gone'"
    )
    service.delete_key("gone")
    with pytest.raises(KeyNotFound):
        service.get_key("gone")
    names, values = ", ".join(old_row), ", ".join(f":{name}" for name in old_row)
    store.sql(f"INSERT INTO keys ({names}) VALUES ({values})", **old_row)  # noqa: S608
    for key_id, version, wrapped, public, created, mac in old_versions:
        store.sql(
            "INSERT INTO key_versions (key_id, version, wrapped_key, public_key, created_at, mac)"
            " VALUES (:k, :v, :w, :p, :c, :m)",
            k=key_id,
            v=version,
            w=wrapped,
            p=public,
            c=created,
            m=mac,
        )
    with pytest.raises(RolledBack):
        node(store, tmp_path / "node").encrypt("gone", b"x")
    # Made again under the same name, the key starts above its destroy: no false alarm.
    store.sql("DELETE FROM keys WHERE key_id = 'gone'")
    service.create_key("gone")
    assert node(store, tmp_path / "node").encrypt("gone", b"x").version == 1


def test_the_refusal_is_not_a_deletion_protection_bypass(store: Store, tmp_path: Path) -> None:
    """The deletion-protection case refuses under the row lock: nothing is destroyed."""
    service = node(store, tmp_path / "node")
    service.create_key("kept")
    old_row = snapshot(store, "kept")
    service.update_key("kept", deletion_allowed=False)
    with pytest.raises(KeyStateConflict):
        service.delete_key("kept")
    put_back(store, old_row)
    with pytest.raises(RolledBack):
        service.delete_key("kept")
    assert store.row("SELECT count(*) FROM keys WHERE key_id = 'kept'")[0] == 1


def test_check_names_a_key_whose_generation_is_above_the_epoch(store: Store) -> None:
    """The epoch row put back alone: every key changed since is above it."""
    service = store.service()
    service.create_key("first")
    old_epoch = store.row("SELECT value FROM kms_metadata WHERE name = 'epoch'")[0]
    service.rotate_key("first")
    store.sql("UPDATE kms_metadata SET value = :v WHERE name = 'epoch'", v=old_epoch)
    failures = check_database(store.settings).failures
    assert any("'first'" in f and "above the keystore epoch" in f for f in failures), failures
    with pytest.raises(RolledBack):
        service.rotate_key("first")  # a change takes the epoch row: this node saw a newer one


def test_a_worker_refuses_an_older_row_after_another_worker_of_its_node_changed_it(
    store: Store, tmp_path: Path
) -> None:
    """Two workers of one node share its journal: a change made by one is taken in by the
    other before its next read (not only at its start), so the old row put back is refused by
    both."""
    journal = tmp_path / "node.generations"
    changer, other = node(store, journal), node(store, journal)
    changer.create_key("shared")
    old_row = snapshot(store, "shared")
    assert other.get_key("shared").key_id == "shared"  # read at the old generation
    changer.rotate_key("shared")
    put_back(store, old_row)
    for worker in (changer, other):
        with pytest.raises(RolledBack):
            worker.get_key("shared")
