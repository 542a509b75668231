"""Two kms nodes (separate gunicorn servers) on one PostgreSQL database.

Each node's workers cache unwrapped keys in memory; with ``kms.cache_staleness_ms: 0`` (no cached
key rows) what one node does must take effect on the other at once: a rotation is used for the
next encrypt, a recreated key never encrypts under its old material, and a deleted key is gone.
Skipped unless pytest is given --postgres-dsn.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest

from tests.helpers.config import write_config
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_error,
    expect_json,
    expect_no_content,
    free_port,
    initialise_database,
    unb64,
    write_dev_certificates,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def nodes(tmp_path: Path, postgres_url: str) -> Iterator[tuple[KMSClient, KMSClient]]:
    shared = tmp_path / "shared"
    write_dev_certificates(shared)
    initialise_database(postgres_url, shared / "master.key")
    with ExitStack() as stack:
        clients = []
        for name in ("node-a", "node-b"):
            directory = tmp_path / name
            shutil.copytree(shared, directory)
            deployment = Deployment(directory=directory, port=free_port())
            write_config(
                deployment.config,
                directory=directory,
                port=deployment.port,
                dsn=postgres_url,
                # "At once" across nodes is the uncached mode; with cached key rows the same
                # holds within kms.cache_staleness_ms (tests/http/test_cache_staleness.py).
                kms={"cache_staleness_ms": 0},
            )
            server = ServerProcess(deployment)
            stack.callback(lambda server=server: _assert_clean_stop(server))
            client = stack.enter_context(closing(KMSClient(deployment)))
            server.wait_until_serving(client)
            clients.append(client)
        yield clients[0], clients[1]


def _assert_clean_stop(server: ServerProcess) -> None:
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def encrypt(client: KMSClient, key_id: str, plaintext: bytes) -> dict:
    response = client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(plaintext)})
    return expect_json(response, 200)


def decrypt(client: KMSClient, key_id: str, ciphertext: str) -> bytes:
    response = client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext})
    return unb64(expect_json(response, 200)["plaintext"])


def test_what_one_node_does_takes_effect_on_the_other_at_once(
    nodes: tuple[KMSClient, KMSClient],
) -> None:
    a, b = nodes
    expect_json(a.post("/v1/kms/keys", json={"key_id": "shared"}), 201)

    # Both nodes use the key, so both hold version 1 in their caches.
    first = encrypt(b, "shared", b"one")
    assert decrypt(a, "shared", first["ciphertext"]) == b"one"

    # A rotation on A is what B encrypts under next.
    assert expect_json(a.post("/v1/kms/keys/shared/rotate"), 200)["version"] == 2
    second = encrypt(b, "shared", b"two")
    assert second["version"] == 2
    assert decrypt(a, "shared", second["ciphertext"]) == b"two"

    # After a recreate on A, B never encrypts under the material it had cached: what B makes
    # now, A can decrypt, and what B made before is gone.
    assert expect_json(a.post("/v1/kms/keys/shared/recreate"), 201)["version"] == 1
    third = encrypt(b, "shared", b"three")
    assert third["version"] == 1
    assert decrypt(a, "shared", third["ciphertext"]) == b"three"
    stale = b.post("/v1/kms/decrypt", json={"key_id": "shared", "ciphertext": first["ciphertext"]})
    expect_error(stale, 400, "invalid ciphertext")

    # A delete on A is a delete on B.
    expect_no_content(a.delete("/v1/kms/keys/shared"))
    gone = b.post("/v1/kms/encrypt", json={"key_id": "shared", "plaintext": b64(b"x")})
    expect_error(gone, 404, 'record not found: key "shared"')
