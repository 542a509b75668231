"""kms.client.KMSClient against the real server: every method, errors, retries, threads, files.

The file helpers need ``POST /v1/kms/datakey``: their live round trip is here, their format,
tamper handling and memory use are tested without a server in tests/unit/test_client_files.py.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kms.client import (
    MAC,
    ConflictError,
    ConnectionFailed,
    ForbiddenError,
    InvalidCiphertextError,
    InvalidRequestError,
    Key,
    KeyExistsError,
    KeyNotFoundError,
    KMSClient,
    KMSClientError,
    PublicKey,
    Signature,
    UnavailableError,
)
from kms.client.errors import error_for
from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    ServerProcess,
    clean_environment,
    free_port,
    kms_command,
    prepare_deployment,
    unique_key_id,
)
from tests.helpers.identities import (
    issue_client_certificate,
    running_server,
)


def client_for(deployment: Deployment, **kwargs: object) -> KMSClient:
    return KMSClient(
        deployment.base_url,
        cert=(deployment.client_cert, deployment.client_key),
        ca=deployment.ca_cert,
        **kwargs,
    )


@pytest.fixture
def kms(server: ServerProcess) -> Iterator[KMSClient]:
    with client_for(server.deployment) as client:
        yield client


def test_key_lifecycle(kms: KMSClient) -> None:
    key_id = unique_key_id("client")
    created = kms.create_key(key_id)
    assert isinstance(created, Key)
    assert (created.key_id, created.purpose, created.algorithm, created.version) == (
        key_id,
        "encrypt",
        "AES-256-GCM",
        1,
    )
    generated = kms.create_key()  # a UUID from the server
    assert len(generated.key_id) == 36
    assert kms.rotate_key(key_id).version == 2
    detail = kms.get_key(key_id)
    assert [v.version for v in detail.key_versions] == [1, 2]
    assert [v.version for v in kms.list_versions(key_id, limit=1, after=1)] == [2]
    listed = {key.key_id for key in kms.iter_keys(page_size=2)}
    assert {key_id, generated.key_id} <= listed
    assert all(key.key_id > key_id for key in kms.list_keys(limit=5, after=key_id))
    recreated = kms.recreate_key(key_id)
    assert recreated.version == 1
    for gone in (key_id, generated.key_id):
        kms.delete_key(gone)
        with pytest.raises(KeyNotFoundError):
            kms.get_key(gone)


def test_encrypt_decrypt_sign_verify(kms: KMSClient) -> None:
    key_id = unique_key_id("client-enc")
    kms.create_key(key_id, algorithm="ChaCha20-Poly1305")
    ciphertext = kms.encrypt(key_id, b"\x00secret\xff")
    assert ciphertext.startswith("djE6")  # base64 of "v1:"
    assert kms.decrypt(key_id, ciphertext) == b"\x00secret\xff"
    detailed = kms.encrypt_detailed(key_id, b"")
    assert (detailed.key_id, detailed.version) == (key_id, 1)
    assert kms.decrypt(key_id, detailed.ciphertext) == b""

    sign_id = unique_key_id("client-sig")
    kms.create_key(sign_id, purpose="sign", algorithm="Ed25519")
    signature = kms.sign(sign_id, b"release")
    assert isinstance(signature, Signature) and len(signature.signature) == 64
    assert kms.verify(sign_id, b"release", signature.signature) is True
    assert kms.verify(sign_id, b"other", signature.signature) is False
    public = kms.public_key(sign_id, version=1)
    assert isinstance(public, PublicKey)
    assert public.public_key.startswith("-----BEGIN PUBLIC KEY-----")


def test_key_states_and_scheduled_deletion(kms: KMSClient) -> None:
    key_id = unique_key_id("client-states")
    kms.create_key(key_id)
    kms.rotate_key(key_id)
    updated = kms.update_key(
        key_id, description="orders", labels={"team": "payments"}, min_decryption_version=2
    )
    assert (updated.description, dict(updated.labels)) == ("orders", {"team": "payments"})
    assert (updated.state, updated.min_decryption_version) == ("enabled", 2)
    listed = kms.list_keys(limit=1000, state="enabled", label=("team", "payments"))
    assert key_id in {key.key_id for key in listed}
    assert kms.disable_key(key_id).state == "disabled"
    with pytest.raises(ConflictError):
        kms.encrypt(key_id, b"x")
    assert kms.enable_key(key_id).state == "enabled"
    assert kms.trim_key(key_id, 2).min_available_version == 2
    scheduled = kms.schedule_key_deletion(key_id, pending_days=7)
    assert scheduled.state == "pending_deletion" and scheduled.pending_deletion_at is not None
    cancelled = kms.cancel_key_deletion(key_id)
    assert (cancelled.state, cancelled.pending_deletion_at) == ("disabled", None)
    kms.delete_key(key_id)


def test_mac_random_and_signing_options(kms: KMSClient) -> None:
    mac_id = unique_key_id("client-mac")
    kms.create_key(mac_id, purpose="mac")
    made = kms.mac(mac_id, b"token")
    assert isinstance(made, MAC) and (made.key_id, made.version, len(made.mac)) == (mac_id, 1, 32)
    assert kms.verify_mac(mac_id, b"token", made.mac) is True
    assert kms.verify_mac(mac_id, b"other", made.mac, version=1) is False
    assert len(kms.random(24)) == 24

    sign_id = unique_key_id("client-ecdsa")
    kms.create_key(sign_id, purpose="sign", algorithm="ECDSA-P256")
    digest = hashlib.sha256(b"release").digest()
    signature = kms.sign(sign_id, digest, prehashed=True, digest_algorithm="SHA-256")
    assert kms.verify(sign_id, b"release", signature.signature, version=1) is True
    for key_id in (mac_id, sign_id):
        kms.delete_key(key_id)


def test_server_errors_become_their_exceptions(kms: KMSClient) -> None:
    key_id = unique_key_id("client-err")
    kms.create_key(key_id)
    with pytest.raises(KeyExistsError) as exists:
        kms.create_key(key_id)
    assert exists.value.status == 409
    with pytest.raises(KeyNotFoundError):
        kms.encrypt(unique_key_id("missing"), b"x")
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt(key_id, "djE6AAAA")
    with pytest.raises(InvalidRequestError) as invalid:
        kms.create_key(purpose="nonsense")
    assert not isinstance(invalid.value, InvalidCiphertextError)
    with pytest.raises(InvalidRequestError):
        kms.sign(key_id, b"an encrypt key cannot sign")
    with pytest.raises(KeyNotFoundError):
        kms.get_key("../../etc")  # quoted into one path segment, never a traversal


def test_health_ready_metrics_and_openapi(kms: KMSClient) -> None:
    assert kms.health() is True
    assert kms.ready() is True
    assert "kms_http_requests_total" in kms.metrics()
    assert kms.openapi()["openapi"] == "3.1.0"


def test_one_client_serves_many_threads(kms: KMSClient) -> None:
    key_id = unique_key_id("client-threads")
    kms.create_key(key_id)

    def work(index: int) -> None:
        for round_ in range(10):
            plaintext = f"{index}-{round_}".encode()
            assert kms.decrypt(key_id, kms.encrypt(key_id, plaintext)) == plaintext

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(8)))


def test_an_unreachable_server_is_a_connection_failure(server: ServerProcess) -> None:
    deployment = server.deployment
    closed = Deployment(directory=deployment.directory, port=free_port())
    with client_for(closed, retries=1) as client, pytest.raises(ConnectionFailed):
        client.health()


def attempts(server: ServerProcess, request_line: str, status: int) -> int:
    """Access log lines of ``request_line`` answered ``status``."""
    needle = f'"{request_line} HTTP/1.1" {status} '
    return sum(needle in line for line in server.output().splitlines())


def wait_until_logged(server: ServerProcess, request_line: str, status: int) -> None:
    deadline = time.monotonic() + 10
    while not attempts(server, request_line, status):
        if time.monotonic() > deadline:
            pytest.fail(f"no access log line for {request_line}:\n{server.output()}")
        time.sleep(0.05)


def test_503_is_retried_for_idempotent_calls_only(server: ServerProcess) -> None:
    # A sealed audit log (no write permission) makes every request 503: a change before anything
    # is done, a read once it has run, without its answer.
    audit_log = server.deployment.audit_log
    mode = stat.S_IMODE(audit_log.stat().st_mode)
    key_id = unique_key_id("client-retry")
    with client_for(server.deployment, retries=2) as client:
        client.create_key(key_id)
        audit_log.chmod(0o444)
        try:
            with pytest.raises(UnavailableError):
                client.get_key(key_id)
            with pytest.raises(UnavailableError):
                client.rotate_key(key_id)
        finally:
            audit_log.chmod(mode)
        # The refused rotation did nothing; this answer's log line also follows every 503's.
        assert client.get_key(key_id).version == 1
    wait_until_logged(server, f"GET /v1/kms/keys/{key_id}", 200)
    assert attempts(server, f"GET /v1/kms/keys/{key_id}", 503) == 1 + 2  # the first, 2 retries
    assert attempts(server, f"POST /v1/kms/keys/{key_id}/rotate", 503) == 1  # never twice


def test_forbidden_is_its_own_exception(tmp_path: Path) -> None:
    deployment = prepare_deployment(
        tmp_path,
        authorization={"policy_file": str(tmp_path / "policy.yaml")},
    )
    (tmp_path / "policy.yaml").write_text(
        "clients:\n"
        '  orchestrator:\n    - operations: ["keys:read"]\n      keys: ["*"]\n'
        '  reader:\n    - operations: ["keys:read"]\n      keys: ["*"]\n',
        encoding="utf-8",
    )
    cert, key = issue_client_certificate(deployment, "reader", "reader")
    with running_server(deployment):
        reader = KMSClient(deployment.base_url, cert=(cert, key), ca=deployment.ca_cert)
        with reader, pytest.raises(ForbiddenError) as denied:
            reader.create_key("not-allowed")
    assert (denied.value.status, denied.value.message) == (403, "forbidden")


def test_error_mapping_covers_every_status() -> None:
    assert type(error_for(429, "rate limit exceeded", "3")).__name__ == "RateLimitedError"
    assert error_for(429, "rate limit exceeded", "3").retry_after == 3
    assert type(error_for(409, "the key changed during ...")).__name__ == "KeyChangedError"
    assert type(error_for(413, "request body too large")).__name__ == "PayloadTooLargeError"
    assert type(error_for(500, "internal error")).__name__ == "ServerError"
    assert type(error_for(502, "bad gateway")).__name__ == "ServerError"


# -- files and the command line -----------------------------------------------------------------


def test_encrypt_file_round_trip_through_the_server(kms: KMSClient, tmp_path: Path) -> None:
    key_id = unique_key_id("client-files")
    kms.create_key(key_id)
    source = tmp_path / "plain.bin"
    source.write_bytes(os.urandom(300 * 1024 + 5))
    kms.encrypt_file(key_id, source, tmp_path / "sealed.kms", context={"purpose": "test"})
    assert kms.decrypt_file(tmp_path / "sealed.kms", tmp_path / "back.bin") == 300 * 1024 + 5
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    sealed = (tmp_path / "sealed.kms").read_bytes()
    (tmp_path / "cut.kms").write_bytes(sealed[: -(16 + 5)])
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_file(tmp_path / "cut.kms", tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


def run_client(
    deployment: Deployment, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    options = [
        f"--url={deployment.base_url}",
        f"--cert={deployment.client_cert}",
        f"--key={deployment.client_key}",
        f"--ca={deployment.ca_cert}",
    ]
    return subprocess.run(
        kms_command("client", *options, *args),
        env=clean_environment(),
        input=stdin,
        capture_output=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


def test_kms_client_encrypt_and_decrypt_stdin_to_stdout(server: ServerProcess) -> None:
    deployment = server.deployment
    key_id = unique_key_id("cli")
    with client_for(deployment) as kms:
        kms.create_key(key_id)
    encrypted = run_client(deployment, "encrypt", key_id, stdin=b"\x00from stdin\n")
    assert encrypted.returncode == 0, encrypted.stderr
    ciphertext = encrypted.stdout.strip()
    decrypted = run_client(deployment, "decrypt", key_id, stdin=ciphertext + b"\n")
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout == b"\x00from stdin\n"
    refused = run_client(deployment, "decrypt", key_id, stdin=b"djE6AAAA")
    assert (refused.returncode, refused.stderr) == (1, b"kms: invalid ciphertext\n")
    nope = unique_key_id("nope")
    missing = run_client(deployment, "encrypt", nope, stdin=b"x")
    assert (missing.returncode, missing.stderr) == (
        1,
        f'kms: record not found: key "{nope}"\n'.encode(),
    )


def test_kms_client_signs_and_verifies_a_file(server: ServerProcess, tmp_path: Path) -> None:
    deployment = server.deployment
    key_id = unique_key_id("cli-sig")
    with client_for(deployment) as kms:
        kms.create_key(key_id, purpose="sign")
    release = tmp_path / "release.tar"
    release.write_bytes(os.urandom(4096))
    signed = run_client(deployment, "sign", key_id, str(release))
    assert signed.returncode == 0, signed.stderr
    signature = signed.stdout.decode().strip()
    valid = run_client(deployment, "verify", key_id, str(release), signature)
    assert valid.returncode == 0, valid.stderr
    release.write_bytes(release.read_bytes() + b"!")
    invalid = run_client(deployment, "verify", key_id, str(release), signature)
    assert invalid.returncode == 1
    assert invalid.stderr.decode() == f"kms: {release}: signature invalid\n"


def test_kms_client_names_a_missing_certificate(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        kms_command("client", f"--cert={tmp_path / 'none.crt'}", "encrypt", "k"),
        env=clean_environment(),
        input=b"x",
        capture_output=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == f"kms: cannot read {tmp_path / 'none.crt'}\n"


def test_kms_client_encrypts_and_decrypts_files(server: ServerProcess, tmp_path: Path) -> None:
    deployment = server.deployment
    key_id = unique_key_id("cli-files")
    with client_for(deployment) as kms:
        kms.create_key(key_id)
    (tmp_path / "in.bin").write_bytes(os.urandom(100_000))
    sealed = run_client(
        deployment, "encrypt-file", key_id, str(tmp_path / "in.bin"), str(tmp_path / "x")
    )
    assert sealed.returncode == 0, sealed.stderr
    opened = run_client(deployment, "decrypt-file", str(tmp_path / "x"), str(tmp_path / "out.bin"))
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "in.bin").read_bytes()


def test_encrypt_file_says_when_the_server_has_no_data_keys(
    server: ServerProcess, tmp_path: Path
) -> None:
    """An older kms, without POST /v1/kms/datakey, answers that path as kms answers any path it
    does not serve. Below a prefix the live server serves no path at all, so it stands in for
    the older one with its own answer; the same call to the real base URL is a missing key."""
    deployment = server.deployment
    (tmp_path / "in.bin").write_bytes(b"x")
    older_url = f"{deployment.base_url}/no-such-prefix"
    certificate = (deployment.client_cert, deployment.client_key)
    with (
        KMSClient(older_url, cert=certificate, ca=deployment.ca_cert) as older,
        pytest.raises(KMSClientError) as refused,
    ):
        older.encrypt_file(unique_key_id("none"), tmp_path / "in.bin", tmp_path / "out.kms")
    assert type(refused.value) is KMSClientError
    assert refused.value.message == (
        f"{older_url} does not serve POST /v1/kms/datakey (an older kms)"
    )
    assert not (tmp_path / "out.kms").exists()
    with client_for(deployment) as kms, pytest.raises(KeyNotFoundError):
        kms.encrypt_file(unique_key_id("none"), tmp_path / "in.bin", tmp_path / "out.kms")
    assert not (tmp_path / "out.kms").exists()
