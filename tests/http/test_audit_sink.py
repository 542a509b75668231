"""Attacks on the audit log's file, over real gunicorn (docs/operations.md, Audit log).

A path that swallows every line (a FIFO, /dev/null) is refused at start and wherever the file is
opened again; a full disk never leaves half a line in the chain; a torn last line found at start
is removed and recorded; a client refused everything cannot grow the file by flooding.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    b64,
    create_key,
    database_unchanged,
    expect_json,
    prepare_deployment,
    run_kms,
    wait_until,
)
from tests.helpers.identities import audit_records, identity_client, running_server
from tests.helpers.machine import fill, mounted_tmpfs
from tests.helpers.raw import read_response_from, tls_connection

pytestmark = pytest.mark.slow

REFUSAL = {"error": "audit log unavailable, request refused"}
POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  stranger:
    - operations: ["encrypt"]
      keys: ["nothing-*"]
"""


def verify(path: Path) -> tuple[int, str]:
    """The chain's links and lines, whole: what these tests are about (the MACs, which need
    the passphrase, are test_audit_chain.py's)."""
    result = run_kms("audit", "verify", "--links-only", str(path))
    return result.returncode, result.stdout + result.stderr


def encrypt(client: KMSClient, key_id: str) -> Any:
    return client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"audited")})


# -- paths that swallow every line -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "/dev/null"])
def test_a_fifo_or_a_device_as_the_audit_path_stops_the_server_at_start(
    tmp_path: Path, kind: str
) -> None:
    # /dev/null through a link in the test's folder, so that nothing is written beside /dev/null.
    path = tmp_path / "swallowing.log"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.symlink_to("/dev/null")
    deployment = prepare_deployment(tmp_path, audit={"path": str(path)})
    result = run_kms("serve", config=deployment.config, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    described = "a FIFO" if kind == "fifo" else "a character device"
    assert result.stderr.splitlines() == [
        f"kms: audit.path: cannot append to {path.resolve()}: not a regular file ({described})"
    ]


def test_a_fifo_put_in_place_of_the_audit_log_refuses_requests(tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path)
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            create_key(client, key_id="kept")
            # Moved away (a rotation), and a FIFO where the next line will be opened.
            moved = tmp_path / "audit.log.1"
            deployment.audit_log.rename(moved)
            os.mkfifo(deployment.audit_log, 0o600)
            with database_unchanged(deployment.database):
                for response in (
                    client.post("/v1/kms/keys", json={"key_id": "not-made"}),
                    client.post("/v1/kms/keys/kept/rotate"),
                    encrypt(client, "kept"),
                ):
                    assert response.status_code == 503, response.text
                    assert response.json() == REFUSAL
            deployment.audit_log.unlink()
            expect_json(encrypt(client, "kept"), 200)
        finally:
            client.close()
    for path in (moved, deployment.audit_log):
        code, output = verify(path)
        assert code == 0, output


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def audit_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "audit-disk", "64k") as directory:
        yield directory


def test_a_full_disk_refuses_with_503_and_leaves_no_torn_line(
    tmp_path: Path, audit_disk: Path
) -> None:
    audit_log = audit_disk / "audit.log"
    deployment = prepare_deployment(tmp_path / "kms", audit={"path": str(audit_log)})
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            create_key(client, key_id="on-a-full-disk")
            filler = fill(audit_disk)
            # What is left of the file's last page takes a few lines, then one is cut short.
            served, refused = [], []
            for _ in range(64):
                response = encrypt(client, "on-a-full-disk")
                if response.status_code == 503:
                    refused.append(response)
                    break
                expect_json(response, 200)
                served.append(response.headers["X-Request-Id"])
            assert refused, "the disk never filled up"
            assert refused[0].json() == REFUSAL
            for response in (encrypt(client, "on-a-full-disk"), client.get("/v1/kms/keys")):
                assert response.status_code == 503, response.text
            assert audit_log.read_bytes().endswith(b"\n")
            code, output = verify(audit_log)
            assert code == 0, output
            # Every encryption that was answered 200 has its one line, whole: the answer left
            # only once it was written.
            audited = {
                record["request_id"]
                for record in map(json.loads, audit_log.read_bytes().splitlines())
                if record["type"] == "response" and record["status"] == 200
            }
            assert set(served) <= audited

            filler.unlink()
            for _ in range(3):
                expect_json(encrypt(client, "on-a-full-disk"), 200)
        finally:
            client.close()
    code, output = verify(audit_log)
    assert code == 0, output
    assert "chain intact" in output


# -- a torn last line at start ------------------------------------------------------------------


def test_a_torn_last_line_is_removed_at_start_logged_and_recorded(tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path)
    with running_server(deployment):
        client = KMSClient(deployment)
        try:
            create_key(client, key_id="before-the-crash")
        finally:
            client.close()
    complete = deployment.audit_log.read_bytes()
    torn = b'{"time":"2026-12-07T10:00:00.000Z","type":"request","request_id":"9c'
    with deployment.audit_log.open("ab") as handle:
        handle.write(torn)  # what a worker killed mid-write leaves
    assert verify(deployment.audit_log)[0] == 1

    with running_server(deployment) as server:
        line = server.wait_for_log("removed an incomplete last line")
        assert str(deployment.audit_log) in line and f"({len(torn)} bytes)" in line
        client = KMSClient(deployment)
        try:
            expect_json(encrypt(client, "before-the-crash"), 200)
        finally:
            client.close()

    assert deployment.audit_log.read_bytes().startswith(complete)
    records = audit_records(deployment)  # without the file's first line
    repair = records[len(complete.splitlines()) - 1]
    assert repair["type"] == "repair"
    assert repair["removed_bytes"] == len(torn)
    assert server.output().count("removed an incomplete last line") == 1
    code, output = verify(deployment.audit_log)
    assert code == 0, output


