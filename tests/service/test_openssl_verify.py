"""Signatures made by kms verify outside kms: with ``cryptography`` and with the openssl CLI.

A client holding only the exported PEM must be able to check a signature with stock tools, using
the options those tools document (PSS with a 32-byte salt, DER-encoded ECDSA, raw Ed25519).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from kms.service.keys import KMSService

MESSAGE = b"transfer 100 EUR to account 12345\n\x00\xff binary tail"

OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("openssl"),
]

RSA_PSS_SALT_32 = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
RSA_PSS_AUTO_SALT = ["-sigopt", "rsa_padding_mode:pss"]


def openssl_verify(command: list[str]) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, *command], capture_output=True, text=True, check=False, timeout=60
    )


def dgst_command(directory: Path, options: list[str], message: Path) -> list[str]:
    return [
        "dgst",
        "-sha256",
        *options,
        "-verify",
        str(directory / "pub.pem"),
        "-signature",
        str(directory / "sig"),
        str(message),
    ]


def pkeyutl_command(directory: Path, message: Path) -> list[str]:
    return [
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(directory / "pub.pem"),
        "-rawin",
        "-in",
        str(message),
        "-sigfile",
        str(directory / "sig"),
    ]


def sign_and_export(service: KMSService, algorithm: str, directory: Path) -> tuple[Path, Path]:
    """Create a key, sign MESSAGE, write pub.pem, sig, msg and a modified msg; return both."""
    service.create_key("exported", "sign", algorithm)
    signed = service.sign("exported", MESSAGE)
    pem = service.public_key("exported").public_key
    (directory / "pub.pem").write_text(pem, encoding="ascii")
    (directory / "sig").write_bytes(signed.signature)
    message = directory / "msg"
    message.write_bytes(MESSAGE)
    modified = directory / "modified"
    modified.write_bytes(MESSAGE[:-1] + bytes([MESSAGE[-1] ^ 1]))

    # First the same check in-process, with cryptography and only the exported PEM.
    public_key = serialization.load_pem_public_key(pem.encode("ascii"))
    if isinstance(public_key, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public_key.verify(signed.signature, MESSAGE, pss, hashes.SHA256())
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        assert isinstance(public_key.curve, ec.SECP256R1)
        public_key.verify(signed.signature, MESSAGE, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        public_key.verify(signed.signature, MESSAGE)
    return message, modified


def assert_dgst_verifies(
    directory: Path, options: list[str], message: Path, modified: Path
) -> None:
    good = openssl_verify(dgst_command(directory, options, message))
    assert (good.returncode, good.stdout.strip()) == (0, "Verified OK"), good.stderr
    bad = openssl_verify(dgst_command(directory, options, modified))
    assert bad.returncode != 0
    assert "Verification failure" in bad.stdout + bad.stderr


def test_ecdsa_p256(service: KMSService, tmp_path: Path) -> None:
    message, modified = sign_and_export(service, "ECDSA-P256", tmp_path)
    assert_dgst_verifies(tmp_path, [], message, modified)


@pytest.mark.parametrize("algorithm", ["RSA-2048", "RSA-3072"])
def test_rsa_pss(service: KMSService, tmp_path: Path, algorithm: str) -> None:
    message, modified = sign_and_export(service, algorithm, tmp_path)
    assert_dgst_verifies(tmp_path, RSA_PSS_SALT_32, message, modified)
    # Verifiers that do not know the salt length use openssl's default, "auto".
    assert_dgst_verifies(tmp_path, RSA_PSS_AUTO_SALT, message, modified)


def test_rsa_pss_is_not_pkcs1_v1_5(service: KMSService, tmp_path: Path) -> None:
    # Without the PSS option openssl checks PKCS#1 v1.5: that must fail, or the options above
    # would prove nothing about the padding.
    message, _modified = sign_and_export(service, "RSA-2048", tmp_path)
    result = openssl_verify(dgst_command(tmp_path, [], message))
    assert result.returncode != 0


def test_ed25519(service: KMSService, tmp_path: Path) -> None:
    message, modified = sign_and_export(service, "Ed25519", tmp_path)
    good = openssl_verify(pkeyutl_command(tmp_path, message))
    assert good.returncode == 0, good.stderr
    assert "Signature Verified Successfully" in good.stdout
    bad = openssl_verify(pkeyutl_command(tmp_path, modified))
    assert bad.returncode != 0
    assert "Signature Verification Failure" in bad.stdout + bad.stderr
