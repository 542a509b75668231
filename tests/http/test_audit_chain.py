"""The keyed audit chain of a real server against someone who can write its audit files but has
no master key: a line deleted or edited and every hash after it recomputed (with plain SHA-256,
or under a key of their own), and a whole rotated file removed. ``kms audit verify`` runs as an
operator runs it, with the deployment's config and passphrase file.

docs/security.md, Audit log; docs/operations.md, Audit log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.audit import AuditKey
from tests.helpers.audit import rechain
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_json,
    prepare_deployment,
    run_kms,
)
from tests.helpers.identities import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return prepare_deployment(tmp_path_factory.mktemp("kms-audit-chain"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    with running_server(deployment) as server:
        yield server


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)
    yield client
    client.close()


def verify(deployment: Deployment, *paths: Path, links_only: bool = False) -> tuple[int, str]:
    options = ["--links-only"] if links_only else []
    result = run_kms("audit", "verify", *options, *map(str, paths), config=deployment.config)
    return result.returncode, result.stdout + result.stderr


def requests(admin: KMSClient, key_id: str, count: int) -> None:
    for index in range(count):
        body = {"key_id": key_id, "plaintext": b64(b"%d" % index)}
        expect_json(admin.post("/v1/kms/encrypt", json=body), 200)


def test_a_line_deleted_or_edited_and_the_chain_recomputed_is_named(
    deployment: Deployment, admin: KMSClient, tmp_path: Path
) -> None:
    expect_json(admin.post("/v1/kms/keys", json={"key_id": "chain-a"}), 201)
    requests(admin, "chain-a", 5)
    lines = deployment.audit_log.read_bytes().splitlines(keepends=True)
    code, output = verify(deployment, deployment.audit_log)
    assert code == 0, output
    assert f"{len(lines)} lines" in output and "MACs checked" in output, output

    k = len(lines) // 2  # 1-based number of the line the attacker deletes or edits
    wrong_key = AuditKey(b"attacker" * 4)
    edited = [*lines]
    record = json.loads(edited[k - 1])
    record["status" if "status" in record else "key_id"] = "edited"
    edited[k - 1] = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    deleted = [*lines[: k - 1], *lines[k:]]
    # The other ways (stripped to the unkeyed format, resealed under a key of their own, a
    # deletion resealed) are in tests/unit/test_audit_chain.py: each verify here derives the
    # master key at the deployment's 600,000 iterations.
    attacks = {
        "deleted, SHA-256 recomputed": rechain(deleted, k, seal="keep"),
        "edited, resealed with the real kid": rechain(edited, k, seal="forge", key=wrong_key),
        "last line edited": [*lines[:-1], lines[-1].replace(b'"status":200', b'"status":403')],
    }
    for name, changed in attacks.items():
        path = tmp_path / (name.replace(" ", "-").replace(",", "") + ".log")
        path.write_bytes(b"".join(changed))
        code, output = verify(deployment, path)
        line = len(lines) if name == "last line edited" else k
        assert code == 1, f"{name}: {output}"
        assert f"kms: {path}:{line}: chain broken: " in output, f"{name}: {output}"


def test_a_whole_rotated_file_removed_is_named(
    deployment: Deployment, admin: KMSClient, tmp_path: Path
) -> None:
    """The operator rotates by moving the file away; the server's next line starts a new file
    that names the one before. A file removed from the middle, or one cut short, is named."""
    expect_json(admin.post("/v1/kms/keys", json={"key_id": "chain-b"}), 201)
    files = []
    for number in range(1, 4):
        requests(admin, "chain-b", 2)
        files.append(deployment.audit_log.rename(tmp_path / f"audit.log.{number}"))
    requests(admin, "chain-b", 2)
    files.append(deployment.audit_log)

    code, output = verify(deployment, *files)
    assert code == 0, output
    assert f"kms: {files[3]}: " in output and "(file 4, after file 3)" in output, output

    code, output = verify(deployment, files[0], files[1], files[3])
    assert code == 1, output
    assert (
        f"kms: {files[3]}:1: chain broken: it follows file 3, but {files[1]} is file 2: "
        "1 file missing between them"
    ) in output, output

    cut = tmp_path / "cut-short.log"
    cut.write_bytes(b"".join(files[2].read_bytes().splitlines(keepends=True)[:-2]))
    code, output = verify(deployment, files[0], files[1], cut, files[3])
    assert code == 1, output
    assert f"kms: {files[3]}:1: chain broken: it does not continue {cut}" in output, output


def test_links_only_needs_no_passphrase_and_says_what_it_does_not_prove(
    deployment: Deployment, admin: KMSClient, tmp_path: Path
) -> None:
    # A key of its own: xdist may run this test without the module's first one.
    expect_json(admin.post("/v1/kms/keys", json={"key_id": "chain-links"}), 201)
    requests(admin, "chain-links", 1)
    forged = tmp_path / "forged.log"
    lines = deployment.audit_log.read_bytes().splitlines(keepends=True)
    forged.write_bytes(b"".join(rechain(lines, 1, seal="reseal", key=AuditKey(bytes(32)))))
    deployment.passphrase_file.rename(tmp_path / "elsewhere")
    try:
        code, output = verify(deployment, forged, links_only=True)
        assert code == 0, output
        assert "this does not prove that kms wrote these lines" in output, output
        code, output = verify(deployment, forged)
        assert code == 1, output  # no passphrase: verify refuses rather than guess
        assert "chain intact" not in output, output
    finally:
        (tmp_path / "elsewhere").rename(deployment.passphrase_file)
