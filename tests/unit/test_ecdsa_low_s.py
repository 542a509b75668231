"""ECDSA signatures are made low-s, and ``require_low_s`` refuses their high-s twin.

The curve orders kms uses are checked by the twin itself: ``(r, n - s)`` verifies with
``cryptography`` only if ``n`` is the curve's order. tests/http/test_ecdsa_low_s.py checks the
same with the openssl command, over a real server.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from kms.crypto.algorithms import CURVE_ORDERS, SIGNING_ALGORITHMS, low_s
from kms.errors import InvalidRequest, InvalidSignature

ECDSA = ["ECDSA-P256", "ECDSA-P384"]
SIGNATURES = 64


@pytest.mark.parametrize("name", ECDSA)
def test_every_signature_is_low_s_and_its_twin_verifies_only_when_allowed(name: str) -> None:
    spec = SIGNING_ALGORITHMS[name]
    private_key = spec.load(spec.generate())
    public_key = private_key.public_key()
    order = CURVE_ORDERS[private_key.curve.name]
    for _ in range(SIGNATURES):
        message = os.urandom(64)
        signature = spec.sign(private_key, message)
        r, s = decode_dss_signature(signature)
        assert 0 < s <= order // 2
        spec.verify(public_key, message, signature)
        spec.verify(public_key, message, signature, require_low_s=True)

        twin = encode_dss_signature(r, order - s)
        spec.verify(public_key, message, twin)  # the order is right: the twin is valid
        with pytest.raises(InvalidSignature):
            spec.verify(public_key, message, twin, require_low_s=True)
        assert low_s(twin, private_key.curve) == signature


@pytest.mark.parametrize("name", ECDSA)
def test_a_prehashed_signature_is_low_s_too(name: str) -> None:
    spec = SIGNING_ALGORITHMS[name]
    private_key = spec.load(spec.generate())
    scheme = spec.scheme(None, prehashed=True, digest_algorithm=spec.schemes[0].digest)
    order = CURVE_ORDERS[private_key.curve.name]
    size = 32 if name == "ECDSA-P256" else 48
    for _ in range(SIGNATURES):
        signature = spec.sign(private_key, os.urandom(size), scheme, prehashed=True)
        assert decode_dss_signature(signature)[1] <= order // 2


@pytest.mark.parametrize("signature", [b"", b"\x30\x00", b"not DER at all"])
def test_require_low_s_on_a_malformed_signature_is_invalid(signature: bytes) -> None:
    spec = SIGNING_ALGORITHMS["ECDSA-P256"]
    public_key = spec.load(spec.generate()).public_key()
    with pytest.raises(InvalidSignature):
        spec.verify(public_key, b"m", signature, require_low_s=True)


@pytest.mark.parametrize("name", ["Ed25519", "RSA-2048"])
def test_require_low_s_is_refused_for_other_signing_keys(name: str) -> None:
    with pytest.raises(InvalidRequest, match="only for ECDSA keys"):
        SIGNING_ALGORITHMS[name].scheme(None, require_low_s=True)
