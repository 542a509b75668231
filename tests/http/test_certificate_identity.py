"""Who a certificate is, attacked over real gunicorn mTLS with certificates from the server's own
CA (docs/configuration.md, The policy file): two subject CNs, names spelled as another type's,
denied serials and fingerprints, and policy files that are repeated or not files at all, at a
reload."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    expect_error,
    expect_json,
    prepare_deployment,
    wait_until,
)
from tests.helpers.identities import (
    IdentityClient,
    identity_client,
    issue_client_certificate,
    running_server,
)

pytestmark = pytest.mark.slow

AMBIGUOUS = "client certificate has more than one subject CN"
POLICY = """\
clients:
  "cn:orchestrator":
    - operations: ["*"]
      keys: ["*"]
  "uri:spiffe://prod/billing":
    - operations: ["encrypt", "keys:read"]
      keys: ["billing-*"]
  "cn:billing-workload":
    - operations: ["keys:read"]
      keys: ["billing-*"]
deny:
  serials: ["{serial}"]
  sha256_fingerprints: ["{fingerprint}"]
"""


def fingerprint_and_serial(cert: Path) -> tuple[str, str]:
    """As ``openssl x509 -noout -fingerprint -sha256`` and ``-serial`` print them."""
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(
        fingerprint[i : i + 2] for i in range(0, 64, 2)
    ), f"{certificate.serial_number:X}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("kms-identity")
    deployment = prepare_deployment(
        directory, authorization={"policy_file": str(directory / "policy.yaml")}
    )
    # Both revoked certificates name the administrator, whose rules allow everything.
    by_serial, _ = issue_client_certificate(deployment, "revoked-serial", "orchestrator")
    by_fingerprint, _ = issue_client_certificate(deployment, "revoked-fp", "orchestrator")
    (directory / "policy.yaml").write_text(
        POLICY.format(
            serial=fingerprint_and_serial(by_serial)[1],
            fingerprint=fingerprint_and_serial(by_fingerprint)[0],
        ),
        encoding="utf-8",
    )
    return deployment


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    with running_server(deployment) as server:
        admin = KMSClient(deployment)
        try:
            create_key(admin, key_id="billing-a")
            create_key(admin, key_id="orders-a")
        finally:
            admin.close()
        yield server


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[type[IdentityClient]]:
    clients: list[IdentityClient] = []

    def make(name: str, *args: object, **kwargs: object) -> IdentityClient:
        client = identity_client(server.deployment, name, *args, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make  # type: ignore[misc]
    for client in clients:
        client.close()


def encrypt(client: KMSClient, key_id: str) -> int:
    return client.post(
        "/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"x")}
    ).status_code


def test_a_certificate_with_two_cns_is_refused_and_logged_with_both(
    server: ServerProcess, connect: type[IdentityClient]
) -> None:
    """``CN=billing-workload, CN=orchestrator`` once got the orchestrator's rights (the last CN
    won) and the log named only the orchestrator."""
    client = connect("two-cns", ("billing-workload", "orchestrator"))
    for response in (
        client.delete("/v1/kms/keys/orders-a"),
        client.get("/v1/kms/keys/billing-a"),
        client.get("/healthz"),
    ):
        expect_error(response, 403, AMBIGUOUS)
    line = server.access_log_line(response.headers["X-Request-Id"])
    assert 'caller="CN=billing-workload,CN=orchestrator" identity="-" ' in line, line
    server.wait_for_log(
        "kms: refused a client certificate with 2 subject CNs (CN=billing-workload,CN=orchestrator)"
    )
    # Nothing was deleted.
    admin = KMSClient(server.deployment)
    try:
        expect_json(admin.get("/v1/kms/keys/orders-a"), 200)
        response = admin.get("/v1/kms/keys/orders-a")
        line = server.access_log_line(response.headers["X-Request-Id"])
        assert 'caller="CN=orchestrator;SAN=DNS:orchestrator" identity="cn:orchestrator" ' in line
    finally:
        admin.close()


def test_a_cn_spelled_like_a_spiffe_uri_does_not_get_the_uris_rights(
    connect: type[IdentityClient],
) -> None:
    assert encrypt(connect("uri-as-cn", "spiffe://prod/billing"), "billing-a") == 403
    # The certificate that really holds the URI keeps its rights.
    assert (
        encrypt(connect("billing", "billing-7", uris=("spiffe://prod/billing",)), "billing-a")
        == 200
    )


@pytest.mark.parametrize(
    ("dns_names", "uris"), [(("orchestrator",), ()), ((), ("orchestrator",))], ids=["dns", "uri"]
)
def test_a_san_equal_to_the_administrators_cn_does_not_get_its_rights(
    server: ServerProcess,
    connect: type[IdentityClient],
    dns_names: tuple[str, ...],
    uris: tuple[str, ...],
) -> None:
    impostor = connect("impostor", "someone", dns_names, uris)
    expect_error(impostor.delete("/v1/kms/keys/orders-a"), 403, "forbidden")
    assert encrypt(impostor, "orders-a") == 403
    response = impostor.get("/v1/kms/keys/orders-a")
    expect_error(response, 403, "forbidden")
    assert 'identity="cn:someone" ' in server.access_log_line(response.headers["X-Request-Id"])


@pytest.mark.parametrize("name", ["revoked-serial", "revoked-fp"])
def test_a_denied_certificate_is_refused_while_its_ca_stays_trusted(
    server: ServerProcess, name: str
) -> None:
    deployment = server.deployment
    denied = IdentityClient(
        deployment, deployment.directory / f"{name}.crt", deployment.directory / f"{name}.key"
    )
    try:
        expect_error(denied.get("/v1/kms/keys/billing-a"), 403, "forbidden")
        expect_error(denied.delete("/v1/kms/keys/orders-a"), 403, "forbidden")
        expect_error(denied.get("/readyz"), 403, "forbidden")
    finally:
        denied.close()
    server.wait_for_log("kms: refused a denied client certificate")
    # Another certificate with the same CN, from the same CA, keeps the administrator's rights.
    admin = KMSClient(deployment)
    try:
        expect_json(admin.get("/v1/kms/keys/orders-a"), 200)
    finally:
        admin.close()


# -- reload ------------------------------------------------------------------------------------

RELOAD_POLICY = """\
clients:
  "cn:orchestrator":
    - operations: ["*"]
      keys: ["*"]
  "cn:reader":
    - operations: ["keys:read"]
      keys: ["billing-*"]
