"""``min_decryption_version`` fences old versions off every decryption (docs/api.md, key states).

A ciphertext of a version below the key's ``min_decryption_version`` is refused, not decrypted,
whichever way it arrives: a single decrypt, an item of a batch, a rewrap, and for RSA-OAEP keys a
raw ciphertext that names its version apart. The fence is checked only after the ciphertext
authenticates: a genuine fenced ciphertext is ``FencedCiphertext``, a forgery naming a fenced
version plain ``InvalidCiphertext``, and both are answered alike (docs/security.md); the
difference is only the operator's (tests/http/test_decryption_refusals.py).
"""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kms.errors import FencedCiphertext, InvalidCiphertext
from kms.service.keys import KMSService

PLAINTEXT = b"older than the fence"
CONTEXT = {"tenant": "a"}


def offline_oaep(public_key_pem: str, plaintext: bytes) -> str:
    """A raw RSA-OAEP ciphertext as a client makes it offline with the exported public key
    (SHA-256, MGF1-SHA-256, no label)."""
    public_key = serialization.load_pem_public_key(public_key_pem.encode("ascii"))
    assert isinstance(public_key, rsa.RSAPublicKey)
    sealed = public_key.encrypt(
        plaintext,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    return base64.b64encode(sealed).decode("ascii")


def fence_version_1(service: KMSService, key_id: str) -> None:
    service.rotate_key(key_id)
    key = service.update_key(key_id, min_decryption_version=2)
    assert (key.version, key.min_decryption_version) == (2, 2)


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305"])
def test_a_ciphertext_below_the_minimum_is_refused(service: KMSService, algorithm: str) -> None:
    service.create_key("k", "encrypt", algorithm)
    old = service.encrypt("k", PLAINTEXT, CONTEXT)
    assert old.version == 1
    # It decrypts until the fence goes up.
    assert service.decrypt("k", old.ciphertext, CONTEXT).plaintext == PLAINTEXT
    fence_version_1(service, "k")
    new = service.encrypt("k", PLAINTEXT, CONTEXT)
    assert new.version == 2

    with pytest.raises(FencedCiphertext):
        service.decrypt("k", old.ciphertext, CONTEXT)
    with pytest.raises(FencedCiphertext):
        service.rewrap("k", old.ciphertext, CONTEXT)
    results = service.decrypt_batch(
        "k",
        [
            {"ciphertext": old.ciphertext, "context": CONTEXT},
            {"ciphertext": new.ciphertext, "context": CONTEXT},
        ],
    )
    assert isinstance(results[0], FencedCiphertext)
    assert not isinstance(results[1], Exception) and results[1].plaintext == PLAINTEXT
    rewrapped = service.rewrap_batch("k", [{"ciphertext": old.ciphertext, "context": CONTEXT}])
    assert isinstance(rewrapped[0], FencedCiphertext)
    # The version above the fence still decrypts.
    assert service.decrypt("k", new.ciphertext, CONTEXT).plaintext == PLAINTEXT

    # A forgery naming the fenced version, and the genuine one under another context, do not
    # authenticate: plain InvalidCiphertext, not FencedCiphertext.
    forged = base64.b64encode(b"v1:" + os.urandom(12 + 32)).decode("ascii")
    for refused in (
        lambda: service.decrypt("k", forged, CONTEXT),
        lambda: service.decrypt("k", old.ciphertext, {"tenant": "b"}),
    ):
        with pytest.raises(InvalidCiphertext) as caught:
            refused()
        assert type(caught.value) is InvalidCiphertext


def test_an_rsa_oaep_ciphertext_below_the_minimum_is_refused(service: KMSService) -> None:
    service.create_key("rsa", "encrypt", "RSA-OAEP-2048")
    old = service.encrypt("rsa", PLAINTEXT)
    assert old.version == 1
    raw = offline_oaep(service.public_key("rsa", 1).public_key, PLAINTEXT)
    assert service.decrypt("rsa", raw, version=1).plaintext == PLAINTEXT
    fence_version_1(service, "rsa")

    with pytest.raises(FencedCiphertext):
        service.decrypt("rsa", old.ciphertext)
    with pytest.raises(FencedCiphertext):
        service.decrypt("rsa", raw, version=1)
    [result] = service.decrypt_batch("rsa", [{"ciphertext": old.ciphertext}])
    assert isinstance(result, FencedCiphertext)
    # Random bytes of the modulus' length, named as version 1, fail OAEP first.
    with pytest.raises(InvalidCiphertext) as caught:
        service.decrypt("rsa", base64.b64encode(os.urandom(256)).decode("ascii"), version=1)
    assert type(caught.value) is InvalidCiphertext
    assert service.decrypt("rsa", service.encrypt("rsa", PLAINTEXT).ciphertext).version == 2
