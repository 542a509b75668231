"""Key states, version policy, metadata and scheduled deletion (issue 8), over real gunicorn mTLS.

Each test runs against its own kms server on a SQLite file and, given --postgres-dsn, on a
PostgreSQL database. Rows are read behind the server's back with SQLAlchemy to see what a request
wrote or destroyed. ``kms destroy-due`` is run as real processes; the clock is moved by
scheduling deletions through the service with an injected clock (or by passing ``now`` to the
library call), never by sleeping.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from kms.errors import ConfigurationError
from kms.master import destroy_due_keys, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.settings import load_settings
from kms.store.db import create_kms_engine
from kms.store.records import utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.config import write_config
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    clean_environment,
    create_key,
    expect_error,
    expect_json,
    expect_no_content,
    free_port,
    initialise_database,
    kms_command,
    unb64,
    unique_key_id,
    write_dev_certificates,
)
from tests.helpers.identities import IdentityClient, issue_client_certificate
from tests.helpers.keystore import make_service
from tests.helpers.postgres import drop_database, given_postgres_dsn

pytestmark = pytest.mark.slow

DISABLED = "key is disabled"
PENDING = "key is pending deletion"
FENCED = "key version is below min_decryption_version"
NOT_ALLOWED = "deletion is not allowed for this key (deletion_allowed is false)"


@dataclass
class Node:
    """One kms server and the database behind it."""

    deployment: Deployment
    database_url: str
    server: ServerProcess
    client: KMSClient

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def versions_stored(self, key_id: str) -> list[int]:
        return [
            row[0]
            for row in self.rows(
                "SELECT version FROM key_versions WHERE key_id = :k ORDER BY version", k=key_id
            )
        ]

    def restart(self) -> None:
        assert self.server.stop() == 0, self.server.output()
        self.server = ServerProcess(self.deployment)
        self.server.wait_until_serving(self.client)


def _postgres_database(dsn: str) -> Iterator[str]:
    from sqlalchemy.engine import make_url

    name = f"kms_test_{random.getrandbits(64):016x}"
    admin = create_engine(dsn, isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(dsn).set(database=name).render_as_string(hide_password=False)
        drop_database(admin, name)
    finally:
        admin.dispose()


def start_node(
    directory: Path, database: str | None, config_extra: str = ""
) -> tuple[Deployment, str, ServerProcess, KMSClient]:
    write_dev_certificates(directory)
    deployment = Deployment(directory=directory, port=free_port())
    write_config(deployment.config, directory=directory, port=deployment.port, dsn=database)
    if config_extra:
        config = deployment.config.read_text(encoding="utf-8")
        deployment.config.write_text(config.replace("kms:\n", "kms:\n" + config_extra, 1))
    target = database or deployment.database
    initialise_database(target, deployment.passphrase_file)
    url = load_settings(deployment.config, environ={}).database_url
    server = ServerProcess(deployment)
    client = KMSClient(deployment)
    server.wait_until_serving(client)
    return deployment, url, server, client


def node_fixture(
    request: pytest.FixtureRequest, directory: Path, config_extra: str = ""
) -> Iterator[Node]:
    if request.param == "postgresql":
        dsn = given_postgres_dsn(request.config)
        databases: Iterator[str | None] = _postgres_database(dsn)
    else:
        databases = iter([None])
    database = next(databases)
    deployment, url, server, client = start_node(directory, database, config_extra)
    node = Node(deployment, url, server, client)
    try:
        yield node
    finally:
        client.close()
        returncode = node.server.stop()
        output = node.server.output()
        next(databases, None)  # drops the PostgreSQL database
        assert returncode == 0, output
        assert "Traceback" not in output, output


@pytest.fixture(params=["sqlite", "postgresql"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    yield from node_fixture(request, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def strict_node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """A server with ``kms.deletion.min_pending_days: 7``."""
    yield from node_fixture(request, tmp_path, "  deletion:\n    min_pending_days: 7\n")


# -- helpers ----------------------------------------------------------------------------------


def key_of(client: KMSClient, key_id: str) -> dict[str, Any]:
    return expect_json(client.get(f"/v1/kms/keys/{key_id}"), 200)


def encrypt(client: KMSClient, key_id: str, plaintext: bytes) -> str:
    body = {"key_id": key_id, "plaintext": b64(plaintext)}
    return expect_json(client.post("/v1/kms/encrypt", json=body), 200)["ciphertext"]


def decrypt_response(client: KMSClient, key_id: str, ciphertext: str) -> Any:
    return client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext})


def decrypt(client: KMSClient, key_id: str, ciphertext: str) -> bytes:
    return unb64(expect_json(decrypt_response(client, key_id, ciphertext), 200)["plaintext"])


def sign(client: KMSClient, key_id: str, message: bytes) -> str:
    body = {"key_id": key_id, "message": b64(message)}
    return expect_json(client.post("/v1/kms/sign", json=body), 200)["signature"]


def verify_response(client: KMSClient, key_id: str, message: bytes, signature: str) -> Any:
    body = {"key_id": key_id, "message": b64(message), "signature": signature}
    return client.post("/v1/kms/verify", json=body)


def patch(client: KMSClient, key_id: str, **fields: Any) -> Any:
    return client.request("PATCH", f"/v1/kms/keys/{key_id}", json=fields)


def every_crypto_operation(
    client: KMSClient, enc: str, sig: str, ciphertext: str, signature: str
) -> list[Any]:
    """One request of each cryptographic operation on the two keys."""
    return [
        client.post("/v1/kms/encrypt", json={"key_id": enc, "plaintext": b64(b"x")}),
        decrypt_response(client, enc, ciphertext),
        client.post("/v1/kms/sign", json={"key_id": sig, "message": b64(b"m")}),
        verify_response(client, sig, b"m", signature),
        client.get(f"/v1/kms/keys/{sig}/public-key"),
    ]


def schedule_in_the_past(node: Node, key_ids: list[str], days_ago: int) -> None:
    """Schedule deletions through the service with its clock ``days_ago`` days back, so that
    they are already due by the real clock: the window passes without anyone sleeping."""
    settings = load_settings(node.deployment.config, environ={})
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(
            repository,
            keyring,
            KeyMaterialCache(0),
            clock=lambda: utc_now() - timedelta(days=days_ago),
        )
        for key_id in key_ids:
            scheduled = service.delete_key(key_id, pending_days=1)
            assert scheduled is not None and scheduled.state == "pending_deletion"
    finally:
        repository.close()
        keyring.close()


def run_destroy_due(node: Node) -> subprocess.Popen[str]:
    return subprocess.Popen(
        kms_command("destroy-due"),
        env=clean_environment(node.deployment.config),
        cwd=node.deployment.directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def destroyed_by(stdout: str) -> list[str]:
    return [line.split()[2] for line in stdout.splitlines() if line.startswith("kms: destroyed ")]


# -- 1. states --------------------------------------------------------------------------------


def test_a_disabled_key_refuses_every_crypto_operation_and_works_again_once_enabled(
    node: Node,
) -> None:
    client = node.client
    enc, sig = unique_key_id("dis-enc"), unique_key_id("dis-sig")
    assert create_key(client, key_id=enc)["state"] == "enabled"
    create_key(client, key_id=sig, purpose="sign", algorithm="Ed25519")
    ciphertext = encrypt(client, enc, b"before")
    signature = sign(client, sig, b"m")

    for key_id in (enc, sig):
        disabled = expect_json(client.post(f"/v1/kms/keys/{key_id}/disable"), 200)
        assert disabled["state"] == "disabled"
    for response in every_crypto_operation(client, enc, sig, ciphertext, signature):
        expect_error(response, 409, DISABLED)

    # Still readable and rotatable; its material is kept.
    assert key_of(client, enc)["state"] == "disabled"
    listed = expect_json(client.get("/v1/kms/keys", params={"state": "disabled"}), 200)
    assert {enc, sig} <= {key["key_id"] for key in listed}
    rotated = expect_json(client.post(f"/v1/kms/keys/{enc}/rotate"), 200)
    assert (rotated["version"], rotated["state"]) == (2, "disabled")
    assert node.versions_stored(enc) == [1, 2]

    # The state is in the database, not in a worker's memory: it survives a restart.
    node.restart()
    assert key_of(client, enc)["state"] == "disabled"
    expect_error(decrypt_response(client, enc, ciphertext), 409, DISABLED)

    for key_id in (enc, sig):
        assert expect_json(client.post(f"/v1/kms/keys/{key_id}/enable"), 200)["state"] == "enabled"
    for response in every_crypto_operation(client, enc, sig, ciphertext, signature):
        assert response.status_code == 200, response.text
    assert decrypt(client, enc, ciphertext) == b"before"
    assert encrypt(client, enc, b"after").startswith(b64(b"v2:")[:3])
    assert expect_json(verify_response(client, sig, b"m", signature), 200) == {"valid": True}


# -- 2. metadata and version policy -----------------------------------------------------------


def test_metadata_at_create_and_patch_and_the_list_filters(node: Node) -> None:
    client = node.client
    team = unique_key_id("team")  # a label value no other test uses
    a, b, c = (unique_key_id(name) for name in ("meta-a", "meta-b", "meta-c"))
    created = create_key(client, key_id=a, description="orders at rest", labels={"team": team})
    assert (created["description"], created["labels"]) == ("orders at rest", {"team": team})
    assert created["deletion_allowed"] is True
    assert (created["min_decryption_version"], created["pending_deletion_at"]) == (1, None)
    assert (created["use_attempts_while_pending"], created["last_use_attempt"]) == (0, None)
    create_key(client, key_id=b, labels={"team": team, "env": "prod"})
    create_key(client, key_id=c, labels={"team": "other"})

    changed = expect_json(
        patch(client, b, description="billing", labels={"team": team, "env": "dev:eu"}), 200
    )
    assert (changed["description"], changed["labels"]) == (
        "billing",
        {"env": "dev:eu", "team": team},
    )
    assert key_of(client, b)["labels"] == {"env": "dev:eu", "team": team}

    def listed(**params: str) -> list[str]:
        body = expect_json(client.get("/v1/kms/keys", params=params), 200)
        return [key["key_id"] for key in body]

    assert listed(label=f"team:{team}") == sorted([a, b])
    assert listed(label="env:dev:eu") == [b]  # the value may hold colons
    assert listed(label=f"team:{team}", limit="1") == [min(a, b)]
    assert listed(label=f"team:{team}", limit="1", after=min(a, b)) == [max(a, b)]
    expect_json(client.post(f"/v1/kms/keys/{a}/disable"), 200)
    assert listed(label=f"team:{team}", state="disabled") == [a]
    assert listed(label=f"team:{team}", state="enabled") == [b]


def test_min_decryption_version_fences_old_versions_and_trim_destroys_them(node: Node) -> None:
    client = node.client
    key_id = unique_key_id("fence")
    create_key(client, key_id=key_id)
    ciphertexts = [encrypt(client, key_id, b"under v1")]
    for version in (2, 3):
        expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
        ciphertexts.append(encrypt(client, key_id, f"under v{version}".encode()))

    assert (
        expect_json(patch(client, key_id, min_decryption_version=2), 200)["min_decryption_version"]
        == 2
    )
    expect_error(decrypt_response(client, key_id, ciphertexts[0]), 409, FENCED)
    assert decrypt(client, key_id, ciphertexts[1]) == b"under v2"
    assert decrypt(client, key_id, ciphertexts[2]) == b"under v3"
    expect_error(
        patch(client, key_id, min_decryption_version=4),
        400,
        "min_decryption_version must be from 1 (the oldest version kept) to 3 (the latest version)",
    )
    expect_json(patch(client, key_id, min_decryption_version=1), 200)  # lowered again
    assert decrypt(client, key_id, ciphertexts[0]) == b"under v1"

    # Trim only what is already fenced off.
    expect_json(patch(client, key_id, min_decryption_version=2), 200)
    expect_error(
        client.post(f"/v1/kms/keys/{key_id}/trim", json={"min_available_version": 3}),
        409,
        "min_available_version must not exceed min_decryption_version (2); raise that first",
    )
    assert node.versions_stored(key_id) == [1, 2, 3]
    trimmed = expect_json(
        client.post(f"/v1/kms/keys/{key_id}/trim", json={"min_available_version": 2}), 200
    )
    assert (trimmed["min_available_version"], trimmed["version"]) == (2, 3)
    assert node.versions_stored(key_id) == [2, 3]  # version 1's row is gone
    assert decrypt(client, key_id, ciphertexts[1]) == b"under v2"
    assert decrypt(client, key_id, ciphertexts[2]) == b"under v3"
    expect_error(decrypt_response(client, key_id, ciphertexts[0]), 409, FENCED)
    # A destroyed version cannot be brought back by lowering the fence.
    expect_error(
        patch(client, key_id, min_decryption_version=1),
        400,
        "min_decryption_version must be from 2 (the oldest version kept) to 3 (the latest version)",
    )
    versions = expect_json(client.get(f"/v1/kms/keys/{key_id}/versions"), 200)
    assert [v["version"] for v in versions] == [2, 3]


def test_min_decryption_version_fences_verify_and_the_public_key(node: Node) -> None:
    client = node.client
    key_id = unique_key_id("fence-sig")
    create_key(client, key_id=key_id, purpose="sign", algorithm="ECDSA-P256")
    old = sign(client, key_id, b"m")
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    new = sign(client, key_id, b"m")

    expect_json(patch(client, key_id, min_decryption_version=2), 200)
    expect_error(verify_response(client, key_id, b"m", old), 409, FENCED)
    assert expect_json(verify_response(client, key_id, b"m", new), 200) == {"valid": True}
    assert expect_json(verify_response(client, key_id, b"other", new), 200)["valid"] is False
    expect_error(client.get(f"/v1/kms/keys/{key_id}/public-key?version=1"), 409, FENCED)
    expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key?version=2"), 200)

    expect_json(patch(client, key_id, min_decryption_version=1), 200)
    assert expect_json(verify_response(client, key_id, b"m", old), 200) == {"valid": True}


def test_deletion_allowed_false_refuses_delete_and_recreate(node: Node) -> None:
    client = node.client
    key_id = unique_key_id("keep")
    create_key(client, key_id=key_id)
    first = encrypt(client, key_id, b"one")
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    second = encrypt(client, key_id, b"two")
    assert (
        expect_json(patch(client, key_id, deletion_allowed=False), 200)["deletion_allowed"] is False
    )
    before = node.rows("SELECT * FROM key_versions WHERE key_id = :k", k=key_id)

    expect_error(client.delete(f"/v1/kms/keys/{key_id}"), 409, NOT_ALLOWED)
    expect_error(client.delete(f"/v1/kms/keys/{key_id}?pending_days=7"), 409, NOT_ALLOWED)
    expect_error(client.post(f"/v1/kms/keys/{key_id}/recreate"), 409, NOT_ALLOWED)

    assert node.rows("SELECT * FROM key_versions WHERE key_id = :k", k=key_id) == before
    assert key_of(client, key_id)["state"] == "enabled"
    assert decrypt(client, key_id, first) == b"one"
    assert decrypt(client, key_id, second) == b"two"

    expect_json(patch(client, key_id, deletion_allowed=True), 200)
    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
    expect_error(client.get(f"/v1/kms/keys/{key_id}"), 404, "record not found")


# -- 3. scheduled deletion --------------------------------------------------------------------


def test_a_pending_key_refuses_use_records_who_asked_and_comes_back_disabled_on_cancel(
    node: Node,
) -> None:
    client = node.client
    key_id, sig = unique_key_id("pending"), unique_key_id("pending-sig")
    create_key(client, key_id=key_id)
    create_key(client, key_id=sig, purpose="sign", algorithm="Ed25519")
    ciphertexts = [encrypt(client, key_id, b"one")]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    ciphertexts.append(encrypt(client, key_id, b"two"))
    signature = sign(client, sig, b"m")

    asked_at = utc_now()
    scheduled = expect_json(client.delete(f"/v1/kms/keys/{key_id}?pending_days=7"), 200)
    expect_json(client.delete(f"/v1/kms/keys/{sig}?pending_days=30"), 200)
    assert scheduled["state"] == "pending_deletion"
    due = datetime.fromisoformat(scheduled["pending_deletion_at"])
    assert asked_at + timedelta(days=7) <= due <= utc_now() + timedelta(days=7)
    assert node.versions_stored(key_id) == [1, 2]  # nothing destroyed yet

    # Another service, with its own certificate, still calls the key.
    cert, private_key = issue_client_certificate(node.deployment, "billing", "billing-service")
    with closing(IdentityClient(node.deployment, cert, private_key)) as billing:
        expect_error(decrypt_response(billing, key_id, ciphertexts[0]), 409, PENDING)
        expect_error(
            billing.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": "eA=="}),
            409,
            PENDING,
        )
        for response in every_crypto_operation(billing, key_id, sig, ciphertexts[1], signature):
            expect_error(response, 409, PENDING)
    pending = key_of(client, key_id)
    assert pending["use_attempts_while_pending"] == 4  # decrypt, encrypt, encrypt, decrypt
    attempt = pending["last_use_attempt"]
    assert (attempt["caller"], attempt["operation"]) == ("billing-service", "decrypt")
    assert asked_at <= datetime.fromisoformat(attempt["at"]) <= utc_now()
    signing = key_of(client, sig)
    assert signing["use_attempts_while_pending"] == 3  # sign, verify, public key
    assert signing["last_use_attempt"]["operation"] == "keys:read"

    # Nothing but reading and cancelling is allowed while pending.
    for response in (
        client.post(f"/v1/kms/keys/{key_id}/rotate"),
        client.post(f"/v1/kms/keys/{key_id}/enable"),
        client.post(f"/v1/kms/keys/{key_id}/disable"),
        client.post(f"/v1/kms/keys/{key_id}/recreate"),
        patch(client, key_id, description="x"),
        client.delete(f"/v1/kms/keys/{key_id}?pending_days=1"),
        client.delete(f"/v1/kms/keys/{key_id}"),
    ):
        expect_error(response, 409, PENDING)
    listed = expect_json(client.get("/v1/kms/keys", params={"state": "pending_deletion"}), 200)
    assert {key_id, sig} <= {key["key_id"] for key in listed}

    cancelled = expect_json(client.post(f"/v1/kms/keys/{key_id}/cancel-deletion"), 200)
    assert (cancelled["state"], cancelled["pending_deletion_at"]) == ("disabled", None)
    assert cancelled["use_attempts_while_pending"] == 4  # kept for the operator
    expect_error(decrypt_response(client, key_id, ciphertexts[0]), 409, DISABLED)
    expect_json(client.post(f"/v1/kms/keys/{key_id}/enable"), 200)
    assert [decrypt(client, key_id, text) for text in ciphertexts] == [b"one", b"two"]


def test_destroy_due_destroys_a_key_once_its_window_has_passed(node: Node) -> None:
    client = node.client
    key_id, kept = unique_key_id("due"), unique_key_id("not-due")
    create_key(client, key_id=key_id)
    create_key(client, key_id=kept)
    expect_json(client.delete(f"/v1/kms/keys/{key_id}?pending_days=1"), 200)
    expect_json(client.delete(f"/v1/kms/keys/{kept}?pending_days=3"), 200)
    settings = load_settings(node.deployment.config, environ={})
    seen: list[str] = []

    def destroy_due(now: datetime) -> list[str]:
        return destroy_due_keys(settings, lambda key: seen.append(key.key_id), pytest.fail, now=now)

    assert destroy_due(utc_now() + timedelta(hours=23)) == []  # inside the window
    assert key_of(client, key_id)["state"] == "pending_deletion"
    assert destroy_due(utc_now() + timedelta(days=1, minutes=1)) == [key_id]
    assert seen == [key_id]
    expect_error(client.get(f"/v1/kms/keys/{key_id}"), 404, "record not found")
    assert node.rows("SELECT key_id FROM keys WHERE key_id = :k", k=key_id) == []
    assert node.versions_stored(key_id) == []
    assert key_of(client, kept)["state"] == "pending_deletion"
    assert destroy_due(utc_now() + timedelta(days=1, minutes=1)) == []  # idempotent


def test_two_destroy_due_processes_destroy_each_of_50_due_keys_exactly_once(node: Node) -> None:
    client = node.client
    due = sorted(unique_key_id("race") for _ in range(50))
    for key_id in due:
        create_key(client, key_id=key_id)
    survivor = unique_key_id("race-keeper")
    create_key(client, key_id=survivor)
    schedule_in_the_past(node, due, days_ago=2)
    expect_json(client.delete(f"/v1/kms/keys/{survivor}?pending_days=1"), 200)  # not yet due

    processes = [run_destroy_due(node), run_destroy_due(node)]
    results = [process.communicate(timeout=PROCESS_TIMEOUT_SECONDS) for process in processes]
    for process, (stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, (stdout, stderr)
        assert "Traceback" not in stdout + stderr
    first, second = (destroyed_by(stdout) for stdout, _ in results)
    assert not set(first) & set(second), (first, second)
    assert sorted(first + second) == due
    for (stdout, _), mine in zip(results, (first, second), strict=True):
        assert f"kms: {len(mine)} keys destroyed in " in stdout

    assert not set(due) & {row[0] for row in node.rows("SELECT key_id FROM keys")}
    assert not set(due) & {row[0] for row in node.rows("SELECT key_id FROM key_versions")}
    assert key_of(client, survivor)["state"] == "pending_deletion"

    again = run_destroy_due(node)
    stdout, stderr = again.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    assert again.returncode == 0, stderr
    assert destroyed_by(stdout) == []
    assert "kms: 0 keys destroyed in " in stdout


def test_min_pending_days_makes_the_window_mandatory(strict_node: Node) -> None:
    client = strict_node.client
    key_id = unique_key_id("strict")
    create_key(client, key_id=key_id)
    ciphertext = encrypt(client, key_id, b"kept")
    before = strict_node.rows("SELECT * FROM keys WHERE key_id = :k", k=key_id)
    message = (
        "deletion needs a waiting period of at least 7 days (kms.deletion.min_pending_days): "
        "DELETE with ?pending_days=N"
    )
    expect_error(client.delete(f"/v1/kms/keys/{key_id}"), 409, message)
    expect_error(client.delete(f"/v1/kms/keys/{key_id}?pending_days=6"), 409, message)
    expect_error(client.post(f"/v1/kms/keys/{key_id}/recreate"), 409)
    assert strict_node.rows("SELECT * FROM keys WHERE key_id = :k", k=key_id) == before
    assert strict_node.versions_stored(key_id) == [1]
    assert decrypt(client, key_id, ciphertext) == b"kept"

    scheduled = expect_json(client.delete(f"/v1/kms/keys/{key_id}?pending_days=7"), 200)
    assert scheduled["state"] == "pending_deletion"


def test_the_example_config_names_the_deletion_setting() -> None:
    text_ = (Path(__file__).parents[2] / "config" / "config.prod.yaml").read_text()
    assert "min_pending_days" in text_
    # The prod config names its files in systemd's credentials directory (LoadCredential=).
    settings = load_settings(
        Path(__file__).parents[2] / "config" / "config.prod.yaml",
        environ={"CREDENTIALS_DIRECTORY": "/run/credentials/kms.service"},
    )
    assert settings.deletion_min_pending_days >= 1


def test_environment_override_of_a_grouped_setting(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("database:\n  dsn: x.db\nkms:\n  deletion:\n    min_pending_days: 3\n")
    assert load_settings(config, environ={}).deletion_min_pending_days == 3
    overridden = load_settings(config, environ={"KMS_KMS_DELETION_MIN_PENDING_DAYS": "9"})
    assert overridden.deletion_min_pending_days == 9
    config.write_text("database:\n  dsn: x.db\nkms:\n  deletion:\n    min_pending_days: 31\n")
    with pytest.raises(ConfigurationError, match=r"kms\.deletion\.min_pending_days: must be"):
        load_settings(config, environ={})


def test_destroy_due_names_a_tampered_row_leaves_it_and_exits_1(tmp_path: Path) -> None:
    """The command, on a database whose pending key had its deadline moved behind kms's back."""
    write_config(tmp_path / "config.yaml", directory=tmp_path, port=free_port())
    passphrase_file = tmp_path / "master.key"
    passphrase_file.write_bytes(os.urandom(16).hex().encode())
    passphrase_file.chmod(0o400)
    initialise_database(tmp_path / "kms.db", passphrase_file)
    settings = load_settings(tmp_path / "config.yaml", environ={})
    keyring = open_master_keyring(settings)
    repository = SQLKeyRepository(create_kms_engine(settings.database_url))
    try:
        service = make_service(repository, keyring, KeyMaterialCache(0))
        for key_id in ("honest", "tampered"):
            service.create_key(key_id)
        schedule_service = make_service(
            repository,
            keyring,
            KeyMaterialCache(0),
            clock=lambda: utc_now() - timedelta(days=5),
        )
        schedule_service.delete_key("honest", pending_days=1)
        service.delete_key("tampered", pending_days=30)
    finally:
        repository.close()
        keyring.close()
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE keys SET pending_deletion_at = :at WHERE key_id = 'tampered'"),
            {"at": utc_now() - timedelta(days=1)},
        )
    engine.dispose()

    result = subprocess.run(
        kms_command("destroy-due"),
        env=clean_environment(tmp_path / "config.yaml"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 1, result
    assert destroyed_by(result.stdout) == ["honest"]
    assert "kms: NOT destroyed tampered: key 'tampered': key row: MAC does not match" in (
        result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        left = [row[0] for row in conn.execute(text("SELECT key_id FROM keys"))]
    engine.dispose()
    assert left == ["tampered"]