"""
# The second entry for the reader, lower in the file, would once have replaced the first.
DUPLICATE_POLICY = (
    RELOAD_POLICY
    + """\
  "cn:reader":
    - operations: ["*"]
      keys: ["*"]
"""
)
GRANTING_POLICY = RELOAD_POLICY.replace('["keys:read"]', '["keys:read", "encrypt"]')


def test_a_duplicate_entry_or_a_fifo_at_reload_is_refused_and_the_old_policy_stays(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(RELOAD_POLICY, encoding="utf-8")
    deployment = prepare_deployment(tmp_path, authorization={"policy_file": str(policy_file)})
    with running_server(deployment) as server:
        admin = KMSClient(deployment)
        reader = identity_client(deployment, "reader", "reader")
        try:
            create_key(admin, key_id="billing-a")

            def refusals() -> list[str]:
                return [line for line in server.output().splitlines() if "reload refused" in line]

            policy_file.write_text(DUPLICATE_POLICY, encoding="utf-8")
            server.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: len(refusals()) == 1, "the duplicate's refusal", detail=server.output
            )
            assert "line 8: duplicate key 'cn:reader'" in refusals()[0], refusals()
            assert str(policy_file) in refusals()[0]
            wait_until(lambda: server.output().count("Booting worker") >= 4, "new workers")
            expect_error(reader.delete("/v1/kms/keys/billing-a"), 403, "forbidden")
            expect_json(reader.get("/v1/kms/keys/billing-a"), 200)

            # A FIFO with no writer: a plain read would block the master for ever.
            policy_file.unlink()
            os.mkfifo(policy_file)
            server.process.send_signal(signal.SIGHUP)
            wait_until(lambda: len(refusals()) == 2, "the FIFO's refusal", detail=server.output)
            assert "not a regular file (a FIFO)" in refusals()[1], refusals()
            wait_until(lambda: server.output().count("Booting worker") >= 6, "new workers")
            expect_error(reader.delete("/v1/kms/keys/billing-a"), 403, "forbidden")
            assert encrypt(reader, "billing-a") == 403

            # The master still takes a reload: a good file is in force once read.
            policy_file.unlink()
            policy_file.write_text(GRANTING_POLICY, encoding="utf-8")
            server.process.send_signal(signal.SIGHUP)
            wait_until(lambda: encrypt(reader, "billing-a") == 200, "the granting policy")
            expect_error(reader.delete("/v1/kms/keys/billing-a"), 403, "forbidden")
        finally:
            reader.close()
            admin.close()
