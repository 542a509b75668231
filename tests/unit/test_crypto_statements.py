"""The statements about kms's cryptography in README.md and docs/security.md, each pinned.

- A ciphertext's ``v<N>:`` prefix is the key version that made it, not a format version; a
  wrapped key's first byte is its format version.
- A format-1 wrapped key (no incarnation in its associated data) still unwraps after a recreate;
  formats 2 to 4 do not, and the version row's MAC, which covers the incarnation, refuses the
  format-1 blob (the service refusing such a row: tests/service/test_untrusted_storage.py).
- A cached AEAD key is an immutable ``bytes`` copy inside ``AEADKey``, with no ``AESGCM`` object
  kept, that kms cannot overwrite.
- Two bookkeeping fields of the key row are outside its MAC, and only those.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.algorithms import ENCRYPTION_ALGORITHMS, AEADKey, open_sealed, seal
from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext, parse_ciphertext
from kms.crypto.wrapping import (
    WRAP_FORMAT_V1,
    WRAP_FORMAT_V2,
    WRAP_FORMAT_V4,
    KeyIdentity,
    unwrap_key,
    wrap_key,
)
from kms.errors import InvalidCiphertext, UnwrapFailed
from kms.service.integrity import NOT_AUTHENTICATED, encode_key_row, encode_version_row
from kms.store.records import KeyRecord

KEYSTORE_ID = bytes(range(16))
BEFORE = KeyIdentity("orders", 1, "encrypt", "AES-256-GCM", "a" * 32)
AFTER_RECREATE = dataclasses.replace(BEFORE, incarnation="b" * 32)


def test_a_ciphertext_names_its_key_version_and_a_wrapped_key_its_format() -> None:
    key = ENCRYPTION_ALGORITHMS["AES-256-GCM"].load(bytearray(os.urandom(32)))
    for version in (1, 2, 7):
        nonce, sealed = seal(key, b"plaintext", ciphertext_aad("orders", version))
        text = format_ciphertext(version, nonce, sealed)
        assert base64.b64decode(text).startswith(b"v%d:" % version)
        assert parse_ciphertext(text).version == version
    # Made by version 7, relabelled as version 2: the associated data binds the version.
    relabelled = parse_ciphertext(format_ciphertext(2, nonce, sealed))
    with pytest.raises(InvalidCiphertext):
        open_sealed(key, relabelled.nonce, relabelled.sealed, ciphertext_aad("orders", 2))

    master = AESGCM(os.urandom(32))
    for version in (1, 7):
        identity = dataclasses.replace(BEFORE, version=version)
        assert wrap_key(master, b"s" * 32, identity, KEYSTORE_ID)[:1] == WRAP_FORMAT_V4


def test_a_format_1_wrap_unwraps_after_a_recreate_and_its_row_mac_tells() -> None:
    master = AESGCM(os.urandom(32))
    secret = os.urandom(32)
    nonce = os.urandom(12)
    format_1 = WRAP_FORMAT_V1 + nonce + master.encrypt(nonce, secret, BEFORE.aad(WRAP_FORMAT_V1))
    # Formats 1 to 3 unwrap under the root secret itself (legacy), format 4 under its wrapping key.
    assert unwrap_key(master, format_1, AFTER_RECREATE, legacy=master) == bytearray(secret)

    format_2 = WRAP_FORMAT_V2 + nonce + master.encrypt(nonce, secret, BEFORE.aad(WRAP_FORMAT_V2))
    format_4 = wrap_key(master, secret, BEFORE, KEYSTORE_ID)
    assert unwrap_key(master, format_2, BEFORE, legacy=master) == bytearray(secret)
    assert unwrap_key(master, format_4, BEFORE, KEYSTORE_ID) == bytearray(secret)
    with pytest.raises(UnwrapFailed):
        unwrap_key(master, format_2, AFTER_RECREATE, legacy=master)
    with pytest.raises(UnwrapFailed):
        unwrap_key(master, format_4, AFTER_RECREATE, KEYSTORE_ID)

    key = KeyRecord(
        key_id="orders",
        purpose="encrypt",
        algorithm="AES-256-GCM",
        state="enabled",
        latest_version=1,
        incarnation=BEFORE.incarnation,
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
    )
    recreated = dataclasses.replace(key, incarnation=AFTER_RECREATE.incarnation)
    assert encode_version_row(key, 1, format_1, None) != encode_version_row(
        recreated, 1, format_1, None
    )


def test_a_cached_aead_key_is_an_immutable_copy_kms_cannot_overwrite() -> None:
    secret = bytearray(os.urandom(32))
    loaded = ENCRYPTION_ALGORITHMS["AES-256-GCM"].load(secret)
    assert isinstance(loaded, AEADKey)
    nonce, sealed = seal(loaded, b"plaintext", b"aad")
    secret[:] = bytes(32)  # what kms does to the unwrapped buffer once the key is loaded
    assert open_sealed(loaded, nonce, sealed, b"aad") == b"plaintext"  # a copy lives on
    held = [getattr(loaded, name) for name in AEADKey.__slots__]
    # One copy of the key, immutable: nothing can overwrite it.
    assert [type(value) for value in held if isinstance(value, bytes | bytearray)] == [bytes]
    assert not any(isinstance(value, AESGCM) for value in held)  # built afresh for each call


def test_two_bookkeeping_fields_and_no_other_are_outside_the_row_mac() -> None:
    assert {"mac", "use_attempts_while_pending", "last_use_attempt"} == NOT_AUTHENTICATED
    key = KeyRecord(
        key_id="orders",
        purpose="encrypt",
        algorithm="AES-256-GCM",
        state="enabled",
        latest_version=1,
        incarnation="a" * 32,
        created_at=datetime(2026, 12, 7, tzinfo=UTC),
    )
    tampered = dataclasses.replace(key, use_attempts_while_pending=9, last_use_attempt="{}")
    assert encode_key_row(tampered) == encode_key_row(key)
