"""The audit log of a real server: what it records, what it never records, and its chain."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kms.api.operations import CHANGES_NOTHING
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    database_rows,
    database_unchanged,
    expect_json,
    expect_no_content,
    prepare_deployment,
    run_kms,
    wait_until,
)
from tests.helpers.identities import (
    IdentityClient,
    audit_records,
    identity_client,
    running_server,
)

pytestmark = pytest.mark.slow

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  reader:
    - operations: ["keys:read"]
      keys: ["audit-*"]
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("kms-audit")
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return prepare_deployment(
        directory,
        authorization={"policy_file": str(directory / "policy.yaml")},
        audit={"summary_seconds": 1},
    )


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kms-audit-metrics")


@pytest.fixture(scope="module")
def server(deployment: Deployment, metrics_dir: Path) -> Iterator[ServerProcess]:
    # The metrics directory is ours so that the test can see which workers answered.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
        with running_server(deployment) as server:
            yield server


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reader(server: ServerProcess) -> Iterator[IdentityClient]:
    client = identity_client(server.deployment, "reader", "reader")
    yield client
    client.close()


def verify(path: Path, deployment: Deployment | None = None) -> tuple[int, str]:
    """``kms audit verify`` with the deployment's passphrase (the MACs are checked)."""
    config = None if deployment is None else deployment.config
    result = run_kms("audit", "verify", str(path), config=config)
    return result.returncode, result.stdout + result.stderr


