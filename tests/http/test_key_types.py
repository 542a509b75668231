"""Issue 10's key types and options over real gunicorn mTLS: MAC keys, RSA-OAEP encryption keys
(with ciphertexts made offline by ``cryptography`` and by the ``openssl`` command), every
signature scheme checked by ``openssl`` over the exported public key, prehashed signing, verify
by version, and random bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    KMSClient,
    b64,
    create_key,
    expect_error,
    expect_json,
    unb64,
    unique_key_id,
)

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.slow
needs_openssl = pytest.mark.needs("openssl")

OAEP_LIMITS = {"RSA-OAEP-2048": 190, "RSA-OAEP-3072": 318, "RSA-OAEP-4096": 446}


def post(client: KMSClient, path: str, status: int = 200, **body: object) -> dict:
    return expect_json(client.post(f"/v1/kms/{path}", json=body), status)


def run_openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *map(str, args)],
        capture_output=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


def export_pem(client: KMSClient, key_id: str, directory: Path, version: int | None = None) -> Path:
    query = "" if version is None else f"?version={version}"
    exported = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key{query}"), 200)
    path = directory / f"{key_id}-v{exported['version']}.pem"
    path.write_text(exported["public_key"], encoding="ascii")
    return path


# -- MAC keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "size"), [(None, 32), ("HMAC-SHA512", 64)])
def test_a_mac_verifies_under_every_version_and_tampering_fails(
    client: KMSClient, algorithm: str | None, size: int
) -> None:
    key_id = unique_key_id("mac")
    fields = {"key_id": key_id, "purpose": "mac"}
    created = create_key(client, **fields, **({"algorithm": algorithm} if algorithm else {}))
    assert created["algorithm"] == (algorithm or "HMAC-SHA256")  # the purpose's default

    message = os.urandom(100)
    macs = {}
    for version in (1, 2, 3):
        if version > 1:
            expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
        made = post(client, "mac", key_id=key_id, message=b64(message))
        assert (made["key_id"], made["version"]) == (key_id, version)
        macs[version] = made["mac"]
        assert len(unb64(made["mac"])) == size
    assert len(set(macs.values())) == 3  # each version has its own key

    for version, mac in macs.items():
        assert post(client, "mac/verify", key_id=key_id, message=b64(message), mac=mac) == {
            "valid": True
        }
        # With a version only that version is tried.
        for named in (1, 2, 3, 4):
            verified = post(
                client, "mac/verify", key_id=key_id, message=b64(message), mac=mac, version=named
            )
            assert verified["valid"] is (named == version), (version, named)
        tampered = unb64(mac)
        tampered = b64(tampered[:-1] + bytes([tampered[-1] ^ 1]))
        for body in (
            {"message": b64(message), "mac": tampered},
            {"message": b64(message + b"x"), "mac": mac},
            {"message": b64(message), "mac": b64(unb64(mac)[:16])},
            {"message": b64(message), "mac": ""},
        ):
            assert post(client, "mac/verify", key_id=key_id, **body) == {
                "valid": False,
                "error": "mac invalid",
            }


def test_mac_endpoints_need_a_mac_key(client: KMSClient) -> None:
    aes = unique_key_id("mac-aes")
    create_key(client, key_id=aes)
    mac_key = unique_key_id("mac-only")
    create_key(client, key_id=mac_key, purpose="mac")
    expect_error(client.post("/v1/kms/mac", json={"key_id": aes, "message": "eA=="}), 400)
    body = {"key_id": aes, "message": "eA==", "mac": "eA=="}
    expect_error(client.post("/v1/kms/mac/verify", json=body), 400)
    # A MAC key neither encrypts nor signs, and has no public key.
    expect_error(client.post("/v1/kms/encrypt", json={"key_id": mac_key, "plaintext": "eA=="}), 400)
    expect_error(client.post("/v1/kms/sign", json={"key_id": mac_key, "message": "eA=="}), 400)
    expect_error(client.get(f"/v1/kms/keys/{mac_key}/public-key"), 400)
    # A MAC algorithm is not an encryption algorithm.
    expect_error(
        client.post("/v1/kms/keys", json={"purpose": "encrypt", "algorithm": "HMAC-SHA256"}), 400
    )
    for bad in ({"version": 0}, {"version": "1"}, {"mac": "not base64"}, {"extra": 1}):
        body = {"key_id": mac_key, "message": "eA==", "mac": "eA==", **bad}
        expect_error(client.post("/v1/kms/mac/verify", json=body), 400)


# -- RSA-OAEP encryption keys ------------------------------------------------------------------


def test_rsa_oaep_public_key_encrypts_offline_and_the_api_decrypts(client: KMSClient) -> None:
    key_id = unique_key_id("oaep")
    created = create_key(client, key_id=key_id, purpose="encrypt", algorithm="RSA-OAEP-2048")
    assert (created["purpose"], created["algorithm"]) == ("encrypt", "RSA-OAEP-2048")
    exported = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key"), 200)
    assert (exported["version"], exported["algorithm"]) == (1, "RSA-OAEP-2048")
    public_key = serialization.load_pem_public_key(exported["public_key"].encode("ascii"))
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048

    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    plaintext = os.urandom(64)
    offline = b64(public_key.encrypt(plaintext, oaep))
    decrypted = post(client, "decrypt", key_id=key_id, ciphertext=offline, version=1)
    assert decrypted == {"plaintext": b64(plaintext), "key_id": key_id, "version": 1}
    # Without the version a raw OAEP ciphertext is not the vN: form: refused, not guessed.
    expect_error(
        client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": offline}),
        400,
        "invalid ciphertext",
    )

    # /encrypt gives the usual vN: form, which /decrypt reads without a version.
    encrypted = post(client, "encrypt", key_id=key_id, plaintext=b64(plaintext))
    assert encrypted["version"] == 1
    assert unb64(encrypted["ciphertext"]).startswith(b"v1:")
    assert len(unb64(encrypted["ciphertext"])) == 3 + 256
    assert post(client, "decrypt", key_id=key_id, ciphertext=encrypted["ciphertext"]) == decrypted

    # After a rotation: the old public key still works with its version, not with another.
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    assert post(client, "decrypt", key_id=key_id, ciphertext=offline, version=1) == decrypted
    for version in (2, 3):
        body = {"key_id": key_id, "ciphertext": offline, "version": version}
        expect_error(client.post("/v1/kms/decrypt", json=body), 400, "invalid ciphertext")
    assert post(client, "encrypt", key_id=key_id, plaintext="eA==")["version"] == 2
    assert post(client, "decrypt", key_id=key_id, ciphertext=encrypted["ciphertext"]) == decrypted
    v2 = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key"), 200)
    assert v2["version"] == 2 and v2["public_key"] != exported["public_key"]

    # Tampered and malformed ciphertexts all get the one decryption error.
    raw = unb64(offline)
    for ciphertext in (b64(raw[:-1] + bytes([raw[-1] ^ 1])), b64(raw[:-1]), "%%%", ""):
        body = {"key_id": key_id, "ciphertext": ciphertext, "version": 1}
        expect_error(client.post("/v1/kms/decrypt", json=body), 400, "invalid ciphertext")


@pytest.mark.parametrize("algorithm", sorted(OAEP_LIMITS))
def test_an_oversized_oaep_payload_is_400_with_the_limit(client: KMSClient, algorithm: str) -> None:
    key_id = unique_key_id("oaep-limit")
    create_key(client, key_id=key_id, purpose="encrypt", algorithm=algorithm)
    limit = OAEP_LIMITS[algorithm]
    fits = post(client, "encrypt", key_id=key_id, plaintext=b64(bytes(limit)))
    assert unb64(
        post(client, "decrypt", key_id=key_id, ciphertext=fits["ciphertext"])["plaintext"]
    ) == bytes(limit)
    message = expect_error(
        client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(bytes(limit + 1))}),
        400,
    )
    assert f"at most {limit} bytes" in message


def test_version_on_decrypt_is_only_for_rsa_oaep_keys(client: KMSClient) -> None:
    key_id = unique_key_id("aes-version")
    create_key(client, key_id=key_id)
    ciphertext = post(client, "encrypt", key_id=key_id, plaintext="eA==")["ciphertext"]
    body = {"key_id": key_id, "ciphertext": ciphertext, "version": 1}
    assert "only for raw RSA-OAEP" in expect_error(client.post("/v1/kms/decrypt", json=body), 400)


@needs_openssl
@pytest.mark.parametrize("algorithm", sorted(OAEP_LIMITS))
def test_an_openssl_oaep_ciphertext_decrypts_through_the_api(
    client: KMSClient, tmp_path: Path, algorithm: str
) -> None:
    key_id = unique_key_id("oaep-openssl")
    create_key(client, key_id=key_id, purpose="encrypt", algorithm=algorithm)
    pem = export_pem(client, key_id, tmp_path)
    plaintext = os.urandom(OAEP_LIMITS[algorithm])
    (tmp_path / "plain").write_bytes(plaintext)
    result = run_openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", pem,
        "-pkeyopt", "rsa_padding_mode:oaep",
        "-pkeyopt", "rsa_oaep_md:sha256",
        "-pkeyopt", "rsa_mgf1_md:sha256",
        "-in", tmp_path / "plain", "-out", tmp_path / "cipher",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ciphertext = b64((tmp_path / "cipher").read_bytes())
    decrypted = post(client, "decrypt", key_id=key_id, ciphertext=ciphertext, version=1)
    assert unb64(decrypted["plaintext"]) == plaintext

    # OAEP with SHA-1 (openssl's default digest) is another scheme and must not decrypt.
    sha1 = run_openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", pem, "-pkeyopt", "rsa_padding_mode:oaep",
        "-in", tmp_path / "plain", "-out", tmp_path / "cipher-sha1",
    )  # fmt: skip
    assert sha1.returncode == 0, sha1.stderr
    body = {"key_id": key_id, "ciphertext": b64((tmp_path / "cipher-sha1").read_bytes())}
    expect_error(
        client.post("/v1/kms/decrypt", json={**body, "version": 1}), 400, "invalid ciphertext"
    )


# -- signature schemes, checked by openssl ----------------------------------------------------

# (key algorithm, signing_algorithm or None for the key's default); every RSA scheme on
# RSA-2048, and each other size and key type at least once.
SIGNING_CASES = [
    *(("RSA-2048", scheme) for scheme in (
        "RSA-PSS-SHA256", "RSA-PSS-SHA384", "RSA-PSS-SHA512",
        "RSA-PKCS1v15-SHA256", "RSA-PKCS1v15-SHA384", "RSA-PKCS1v15-SHA512",
    )),
    ("RSA-2048", None),
    ("RSA-3072", "RSA-PKCS1v15-SHA384"),
    ("RSA-4096", "RSA-PSS-SHA512"),
    ("ECDSA-P256", None),
    ("ECDSA-P384", None),
    ("ECDSA-P384", "ECDSA-SHA384"),
    ("Ed25519", None),
]  # fmt: skip
DIGEST_OF = {
    None: "sha256",  # RSA's default scheme is RSA-PSS-SHA256
    "RSA-PSS-SHA256": "sha256",
    "RSA-PSS-SHA384": "sha384",
    "RSA-PSS-SHA512": "sha512",
    "RSA-PKCS1v15-SHA256": "sha256",
    "RSA-PKCS1v15-SHA384": "sha384",
    "RSA-PKCS1v15-SHA512": "sha512",
    "ECDSA-SHA384": "sha384",
}


def digest_of(algorithm: str, scheme: str | None) -> str:
    if algorithm == "ECDSA-P256":
        return "sha256"
    if algorithm == "ECDSA-P384":
        return "sha384"
    return DIGEST_OF[scheme]


def openssl_verifies(
    algorithm: str, scheme: str | None, pem: Path, data: Path, signature: Path
) -> bool:
    """Check a signature with the openssl command, with only the options each scheme needs."""
    if algorithm == "Ed25519":
        result = run_openssl(
            "pkeyutl", "-verify", "-pubin", "-inkey", pem, "-rawin", "-in", data,
            "-sigfile", signature,
        )  # fmt: skip
        success = b"Signature Verified Successfully"
    else:
        options: list[str] = []
        if algorithm.startswith("RSA-") and "PKCS1v15" not in (scheme or ""):
            # PSS; the salt is as long as the digest, and MGF1 uses the signing digest.
            options = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
        result = run_openssl(
            "dgst", f"-{digest_of(algorithm, scheme)}", *options, "-verify", pem,
            "-signature", signature, data,
        )  # fmt: skip
        success = b"Verified OK"
    assert (result.returncode == 0) == (success in result.stdout), result
    return result.returncode == 0


def sign_body(key_id: str, message: bytes, scheme: str | None, **extra: object) -> dict:
    body: dict[str, object] = {"key_id": key_id, "message": b64(message), **extra}
    if scheme is not None:
        body["signing_algorithm"] = scheme
    return body


@needs_openssl
@pytest.mark.parametrize(("algorithm", "scheme"), SIGNING_CASES)
def test_every_signature_kind_verifies_with_openssl(
    client: KMSClient, tmp_path: Path, algorithm: str, scheme: str | None
) -> None:
    key_id = unique_key_id("scheme")
    create_key(client, key_id=key_id, purpose="sign", algorithm=algorithm)
    pem = export_pem(client, key_id, tmp_path)
    data = os.urandom(300)
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "modified").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    signed = post(client, "sign", **sign_body(key_id, data, scheme))
    (tmp_path / "sig").write_bytes(unb64(signed["signature"]))

    assert openssl_verifies(algorithm, scheme, pem, tmp_path / "data", tmp_path / "sig")
    assert not openssl_verifies(algorithm, scheme, pem, tmp_path / "modified", tmp_path / "sig")
    # kms agrees, with the same scheme named.
    verify = sign_body(key_id, data, scheme, signature=signed["signature"])
    assert post(client, "verify", **verify)["valid"] is True
    altered = {**verify, "message": b64(data + b"!")}
    assert post(client, "verify", **altered)["valid"] is False


def test_each_rsa_scheme_is_checked_as_itself(client: KMSClient) -> None:
    key_id = unique_key_id("scheme-mix")
    create_key(client, key_id=key_id, purpose="sign", algorithm="RSA-2048")
    pkcs1 = post(client, "sign", **sign_body(key_id, b"m", "RSA-PKCS1v15-SHA256"))["signature"]
    as_pkcs1 = sign_body(key_id, b"m", "RSA-PKCS1v15-SHA256", signature=pkcs1)
    assert post(client, "verify", **as_pkcs1)["valid"] is True
    as_default = sign_body(key_id, b"m", None, signature=pkcs1)
    assert post(client, "verify", **as_default)["valid"] is False
    for bad in ("RSA-PSS-MD5", "rsa-pss-sha256", "ECDSA-SHA256"):
        message = expect_error(client.post("/v1/kms/sign", json=sign_body(key_id, b"m", bad)), 400)
        assert "RSA-PKCS1v15-SHA512" in message  # the list of the key's schemes
    ed = unique_key_id("scheme-ed")
    create_key(client, key_id=ed, purpose="sign", algorithm="Ed25519")
    body = sign_body(ed, b"m", "RSA-PSS-SHA256")
    expect_error(client.post("/v1/kms/sign", json=body), 400)


# -- prehashed signing ---------------------------------------------------------------------------

PREHASHED_CASES = [case for case in SIGNING_CASES if case[0] != "Ed25519"]


@needs_openssl
@pytest.mark.parametrize(("algorithm", "scheme"), PREHASHED_CASES)
def test_a_prehashed_signature_verifies_with_openssl_over_the_file(
    client: KMSClient, tmp_path: Path, algorithm: str, scheme: str | None
) -> None:
    key_id = unique_key_id("prehashed")
    create_key(client, key_id=key_id, purpose="sign", algorithm=algorithm)
    pem = export_pem(client, key_id, tmp_path)
    data = os.urandom(1 << 20)  # the file never travels, only its digest
    (tmp_path / "file").write_bytes(data)
    digest_name = digest_of(algorithm, scheme)
    digest = hashlib.new(digest_name, data).digest()
    options = {"prehashed": True, "digest_algorithm": f"SHA-{digest_name[3:]}"}
    signed = post(client, "sign", **sign_body(key_id, digest, scheme, **options))
    (tmp_path / "sig").write_bytes(unb64(signed["signature"]))
    assert openssl_verifies(algorithm, scheme, pem, tmp_path / "file", tmp_path / "sig")

    # kms verifies it both ways: over the digest (prehashed) and over the data itself.
    over_digest = sign_body(key_id, digest, scheme, signature=signed["signature"], **options)
    assert post(client, "verify", **over_digest)["valid"] is True
    over_data = sign_body(key_id, data[:4096], scheme, signature=signed["signature"])
    assert post(client, "verify", **over_data)["valid"] is False  # another message
    small = data[:4096]
    small_digest = hashlib.new(digest_name, small).digest()
    signed_small = post(client, "sign", **sign_body(key_id, small_digest, scheme, **options))
    whole = sign_body(key_id, small, scheme, signature=signed_small["signature"])
    assert post(client, "verify", **whole)["valid"] is True

    # A digest of the wrong length is 400, on sign and on verify.
    for wrong in (digest[:-1], digest + b"\0"):
        message = expect_error(
            client.post("/v1/kms/sign", json=sign_body(key_id, wrong, scheme, **options)), 400
        )
        assert f"is {len(digest)} bytes, got {len(wrong)}" in message
        body = sign_body(key_id, wrong, scheme, signature=signed["signature"], **options)
        expect_error(client.post("/v1/kms/verify", json=body), 400)


def test_prehashed_requests_that_make_no_sense_are_400(client: KMSClient) -> None:
    ed = unique_key_id("prehashed-ed")
    create_key(client, key_id=ed, purpose="sign", algorithm="Ed25519")
    digest = hashlib.sha512(b"data").digest()
    message = expect_error(
        client.post(
            "/v1/kms/sign",
            json={"key_id": ed, "message": b64(digest), "prehashed": True,
                  "digest_algorithm": "SHA-512"},
        ),
        400,
    )  # fmt: skip
    assert "Ed25519 cannot sign or verify a prehashed digest" in message
    body = {"key_id": ed, "message": b64(digest), "signature": b64(bytes(64)), "prehashed": True}
    expect_error(client.post("/v1/kms/verify", json={**body, "digest_algorithm": "SHA-512"}), 400)

    ec = unique_key_id("prehashed-ec")
    create_key(client, key_id=ec, purpose="sign", algorithm="ECDSA-P256")
    digest = b64(hashlib.sha256(b"data").digest())
    for extra, expected in (
        ({"prehashed": True}, "prehashed: true needs digest_algorithm"),
        ({"prehashed": True, "digest_algorithm": "SHA-384"}, "does not match ECDSA-SHA256"),
        ({"digest_algorithm": "SHA-256"}, "digest_algorithm is only for prehashed: true"),
        ({"prehashed": True, "digest_algorithm": "MD5"}, None),
        ({"prehashed": 1, "digest_algorithm": "SHA-256"}, None),
        ({"prehashed": "true", "digest_algorithm": "SHA-256"}, None),
    ):
        body = {"key_id": ec, "message": digest, **extra}
        message = expect_error(client.post("/v1/kms/sign", json=body), 400)
        if expected is not None:
            assert expected in message


# -- verify by version ---------------------------------------------------------------------------


def test_verify_with_a_version_checks_only_that_version(client: KMSClient) -> None:
    key_id = unique_key_id("verify-version")
    create_key(client, key_id=key_id, purpose="sign", algorithm="ECDSA-P256")
    first = post(client, "sign", key_id=key_id, message="eA==")
    assert first["version"] == 1
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    second = post(client, "sign", key_id=key_id, message="eA==")
    assert second["version"] == 2
    for signed in (first, second):
        body = {"key_id": key_id, "message": "eA==", "signature": signed["signature"]}
        assert post(client, "verify", **body) == {"valid": True}
        for version in (1, 2, 3, 2**31 - 1):
            expected = version == signed["version"]
            assert post(client, "verify", **body, version=version)["valid"] is expected
    body = {"key_id": key_id, "message": "eA==", "signature": first["signature"]}
    for version in (0, -1, "1", 1.0, True, 2**31):
        expect_error(client.post("/v1/kms/verify", json={**body, "version": version}), 400)


# -- random bytes ------------------------------------------------------------------------------


def test_random_bytes(client: KMSClient) -> None:
    for count in (1, 32, 1024):
        answer = post(client, "random", bytes=count)
        assert set(answer) == {"random"}
        assert len(unb64(answer["random"])) == count
    assert post(client, "random", bytes=32) != post(client, "random", bytes=32)
    for body in (
        {"bytes": 0},
        {"bytes": 1025},
        {"bytes": -1},
        {"bytes": True},
        {"bytes": 1.5},
        {"bytes": "16"},
        {},
        {"bytes": 16, "key_id": "x"},
    ):
        message = expect_error(client.post("/v1/kms/random", json=body), 400)
        assert "bytes" in message or "key_id" in message
