"""Per-client authorization over real gunicorn mTLS, with certificates made for each identity."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    expect_error,
    expect_json,
    expect_no_content,
    prepare_deployment,
    run_kms,
    unb64,
)
from tests.helpers.identities import (
    IdentityClient,
    identity_client,
    running_server,
)

pytestmark = pytest.mark.slow

POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  "spiffe://prod/billing":
    - operations: ["encrypt", "decrypt", "keys:read", "mac:verify", "random"]
      keys: ["billing-*"]
  auditor.example.internal:
    - operations: ["keys:read", "metrics"]
      keys: ["*"]
"""
# After the reload: billing may also rotate its keys, and the auditor loses everything.
NEW_POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  "spiffe://prod/billing":
    - operations: ["encrypt", "decrypt", "keys:read", "keys:rotate"]
      keys: ["billing-*"]
"""
WAIT_SECONDS = 30


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("kms-authz")
    (directory / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return prepare_deployment(
        directory, authorization={"policy_file": str(directory / "policy.yaml")}
    )


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    with running_server(deployment) as server:
        yield server


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)  # the dev certificate: CN orchestrator
    yield client
    client.close()


@pytest.fixture(scope="module")
def billing(server: ServerProcess) -> Iterator[IdentityClient]:
    # The policy names this caller by its SAN URI; its CN is in no rule.
    client = identity_client(
        server.deployment, "billing", "billing-service", uris=("spiffe://prod/billing",)
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def auditor(server: ServerProcess) -> Iterator[IdentityClient]:
    # Named by a SAN DNS entry; the certificate has no CN at all.
    client = identity_client(server.deployment, "auditor", None, ("auditor.example.internal",))
    yield client
    client.close()


@pytest.fixture(scope="module")
def stranger(server: ServerProcess) -> Iterator[IdentityClient]:
    client = identity_client(server.deployment, "stranger", "stranger")
    yield client
    client.close()


@pytest.fixture(scope="module")
def keys(admin: KMSClient) -> dict[str, str]:
    create_key(admin, key_id="billing-a")
    create_key(admin, key_id="billing-b")
    create_key(admin, key_id="orders-a")
    create_key(admin, key_id="billing-c")
    create_key(admin, key_id="payroll-a")
    create_key(admin, key_id="billing-signer", purpose="sign")
    create_key(admin, key_id="billing-tokens", purpose="mac")
    return {}


def forbidden(response: requests.Response) -> tuple[int, str, str]:
    expect_error(response, 403, "forbidden")
    return response.status_code, response.headers["Content-Type"], response.text


def test_san_uri_identity_may_use_its_glob_keys(billing: IdentityClient, keys: dict) -> None:
    encrypted = expect_json(
        billing.post("/v1/kms/encrypt", json={"key_id": "billing-a", "plaintext": b64(b"x")}), 200
    )
    decrypted = expect_json(
        billing.post(
            "/v1/kms/decrypt", json={"key_id": "billing-a", "ciphertext": encrypted["ciphertext"]}
        ),
        200,
    )
    assert decrypted["plaintext"] == b64(b"x")
    assert expect_json(billing.get("/v1/kms/keys/billing-b"), 200)["key_id"] == "billing-b"


def test_denied_outside_the_glob_or_the_operations(billing: IdentityClient, keys: dict) -> None:
    forbidden(billing.post("/v1/kms/encrypt", json={"key_id": "orders-a", "plaintext": b64(b"x")}))
    forbidden(billing.get("/v1/kms/keys/orders-a"))
    forbidden(billing.delete("/v1/kms/keys/billing-a"))  # its key, but not its operation
    forbidden(billing.post("/v1/kms/keys/billing-a/rotate"))
    forbidden(billing.post("/v1/kms/keys", json={"key_id": "billing-new"}))
    forbidden(billing.post("/v1/kms/sign", json={"key_id": "billing-signer", "message": "eA=="}))
    forbidden(billing.get("/metrics"))


def test_the_403_for_a_missing_key_equals_the_one_for_an_existing_key(
    billing: IdentityClient, keys: dict
) -> None:
    exists = forbidden(billing.get("/v1/kms/keys/orders-a"))
    missing = forbidden(billing.get("/v1/kms/keys/orders-nothing"))
    assert exists == missing
    body = {"plaintext": b64(b"x")}
    exists = forbidden(billing.post("/v1/kms/encrypt", json={**body, "key_id": "payroll-a"}))
    missing = forbidden(billing.post("/v1/kms/encrypt", json={**body, "key_id": "payroll-zz"}))
    assert exists == missing
    # Inside its glob a missing key is simply not found: the caller may know about those.
    expect_error(billing.get("/v1/kms/keys/billing-zz"), 404)


def test_a_list_shows_only_the_keys_the_caller_may_read(
    billing: IdentityClient, admin: KMSClient, keys: dict
) -> None:
    everything = [key["key_id"] for key in expect_json(admin.get("/v1/kms/keys"), 200)]
    assert {"orders-a", "payroll-a", "billing-a"} <= set(everything)
    listed = [key["key_id"] for key in expect_json(billing.get("/v1/kms/keys"), 200)]
    assert listed == ["billing-a", "billing-b", "billing-c", "billing-signer", "billing-tokens"]
    # Pages of 2 skip the keys in between and still end with every readable key.
    first = expect_json(billing.get("/v1/kms/keys", params={"limit": 2}), 200)
    assert [key["key_id"] for key in first] == ["billing-a", "billing-b"]
    second = expect_json(
        billing.get("/v1/kms/keys", params={"limit": 2, "after": "billing-b"}), 200
    )
    assert [key["key_id"] for key in second] == ["billing-c", "billing-signer"]


def test_an_unlisted_caller_may_do_nothing_but_health_checks(
    stranger: IdentityClient, keys: dict
) -> None:
    forbidden(stranger.get("/v1/kms/keys"))
    forbidden(stranger.get("/v1/kms/keys/billing-a"))
    forbidden(stranger.post("/v1/kms/keys", json={}))
    forbidden(stranger.post("/v1/kms/encrypt", json={"key_id": "orders-a", "plaintext": "eA=="}))
    # A body that names no key at all is refused like any other.
    forbidden(stranger.post("/v1/kms/encrypt", data=b"{not json", headers={"Content-Type": "x"}))
    assert expect_json(stranger.get("/healthz"), 200) == {"status": "ok"}
    assert expect_json(stranger.get("/readyz"), 200) == {
        "status": "ready",
        "master_key_backend": "passphrase",
    }


def test_san_dns_identity_reads_everything_and_changes_nothing(
    auditor: IdentityClient, keys: dict
) -> None:
    listed = {key["key_id"] for key in expect_json(auditor.get("/v1/kms/keys"), 200)}
    assert {"orders-a", "payroll-a", "billing-a"} <= listed
    response = auditor.get("/metrics")
    assert response.status_code == 200 and "kms_http_requests_total" in response.text
    forbidden(auditor.delete("/v1/kms/keys/orders-a"))
    forbidden(auditor.post("/v1/kms/encrypt", json={"key_id": "orders-a", "plaintext": "eA=="}))


def test_random_needs_its_operation_and_no_key(
    billing: IdentityClient, auditor: IdentityClient, stranger: IdentityClient, keys: dict
) -> None:
    answer = expect_json(billing.post("/v1/kms/random", json={"bytes": 16}), 200)
    assert len(unb64(answer["random"])) == 16
    # Its rule names only billing-* keys; a keyless operation needs the operation, nothing more.
    forbidden(auditor.post("/v1/kms/random", json={"bytes": 16}))
    forbidden(stranger.post("/v1/kms/random", json={"bytes": 16}))
    forbidden(stranger.post("/v1/kms/random", data=b"{not json", headers={"Content-Type": "x"}))


def test_mac_verify_is_its_own_operation(
    billing: IdentityClient, admin: KMSClient, keys: dict
) -> None:
    made = expect_json(
        admin.post("/v1/kms/mac", json={"key_id": "billing-tokens", "message": "eA=="}), 200
    )
    body = {"key_id": "billing-tokens", "message": "eA==", "mac": made["mac"]}
    assert expect_json(billing.post("/v1/kms/mac/verify", json=body), 200) == {"valid": True}
    # It may check MACs but not make them.
    forbidden(billing.post("/v1/kms/mac", json={"key_id": "billing-tokens", "message": "eA=="}))
    forbidden(billing.post("/v1/kms/mac/verify", json={**body, "key_id": "orders-tokens"}))


def test_sighup_reloads_the_policy_and_an_invalid_file_is_refused(
    deployment: Deployment,
    server: ServerProcess,
    admin: KMSClient,
    billing: IdentityClient,
    auditor: IdentityClient,
    keys: dict,
) -> None:
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        # Requests that every policy here allows, all through both reloads: none may fail.
        # One kept-alive connection, as a real client would hold.
        nonlocal served
        with admin.new_session() as session:
            while not stop.is_set():
                try:
                    response = admin.get("/v1/kms/keys/billing-a", session=session)
                except Exception as error:  # any failure is the finding
                    failures.append(repr(error))
                    continue
                served += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")

    loader = threading.Thread(target=load)
    loader.start()
    try:
        forbidden(billing.post("/v1/kms/keys/billing-a/rotate"))
        policy_file = deployment.directory / "policy.yaml"
        policy_file.write_text(NEW_POLICY, encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: billing.post("/v1/kms/keys/billing-a/rotate").status_code == 200)
        wait_for(lambda: auditor.get("/v1/kms/keys").status_code == 403)

        policy_file.write_text("clients:\n  orchestrator:\n    - operations: [fly]\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "policy reload refused" in server.output())
        refusals = [line for line in server.output().splitlines() if "reload refused" in line]
        assert len(refusals) == 1 and "policy.yaml" in refusals[0], refusals
        # gunicorn has started new workers meanwhile: they still enforce the second policy.
        wait_for(lambda: server.output().count("Booting worker") >= 6)
        for _ in range(10):
            expect_json(billing.post("/v1/kms/keys/billing-a/rotate"), 200)
            forbidden(auditor.get("/v1/kms/keys"))
            forbidden(billing.delete("/v1/kms/keys/billing-a"))
    finally:
        stop.set()
        loader.join()
        policy_file.write_text(POLICY, encoding="utf-8")
        # The module's other tests share this server, and xdist may run one of them after this:
        # the first policy is put back in force, not only on disk.
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: auditor.get("/v1/kms/keys").status_code == 200)
    assert served > 0
    assert failures == []


def wait_for(condition: Callable[[], object]) -> None:
    """Poll until ``condition()`` holds; a safety limit, not an assertion about time."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


