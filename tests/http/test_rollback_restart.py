"""Replay of an older key row across a real restart of a node (issue 22's "across a node restart
too"): gunicorn stopped, the old row put back with SQL while the node is down, gunicorn started
again. The node's journal of generations (``kms.state_file``, ``<database>.generations``) is all
that remembers the change, and it must: the disabled key stays disabled (503, never obeyed).

The control: the same replay on a node whose journal was removed (a node that never saw the
change) is obeyed, exactly as every node obeyed it before generations. So the refusal comes from
the journal read back at start, not from anything else in the row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_json,
    prepare_deployment,
)
from tests.helpers.identities import running_server


def key_row(database: Path, key_id: str) -> dict[str, Any]:
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM keys WHERE key_id = ?", (key_id,)).fetchone()
    return dict(row)


def put_back(database: Path, row: dict[str, Any]) -> None:
    columns = [name for name in row if name != "key_id"]
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    with sqlite3.connect(database) as conn:
        changed = conn.execute(
            f"UPDATE keys SET {assignments} WHERE key_id = :key_id",  # noqa: S608
            row,
        ).rowcount
    assert changed == 1


def disable_with_the_old_row_kept(deployment: Deployment, key_id: str) -> dict[str, Any]:
    """A key created, its enabled row copied, then disabled; the server stopped after."""
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
            old = key_row(deployment.database, key_id)
            expect_json(client.post(f"/v1/kms/keys/{key_id}/disable"), 200)
            body = {"key_id": key_id, "plaintext": b64(b"after the disable")}
            assert expect_json(client.post("/v1/kms/encrypt", json=body), 409) == {
                "error": "key is disabled"
            }
        finally:
            client.close()
    return old


def encrypt_after_restart(deployment: Deployment, key_id: str) -> tuple[int, Any]:
    """The node started again: ready once ``/healthz`` answers (a listing, the usual probe,
    refuses a rolled-back row too), then the attacker's encrypt."""
    server = ServerProcess(deployment)
    client = KMSClient(deployment)
    try:
        server.wait_until_serving(client, "/healthz")
        body = {"key_id": key_id, "plaintext": b64(b"with the old row back")}
        response = client.post("/v1/kms/encrypt", json=body)
        return response.status_code, response.json()
    finally:
        client.close()
        assert server.stop() == 0, server.output()
        assert "Traceback" not in server.output()


def test_an_old_row_put_back_while_the_node_was_down_is_refused_after_its_restart(
    tmp_path: Path,
) -> None:
    deployment = prepare_deployment(tmp_path / "kms")
    old = disable_with_the_old_row_kept(deployment, "payroll")
    journal = deployment.database.with_name(deployment.database.name + ".generations")
    assert journal.is_file()  # what the node remembers across its restart

    put_back(deployment.database, old)  # behind kms's back, while no node runs
    status, body = encrypt_after_restart(deployment, "payroll")

    assert status == 503, body
    assert set(body) == {"error"}
    assert key_row(deployment.database, "payroll")["state"] == old["state"]  # nothing re-sealed


def test_the_control_a_node_without_its_journal_obeys_the_old_row(tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path / "kms")
    old = disable_with_the_old_row_kept(deployment, "payroll")
    journal = deployment.database.with_name(deployment.database.name + ".generations")
    journal.unlink()  # a node that never saw the disable

    put_back(deployment.database, old)
    status, body = encrypt_after_restart(deployment, "payroll")

    assert status == 200, body  # the replay works where nothing remembers the change