def test_a_scripted_session_is_audited_line_by_line_and_holds_no_secret(
    deployment: Deployment, admin: KMSClient, reader: IdentityClient
) -> None:
    expected: list[tuple[str, str, str | None, int, int | None]] = []
    #: Refused before any work: no lines of their own, counted in a summary line instead.
    summarised: list[tuple[str, str, str, int]] = []
    secrets: list[str] = []

    def call(
        client: KMSClient,
        method: str,
        path: str,
        identity: str,
        operation: str | None,
        key_id: str | None,
        status: int,
        version: int | None = None,
        **kwargs: Any,
    ) -> Any:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        if operation is None or status == 403:
            summarised.append(
                (response.headers["X-Request-Id"], identity, operation or "-", status)
            )
        else:
            expected.append(
                (response.headers["X-Request-Id"], identity, operation, key_id, status, version)
            )
        return response.json() if response.content else None

    plaintext = b"the quarterly numbers, unpublished"
    secrets += [b64(plaintext), plaintext.decode()]
    call(
        admin,
        "POST",
        "/v1/kms/keys",
        "orchestrator",
        "keys:create",
        "audit-enc",
        201,
        1,
        json={"key_id": "audit-enc"},
    )
    encrypted = call(
        admin,
        "POST",
        "/v1/kms/encrypt",
        "orchestrator",
        "encrypt",
        "audit-enc",
        200,
        1,
        json={"key_id": "audit-enc", "plaintext": b64(plaintext)},
    )
    secrets.append(encrypted["ciphertext"])
    call(
        admin,
        "POST",
        "/v1/kms/decrypt",
        "orchestrator",
        "decrypt",
        "audit-enc",
        200,
        1,
        json={"key_id": "audit-enc", "ciphertext": encrypted["ciphertext"]},
    )
    call(
        admin,
        "POST",
        "/v1/kms/keys/audit-enc/rotate",
        "orchestrator",
        "keys:rotate",
        "audit-enc",
        200,
        2,
    )
    call(
        admin,
        "POST",
        "/v1/kms/keys",
        "orchestrator",
        "keys:create",
        "audit-sig",
        201,
        1,
        json={"key_id": "audit-sig", "purpose": "sign", "algorithm": "Ed25519"},
    )
    message = b64(b"release 1.2.3 manifest")
    secrets.append(message)
    signed = call(
        admin,
        "POST",
        "/v1/kms/sign",
        "orchestrator",
        "sign",
        "audit-sig",
        200,
        1,
        json={"key_id": "audit-sig", "message": message},
    )
    secrets.append(signed["signature"])
    call(
        admin,
        "POST",
        "/v1/kms/verify",
        "orchestrator",
        "verify",
        "audit-sig",
        200,
        None,
        json={"key_id": "audit-sig", "message": message, "signature": signed["signature"]},
    )
    public = call(
        admin,
        "GET",
        "/v1/kms/keys/audit-sig/public-key",
        "orchestrator",
        "keys:read",
        "audit-sig",
        200,
        1,
    )
    secrets.append(public["public_key"].splitlines()[1])
    call(reader, "GET", "/v1/kms/keys/audit-enc", "reader", "keys:read", "audit-enc", 200, 2)
    call(reader, "DELETE", "/v1/kms/keys/audit-enc", "reader", "keys:delete", "audit-enc", 403)
    call(reader, "GET", "/v1/kms/keys", "reader", "keys:read", None, 200)
    call(
        admin,
        "POST",
        "/v1/kms/encrypt",
        "orchestrator",
        "encrypt",
        None,
        400,
        data=b"{broken",
        headers={"Content-Type": "application/json"},
    )
    call(
        admin,
        "GET",
        "/v1/kms/keys/audit-missing",
        "orchestrator",
        "keys:read",
        "audit-missing",
        404,
    )
    call(admin, "GET", "/v1/kms/no-such-endpoint", "orchestrator", None, None, 404)
    call(
        admin,
        "POST",
        "/v1/kms/keys/audit-enc/recreate",
        "orchestrator",
        "keys:recreate",
        "audit-enc",
        201,
        1,
    )
    call(admin, "DELETE", "/v1/kms/keys/audit-enc", "orchestrator", "keys:delete", "audit-enc", 204)

    records = audit_records(deployment)
    for request_id, identity, operation, key_id, status, version in expected:
        mine = [record for record in records if record["request_id"] == request_id]
        # A change: its arrival line, then its answer's; a use or a read: the answer's only.
        if operation in CHANGES_NOTHING:
            assert [record["type"] for record in mine] == ["response"], mine
            arrival, answer = None, mine[0]
        else:
            assert [record["type"] for record in mine] == ["request", "response"], mine
            arrival, answer = mine
        for record in mine:
            assert (record["identity"], record["operation"], record["key_id"]) == (
                identity,
                operation,
                key_id,
            ), record
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
            assert re.fullmatch(r"[0-9a-f]{64}", record["prev_hash"])
        assert arrival is None or "status" not in arrival
        assert answer["status"] == status
        assert answer["key_version"] == version, answer
        assert isinstance(answer["duration_ms"], float | int) and answer["duration_ms"] >= 0

    assert len(summarised) == 2
    for request_id, identity, operation, status in summarised:
        assert [record for record in records if record.get("request_id") == request_id] == []

        def summarised_here(identity: str = identity, operation: str = operation) -> bool:
            return any(
                record["type"] == "summary"
                and record["identity"] == identity
                and operation in record["operations"]
                for record in audit_records(deployment)
            )

        wait_until(summarised_here, f"a summary line for {identity}")
        (summary,) = [
            record
            for record in audit_records(deployment)
            if record["type"] == "summary" and record["identity"] == identity
        ]
        assert summary["operations"] == {operation: 1}
        assert summary["statuses"] == {str(status): 1}
        assert summary["requests"] == 1

    text = deployment.audit_log.read_text("utf-8")
    for secret in secrets:
        assert secret not in text
    # Nor the key bytes: every wrapped key as the database holds it, and its base64.
    for row in database_rows(deployment.database)["key_versions"]:
        assert b64(row[2]) not in text and row[2].hex() not in text
    assert verify(deployment.audit_log, deployment)[0] == 0