# -- startup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("clients: [1, 2]\n", "clients"),
        ("clients:\n  x:\n    - operations: [encrypt]\n", "keys"),
        ("clients:\n  x:\n    - operations: [encrpyt]\n      keys: ['*']\n", "encrpyt"),
        ("clients: {\n", "not valid YAML"),
        ("- just a list\n", "mapping"),
        # A second entry for a client, lower in the file, once replaced the first silently.
        (
            "clients:\n  cn:x:\n    - operations: [encrypt]\n      keys: ['x']\n"
            "  cn:x:\n    - operations: ['*']\n      keys: ['*']\n",
            "line 5: duplicate key 'cn:x'",
        ),
        (
            "clients:\n  x:\n    - operations: [encrypt]\n      keys: ['x']\n"
            "  dns:x:\n    - operations: ['*']\n      keys: ['*']\n",
            "'x' and 'dns:x' both name 'dns:x'",
        ),
    ],
)
def test_an_invalid_policy_stops_the_server_with_one_line(
    tmp_path: Path, content: str, problem: str
) -> None:
    (tmp_path / "policy.yaml").write_text(content, encoding="utf-8")
    deployment = prepare_deployment(
        tmp_path, authorization={"policy_file": str(tmp_path / "policy.yaml")}
    )
    result = run_kms("serve", config=deployment.config, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kms: authorization.policy_file ") and problem in lines[0]
    assert str(tmp_path / "policy.yaml") in lines[0]
    assert "Booting worker" not in result.stdout + result.stderr


def test_a_fifo_as_the_policy_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    """A FIFO with no writer once hung the start for ever (the read blocked)."""
    os.mkfifo(tmp_path / "policy.yaml")
    deployment = prepare_deployment(
        tmp_path, authorization={"policy_file": str(tmp_path / "policy.yaml")}
    )
    result = run_kms("serve", config=deployment.config, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"kms: authorization.policy_file {tmp_path / 'policy.yaml'}: not a regular file (a FIFO)"
    ]
    assert "Booting worker" not in result.stdout


def test_the_untyped_names_of_an_older_policy_load_with_one_warning(
    server: ServerProcess, admin: KMSClient, billing: IdentityClient
) -> None:
    """This module's policy is in the older, untyped form: it keeps working, and says so."""
    warning = server.wait_for_log("untyped client names are deprecated")
    assert "'orchestrator' (matches cn:orchestrator or dns:orchestrator)" in warning
    assert "'spiffe://prod/billing' (matches uri:spiffe://prod/billing)" in warning
    expect_json(admin.get("/v1/kms/keys", params={"limit": 1}), 200)
    expect_json(billing.get("/v1/kms/keys", params={"limit": 1}), 200)  # by its URI SAN


def test_without_a_policy_file_everyone_may_do_everything_after_one_warning(
    tmp_path: Path,
) -> None:
    deployment = prepare_deployment(tmp_path)
    with running_server(deployment) as server:
        stranger = identity_client(deployment, "stranger", "stranger")
        try:
            create = stranger.post("/v1/kms/keys", json={"key_id": "free-for-all"})
            expect_json(create, 201)
            expect_no_content(stranger.delete("/v1/kms/keys/free-for-all"))
        finally:
            stranger.close()
        warnings = [line for line in server.output().splitlines() if "policy_file" in line]
        assert len(warnings) == 1 and "every client" in warnings[0], warnings
