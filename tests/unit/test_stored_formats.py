"""Known answers for what kms stores and hands out: ciphertexts and wrapped keys made by this
release must open in every later one ("old data keeps decrypting").

Round-trip tests cannot see a changed AAD label or field encoding: encryption and decryption
change together. These vectors were made once, outside kms's code (AESGCM over hand-built
associated data), and are fixed here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.algorithms import ENCRYPTION_ALGORITHMS, open_sealed
from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext, parse_ciphertext
from kms.crypto.wrapping import (
    WRAP_FORMAT_V1,
    WRAP_FORMAT_V2,
    WRAP_FORMAT_V3,
    KeyIdentity,
    unwrap_key,
)
from kms.service.keyring import RootKeyring
from kms.service.keystore import (
    INIT_MARKER_AAD_UNBOUND,
    INIT_MARKER_AAD_UNSEALED,
    init_marker_aad,
    init_marker_aad_v3,
)

DATA_KEY = bytes(range(32))
MASTER_KEY = bytes(range(32, 64))
NONCE = bytes(range(100, 112))
# AES-256-GCM under DATA_KEY, key "orders" version 2, no context, plaintext b"hello".
CIPHERTEXT = "djI6ZGVmZ2hpamtsbW5vIH6yChYNQPokYlodVo3OEDcBs/ON"
# DATA_KEY wrapped under MASTER_KEY for key "orders" version 1, encrypt, AES-256-GCM.
WRAPPED = bytes.fromhex(
    "01c8c9cacbcccdcecfd0d1d2d3a548ace1b753a4c5569689e6ee750bdb81d5216dc5e76ee645ec3fe1d56e7ba770b1"
    "db85b40d85d1452a41278a98cc0d"
)


def test_ciphertext_associated_data_bytes() -> None:
    assert ciphertext_aad("orders", 2) == (
        b"kms/ciphertext/v1\x00\x00\x00\x06orders\x00\x00\x00\x012\x00\x00\x00\x00"
    )
    assert ciphertext_aad("k", 10, b"ctx") == (
        b"kms/ciphertext/v1\x00\x00\x00\x01k\x00\x00\x00\x0210\x00\x00\x00\x03ctx"
    )


def test_wrapped_key_and_init_marker_associated_data_bytes() -> None:
    identity = KeyIdentity("orders", 1, "encrypt", "AES-256-GCM", "ab" * 16)
    assert identity.aad(WRAP_FORMAT_V1) == (
        b"kms/wrapped-key/v1\x00\x00\x00\x06orders\x00\x00\x00\x011"
        b"\x00\x00\x00\x07encrypt\x00\x00\x00\x0bAES-256-GCM"
    )
    assert identity.aad(WRAP_FORMAT_V2) == (
        b"kms/wrapped-key/v2\x00\x00\x00\x06orders\x00\x00\x00\x011"
        b"\x00\x00\x00\x07encrypt\x00\x00\x00\x0bAES-256-GCM\x00\x00\x00\x20" + b"ab" * 16
    )
    assert identity.aad(keystore_id=b"\x07" * 16) == (
        b"kms/wrapped-key/v4\x00\x00\x00\x10" + b"\x07" * 16 + b"\x00\x00\x00\x06orders"
        b"\x00\x00\x00\x011\x00\x00\x00\x07encrypt\x00\x00\x00\x0bAES-256-GCM"
        b"\x00\x00\x00\x20" + b"ab" * 16
    )
    assert identity.aad(WRAP_FORMAT_V3, b"\x07" * 16) == (
        b"kms/wrapped-key/v3\x00\x00\x00\x10" + b"\x07" * 16 + b"\x00\x00\x00\x06orders"
        b"\x00\x00\x00\x011\x00\x00\x00\x07encrypt\x00\x00\x00\x0bAES-256-GCM"
        b"\x00\x00\x00\x20" + b"ab" * 16
    )
    assert init_marker_aad(b"\x07" * 16) == b"kms/init-marker/v4\x00\x00\x00\x10" + b"\x07" * 16
    assert init_marker_aad_v3(b"\x07" * 16) == (
        b"kms/init-marker/v3\x00\x00\x00\x10" + b"\x07" * 16
    )
    assert INIT_MARKER_AAD_UNBOUND == b"kms/init-marker/v2"
    assert INIT_MARKER_AAD_UNSEALED == b"kms/init-marker/v1"


def test_a_ciphertext_from_this_release_decrypts() -> None:
    parsed = parse_ciphertext(CIPHERTEXT)
    assert (parsed.version, parsed.nonce) == (2, NONCE)
    aead = ENCRYPTION_ALGORITHMS["AES-256-GCM"].load(DATA_KEY)
    assert open_sealed(aead, parsed.nonce, parsed.sealed, ciphertext_aad("orders", 2)) == b"hello"
    assert format_ciphertext(2, parsed.nonce, parsed.sealed) == CIPHERTEXT
    assert base64.b64decode(CIPHERTEXT).startswith(b"v2:")


def test_a_wrapped_key_from_this_release_unwraps() -> None:
    # A format-1 blob (the release before row MACs): its AAD has no incarnation.
    identity = KeyIdentity("orders", 1, "encrypt", "AES-256-GCM", "any incarnation")
    master = AESGCM(MASTER_KEY)
    assert unwrap_key(master, WRAPPED, identity, legacy=master) == bytearray(DATA_KEY)
    keyring = RootKeyring(bytearray(MASTER_KEY), b"\x07" * 16)  # an upgraded keystore's
    try:
        assert keyring.unwrap(WRAPPED, identity) == bytearray(DATA_KEY)
    finally:
        keyring.close()


def test_a_format_4_wrap_is_under_the_hkdf_wrapping_key_with_its_own_aad() -> None:
    """Made here by hand: RFC 5869 HKDF-SHA256 of the root secret (no salt, info
    ``kms/wrapping/v4``) with ``hmac``, then AESGCM over the format-4 AAD written out."""
    prk = hmac.new(b"\x00" * 32, MASTER_KEY, hashlib.sha256).digest()
    wrapping_key = hmac.new(prk, b"kms/wrapping/v4\x01", hashlib.sha256).digest()
    aad = (
        b"kms/wrapped-key/v4\x00\x00\x00\x10" + b"\x07" * 16 + b"\x00\x00\x00\x06orders"
        b"\x00\x00\x00\x011\x00\x00\x00\x07encrypt\x00\x00\x00\x0bAES-256-GCM"
        b"\x00\x00\x00\x20" + b"ab" * 16
    )
    blob = b"\x04" + NONCE + AESGCM(wrapping_key).encrypt(NONCE, DATA_KEY, aad)
    identity = KeyIdentity("orders", 1, "encrypt", "AES-256-GCM", "ab" * 16)
    keyring = RootKeyring(bytearray(MASTER_KEY), b"\x07" * 16)
    try:
        assert keyring.unwrap(blob, identity) == bytearray(DATA_KEY)
        ours = keyring.wrap(DATA_KEY, identity)
        assert ours[:1] == b"\x04"
        assert AESGCM(wrapping_key).decrypt(ours[1:13], ours[13:], aad) == DATA_KEY
    finally:
        keyring.close()
    # Not the root secret itself, which wrapped formats 1 to 3.
    with pytest.raises(InvalidTag):
        AESGCM(MASTER_KEY).decrypt(blob[1:13], blob[13:], aad)
