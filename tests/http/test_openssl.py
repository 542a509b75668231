"""Signatures from /sign verify with the ``openssl`` command, using the PEM from /public-key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    KMSClient,
    b64,
    create_key,
    expect_json,
    expect_no_content,
    unb64,
    unique_key_id,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("openssl"),
]


def openssl_verify(algorithm: str, public_key: Path, message: Path, signature: Path) -> bool:
    if algorithm == "Ed25519":
        command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public_key)]
        command += ["-rawin", "-in", str(message), "-sigfile", str(signature)]
        success = "Signature Verified Successfully"
    else:
        # RSA-PSS with the digest-length salt kms uses needs no salt option: openssl's
        # verifier detects the salt length.
        padding = ["-sigopt", "rsa_padding_mode:pss"] if algorithm.startswith("RSA-") else []
        command = ["openssl", "dgst", "-sha256", *padding, "-verify", str(public_key)]
        command += ["-signature", str(signature), str(message)]
        success = "Verified OK"
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS, check=False
    )
    assert (result.returncode == 0) == (success in result.stdout), result
    return result.returncode == 0


@pytest.mark.parametrize("algorithm", ["ECDSA-P256", "Ed25519", "RSA-2048"])
def test_signature_verifies_with_openssl(client: KMSClient, tmp_path: Path, algorithm: str) -> None:
    key_id = unique_key_id("openssl")
    create_key(client, key_id=key_id, purpose="sign", algorithm=algorithm)
    message = os.urandom(200)
    signed = client.post("/v1/kms/sign", json={"key_id": key_id, "message": b64(message)})
    signature = unb64(expect_json(signed, 200)["signature"])
    exported = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key"), 200)

    public_key = tmp_path / "public.pem"
    public_key.write_text(exported["public_key"], encoding="ascii")
    signature_file = tmp_path / "message.sig"
    signature_file.write_bytes(signature)
    message_file = tmp_path / "message"
    message_file.write_bytes(message)
    modified_file = tmp_path / "modified"
    modified_file.write_bytes(message[:-1] + bytes([message[-1] ^ 0x01]))

    assert openssl_verify(algorithm, public_key, message_file, signature_file)
    assert not openssl_verify(algorithm, public_key, modified_file, signature_file)

    # And the other way round: kms agrees that the signature is good only for the message.
    for payload, valid in ((message, True), (modified_file.read_bytes(), False)):
        verified = client.post(
            "/v1/kms/verify",
            json={"key_id": key_id, "message": b64(payload), "signature": b64(signature)},
        )
        assert expect_json(verified, 200)["valid"] is valid

    expect_no_content(client.delete(f"/v1/kms/keys/{key_id}"))
