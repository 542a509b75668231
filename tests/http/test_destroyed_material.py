"""Destroyed means destroyed, on a real server (docs/security.md, "Destroyed material"): after
``DELETE /v1/kms/keys/{key_id}`` answers, the SQLite file and its ``-wal``, read byte for byte
behind the server's back, hold none of the key's wrapped versions, while its workers keep their
connections open and checkpoint in the background. tests/service/test_destroyed_material.py
covers trim, recreate, ``destroy-due``, ``kms rekey`` and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    create_key,
    database_rows,
    expect_json,
    expect_no_content,
    unique_key_id,
)

pytestmark = pytest.mark.slow


def files_holding(database: Path, secrets: list[bytes]) -> list[str]:
    found = []
    for path in (database, database.with_name(database.name + "-wal")):
        if path.exists():
            data = path.read_bytes()
            found += [f"version {i + 1} in {path.name}" for i, s in enumerate(secrets) if s in data]
    return found


def test_a_deleted_key_leaves_no_wrapped_key_in_the_database_files(
    client: KMSClient, deployment: Deployment
) -> None:
    key_id = unique_key_id("destroyed")
    create_key(client, key_id=key_id)
    for _ in range(2):
        expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    wrapped = [
        bytes(row[2])
        for row in database_rows(deployment.database)["key_versions"]
        if row[0] == key_id
    ]
    assert len(wrapped) == 3
    assert files_holding(deployment.database, wrapped)  # the search sees them while they exist
    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
    assert files_holding(deployment.database, wrapped) == []