# -- a client refused everything, flooding ------------------------------------------------------

FLOOD = 600
FLOOD_CONNECTIONS = 4
#: What a refused client sends: no right on the key (403), or throttled (429), no such route
#: (404), an odd method (405).
FLOOD_BODY = b'{"key_id":"billing-a","plaintext":"eA=="}'
FLOOD_REQUESTS = (
    b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(FLOOD_BODY), FLOOD_BODY),
    b"GET /v1/kms/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"ODDMETHOD /v1/kms/keys HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
)


def flood(deployment: Deployment, stranger: Path, stranger_key: Path, count: int) -> list[int]:
    statuses: list[int] = []

    def connection(requests: int) -> None:
        with (
            tls_connection(deployment, stranger, stranger_key) as tls,
            tls.makefile("rb") as stream,
        ):
            for index in range(requests):
                tls.sendall(FLOOD_REQUESTS[index % len(FLOOD_REQUESTS)])
                statuses.append(read_response_from(stream).status)

    threads = [
        threading.Thread(target=connection, args=(count // FLOOD_CONNECTIONS,))
        for _ in range(FLOOD_CONNECTIONS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == count
    return statuses


def expect_text(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.text)


def refusals_in(metrics: str) -> int:
    """Requests answered 403, 404, 405 or 429, as ``kms_http_requests_total`` counts them."""
    return int(
        sum(
            float(value)
            for value in re.findall(
                r'^kms_http_requests_total\{[^}]*status="(?:403|404|405|429)"[^}]*\} (\S+)$',
                metrics,
                re.MULTILINE,
            )
        )
    )


def summaries(deployment: Deployment, identity: str) -> list[dict[str, Any]]:
    return [
        record
        for record in audit_records(deployment)
        if record["type"] == "summary" and record["identity"] == identity
    ]


@pytest.fixture
def flooded(tmp_path: Path) -> Deployment:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return prepare_deployment(
        tmp_path,
        authorization={"policy_file": str(tmp_path / "policy.yaml")},
        rate_limit={"rate": 1, "burst": 100},
        audit={"summary_seconds": 3600},
    )


def test_a_refused_clients_flood_writes_no_line_and_every_refusal_is_counted(
    flooded: Deployment,
) -> None:
    stranger = identity_client(flooded, "stranger", "stranger")
    with running_server(flooded):
        admin = KMSClient(flooded)
        try:
            create_key(admin, key_id="billing-a")
            before = flooded.audit_log.stat().st_size
            statuses = flood(flooded, stranger.cert, stranger.key, FLOOD)
            assert set(statuses) == {403, 404, 405, 429}
            # Not a byte while the summary interval runs, however many requests.
            assert flooded.audit_log.stat().st_size == before
            # The legitimate client is served and audited line by line meanwhile.
            answer = encrypt(admin, "billing-a")
            expect_json(answer, 200)
            request_id = answer.headers["X-Request-Id"]
            mine = [r for r in audit_records(flooded) if r.get("request_id") == request_id]
            assert [record["type"] for record in mine] == ["response"]  # a use: one line
            # The metrics count every refusal too.
            metrics = expect_text(admin.get("/metrics"))
            assert refusals_in(metrics) == FLOOD
        finally:
            admin.close()
            stranger.close()

    # Each worker wrote what it counted when it stopped: one line per identity per worker.
    lines = summaries(flooded, "stranger")
    assert 1 <= len(lines) <= 2, lines
    assert sum(line["requests"] for line in lines) == FLOOD
    by_status: dict[str, int] = {}
    for line in lines:
        for status, count in line["statuses"].items():
            by_status[status] = by_status.get(status, 0) + count
    assert by_status == {str(status): statuses.count(status) for status in set(statuses)}
    summary_bytes = sum(
        len(line) for line in flooded.audit_log.read_bytes().splitlines() if b'"summary"' in line
    )
    assert summary_bytes < 1000
    code, output = verify(flooded.audit_log)
    assert code == 0, output


def test_summaries_are_written_every_interval_while_the_server_runs(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    deployment = prepare_deployment(
        tmp_path,
        authorization={"policy_file": str(tmp_path / "policy.yaml")},
        audit={"summary_seconds": 1},
    )
    stranger = identity_client(deployment, "stranger", "stranger")
    with running_server(deployment):
        try:
            statuses = flood(deployment, stranger.cert, stranger.key, 300)
            assert set(statuses) == {403, 404, 405}

            def counted() -> int:
                return sum(line["requests"] for line in summaries(deployment, "stranger"))

            wait_until(lambda: counted() == 300, "summaries of all 300 refusals")
        finally:
            stranger.close()
    code, output = verify(deployment.audit_log)
    assert code == 0, output
