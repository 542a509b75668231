"""ECDSA signatures from /sign are low-s, checked with the ``openssl`` command (docs/api.md).

ECDSA is malleable: when ``(r, s)`` verifies, so does ``(r, n - s)``. kms signs only with
``s <= n/2``, and ``require_low_s`` on /verify refuses the other form, which openssl and kms's
default verification accept. Everything about the signatures is read with openssl: ``r`` and
``s`` from ``asn1parse``, the curve's order from ``ecparam``, the verdicts from ``dgst``; only the
high-s twin is built here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("openssl"),
]

#: kms's algorithm, openssl's curve name, the digest kms signs with.
CURVES = [("ECDSA-P256", "prime256v1", "sha256"), ("ECDSA-P384", "secp384r1", "sha384")]
#: Signatures per curve: all low-s by chance has probability 2**-SIGNATURES.
SIGNATURES = 24


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *args],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )


def curve_order(curve: str) -> int:
    """The order n of ``curve``, as openssl prints its explicit parameters."""
    text = openssl("ecparam", "-name", curve, "-param_enc", "explicit", "-text", "-noout").stdout
    match = re.search(r"^Order:\s*\n((?:\s+[0-9a-f:]+\n)+)", text, re.MULTILINE)
    assert match is not None, text
    return int(re.sub(r"[\s:]", "", match.group(1)), 16)


def r_and_s(signature: Path) -> tuple[int, int]:
    """The two INTEGERs of a DER ECDSA signature, as openssl's ``asn1parse`` reads them."""
    text = openssl("asn1parse", "-inform", "DER", "-in", str(signature)).stdout
    integers = re.findall(r"INTEGER\s+:([0-9A-F]+)", text)
    assert len(integers) == 2, text
    return int(integers[0], 16), int(integers[1], 16)


def openssl_verifies(digest: str, public_key: Path, message: Path, signature: Path) -> bool:
    result = openssl(
        "dgst", f"-{digest}", "-verify", str(public_key), "-signature", str(signature), str(message)
    )
    assert (result.returncode == 0) == ("Verified OK" in result.stdout), result
    return result.returncode == 0


def kms_verifies(
    client: KMSClient, key_id: str, message: bytes, signature: bytes, **options: bool
) -> bool:
    body = {"key_id": key_id, "message": b64(message), "signature": b64(signature), **options}
    return expect_json(client.post("/v1/kms/verify", json=body), 200)["valid"] is True


@pytest.mark.parametrize(("algorithm", "curve", "digest"), CURVES, ids=[c[0] for c in CURVES])
def test_ecdsa_signatures_are_low_s_and_the_high_s_twin_can_be_refused(
    client: KMSClient, tmp_path: Path, algorithm: str, curve: str, digest: str
) -> None:
    key_id = unique_key_id("low-s")
    create_key(client, key_id=key_id, purpose="sign", algorithm=algorithm)
    public_key = tmp_path / "public.pem"
    exported = expect_json(client.get(f"/v1/kms/keys/{key_id}/public-key"), 200)
    public_key.write_text(exported["public_key"], encoding="ascii")
    order = curve_order(curve)
    messages = [os.urandom(100) for _ in range(SIGNATURES)]
    signed = client.post(
        "/v1/kms/sign",
        json={"key_id": key_id, "batch": [{"message": b64(message)} for message in messages]},
    )
    signatures = [unb64(result["signature"]) for result in expect_json(signed, 200)["results"]]

    highs = []
    for index, (message, signature) in enumerate(zip(messages, signatures, strict=True)):
        message_file, signature_file = tmp_path / f"m{index}", tmp_path / f"s{index}"
        message_file.write_bytes(message)
        signature_file.write_bytes(signature)
        r, s = r_and_s(signature_file)
        assert 0 < s <= order // 2, f"signature {index} is high-s"
        assert openssl_verifies(digest, public_key, message_file, signature_file)
        twin = tmp_path / f"t{index}"
        twin.write_bytes(encode_dss_signature(r, order - s))
        highs.append(twin)

    # The twin is a valid signature to openssl, and to kms unless require_low_s.
    message_file = tmp_path / "m0"
    assert openssl_verifies(digest, public_key, message_file, highs[0])
    twin = highs[0].read_bytes()
    assert kms_verifies(client, key_id, messages[0], twin)
    assert not kms_verifies(client, key_id, messages[0], twin, require_low_s=True)
    assert kms_verifies(client, key_id, messages[0], signatures[0], require_low_s=True)
    # The same in a batch, item by item.
    batch = [
        {"message": b64(messages[1]), "signature": b64(highs[1].read_bytes())},
        {
            "message": b64(messages[1]),
            "signature": b64(highs[1].read_bytes()),
            "require_low_s": True,
        },
        {"message": b64(messages[1]), "signature": b64(signatures[1]), "require_low_s": True},
    ]
    verified = client.post("/v1/kms/verify", json={"key_id": key_id, "batch": batch})
    assert [item["valid"] for item in expect_json(verified, 200)["results"]] == [True, False, True]


def test_require_low_s_is_only_for_ecdsa_keys(client: KMSClient) -> None:
    key_id = unique_key_id("low-s-ed25519")
    create_key(client, key_id=key_id, purpose="sign", algorithm="Ed25519")
    message = b"m"
    signed = client.post("/v1/kms/sign", json={"key_id": key_id, "message": b64(message)})
    signature = expect_json(signed, 200)["signature"]
    body = {"key_id": key_id, "message": b64(message), "signature": signature}
    expect_error(
        client.post("/v1/kms/verify", json={**body, "require_low_s": True}),
        400,
        "require_low_s is only for ECDSA keys, not Ed25519",
    )
    expect_error(client.post("/v1/kms/verify", json={**body, "require_low_s": "yes"}), 400)