def test_the_chain_holds_under_concurrent_load_of_two_workers_and_names_tampering(
    deployment: Deployment,
    server: ServerProcess,
    admin: KMSClient,
    metrics_dir: Path,
    tmp_path: Path,
) -> None:
    expect_json(admin.post("/v1/kms/keys", json={"key_id": "audit-load"}), 201)
    errors: list[str] = []

    def work() -> None:
        # A fresh connection per request, so that both workers take turns.
        for index in range(25):
            with admin.new_session() as session:
                body = {"key_id": "audit-load", "plaintext": b64(b"%d" % index)}
                response = admin.post("/v1/kms/encrypt", json=body, session=session)
                if response.status_code != 200:
                    errors.append(response.text)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    workers = {path.stem for path in metrics_dir.glob("counter_*.db")} - {
        f"counter_{server.process.pid}"
    }
    assert len(workers) >= 2, workers  # both workers wrote to the one chain

    lines = deployment.audit_log.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 200  # one line per encryption, a use of a key
    code, output = verify(deployment.audit_log, deployment)
    assert code == 0, output
    assert f"{len(lines)} lines" in output

    def tampered(name: str, changed: list[bytes]) -> tuple[int, str]:
        path = tmp_path / name
        path.write_bytes(b"".join(changed))
        return verify(path, deployment)

    k = len(lines) // 2  # 1-based number of the line that is tampered with
    record = json.loads(lines[k - 1])
    record["status" if "status" in record else "key_id"] = "edited"
    edited = [
        *lines[: k - 1],
        (json.dumps(record, separators=(",", ":")) + "\n").encode(),
        *lines[k:],
    ]
    code, output = tampered("edited.log", edited)
    assert code == 1 and f"edited.log:{k}: chain broken: its MAC" in output, output

    code, output = tampered("deleted.log", [*lines[: k - 1], *lines[k:]])
    assert code == 1 and f"deleted.log:{k}: chain broken: its prev_hash" in output, output

    swapped = [*lines[: k - 1], lines[k], lines[k - 1], *lines[k + 1 :]]
    code, output = tampered("swapped.log", swapped)
    assert code == 1 and f"swapped.log:{k}: chain broken" in output, output


def test_an_unwritable_audit_log_refuses_requests_and_changes_nothing(
    deployment: Deployment, admin: KMSClient
) -> None:
    expect_json(admin.post("/v1/kms/keys", json={"key_id": "audit-keep"}), 201)
    before = deployment.audit_log.read_bytes()
    mode = stat.S_IMODE(os.stat(deployment.audit_log).st_mode)
    os.chmod(deployment.audit_log, 0o444)
    try:
        with database_unchanged(deployment.database):
            for response in (
                admin.post("/v1/kms/keys", json={"key_id": "audit-new"}),
                admin.post("/v1/kms/keys/audit-keep/rotate"),
                admin.post("/v1/kms/keys/audit-keep/recreate"),
                admin.delete("/v1/kms/keys/audit-keep"),
            ):
                assert response.status_code == 503, response.text
                assert response.json() == {"error": "audit log unavailable, request refused"}
        # A use of a key is refused once it has run, when its one line fails: no ciphertext
        # leaves (its version's use counter may have taken a block: bookkeeping, security.md).
        response = admin.post("/v1/kms/encrypt", json={"key_id": "audit-keep", "plaintext": "eA=="})
        assert response.status_code == 503, response.text
        assert response.json() == {"error": "audit log unavailable, request refused"}
    finally:
        os.chmod(deployment.audit_log, mode)
    assert deployment.audit_log.read_bytes() == before
    expect_no_content(admin.delete("/v1/kms/keys/audit-keep"))
    code, output = verify(deployment.audit_log, deployment)
    assert code == 0, output


def test_an_audit_log_that_cannot_be_written_stops_the_server_at_start(tmp_path: Path) -> None:
    deployment = prepare_deployment(tmp_path)
    deployment.audit_log.mkdir()  # a directory where the file should be
    result = run_kms("serve", config=deployment.config, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"kms: audit.path: cannot append to {deployment.audit_log}: Is a directory"
    ]


def test_verify_reports_a_missing_file_in_one_line(tmp_path: Path) -> None:
    code, output = verify(tmp_path / "absent.log")
    assert code == 1
    assert output.strip().splitlines() == [
        f"kms: cannot read {tmp_path / 'absent.log'}: No such file or directory"
    ]
