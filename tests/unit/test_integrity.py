"""Row MACs at the crypto and encoding level: the MAC key, the canonical encoding, the wrap AAD."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.encoding import encode_aad
from kms.crypto.integrity import (
    MAC_FORMAT_V2,
    MAC_KEY_INFO,
    RecordMAC,
    derive_mac_key,
    encode_record,
    keystore_binding,
)
from kms.crypto.wrapping import (
    WRAP_FORMAT_V1,
    WRAP_FORMAT_V2,
    WRAP_FORMAT_V3,
    WRAP_FORMAT_V4,
    KeyIdentity,
    unwrap_key,
    wrap_key,
)
from kms.errors import IntegrityFailure, UnwrapFailed
from kms.service.integrity import encode_key_row, encode_version_row
from kms.service.keyring import RootKeyring
from kms.store.records import KeyRecord

MASTER = bytearray(range(32))
KEYSTORE_ID = bytes(range(16))
KEY = KeyRecord(
    key_id="orders",
    purpose="encrypt",
    algorithm="AES-256-GCM",
    state="enabled",
    latest_version=2,
    incarnation="00112233445566778899aabbccddeeff",
    created_at=datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC),
)


def test_the_mac_key_is_hkdf_of_the_master_key_with_its_own_label() -> None:
    # RFC 5869 with SHA-256, no salt (a zero-filled block), info "kms/row-mac/v1", 32 bytes.
    prk = hmac.new(b"\x00" * 32, bytes(MASTER), hashlib.sha256).digest()
    expected = hmac.new(prk, MAC_KEY_INFO + b"\x01", hashlib.sha256).digest()
    assert derive_mac_key(bytearray(MASTER)) == expected
    assert expected != bytes(MASTER)


def test_row_encodings_known_answers() -> None:
    # Pinned: a change here changes the MAC of every stored row (see kms.service.integrity).
    encoded = encode_key_row(KEY)
    assert hashlib.sha256(encoded).hexdigest() == (
        "1677925b27c1af9a6471b911b6d7772ff734fc2672283e70b2317519a3ef9313"
    )
    assert hashlib.sha256(encode_version_row(KEY, 1, b"wrapped", b"public")).hexdigest() == (
        "e814c0542fe3c534e65c2f513b114464089224c33513642fabe4a80a0cb04e7f"
    )
    assert encoded[:18] == b"\x00\x00\x00\x0ekms/key-row/v1"
    assert b"\x00\x00\x00\x06key_idS\x00\x00\x00\x06orders" in encoded
    assert b"\x00\x00\x00\x0elatest_versionI\x00\x00\x00\x012" in encoded


@pytest.mark.parametrize(
    "change",
    [
        {"key_id": "orderS"},
        {"purpose": "sign"},
        {"algorithm": "ChaCha20-Poly1305"},
        {"state": "disabled"},
        {"latest_version": 1},
        {"incarnation": "f" * 32},
        {"created_at": datetime(2026, 11, 28, 12, 0, 0, 123457, tzinfo=UTC)},
        {"state": "pending_deletion"},
        {"description": "x"},
        {"labels": '{"team":"a"}'},
        {"min_decryption_version": 2},
        {"min_available_version": 2},
        {"deletion_allowed": False},
        {"pending_deletion_at": datetime(2026, 12, 28, tzinfo=UTC)},
    ],
    ids=lambda change: next(iter(change)),
)
def test_every_key_row_field_is_covered(change: dict[str, object]) -> None:
    assert encode_key_row(dataclasses.replace(KEY, **change)) != encode_key_row(KEY)


def test_the_mac_column_is_not_covered() -> None:
    assert encode_key_row(dataclasses.replace(KEY, mac=b"\x01" * 33)) == encode_key_row(KEY)


def test_the_use_attempt_bookkeeping_is_not_covered() -> None:
    # Written on every refused use of a key pending deletion, without the master key.
    bookkeeping = dataclasses.replace(
        KEY, use_attempts_while_pending=7, last_use_attempt='{"at":"x","caller":"y"}'
    )
    assert encode_key_row(bookkeeping) == encode_key_row(KEY)


def test_the_fields_of_migration_0003_at_their_defaults_leave_earlier_macs_valid() -> None:
    # A row written before 0003 holds none of these; the migration stores exactly the defaults.
    migrated = dataclasses.replace(
        KEY,
        description="",
        labels="{}",
        min_decryption_version=1,
        min_available_version=1,
        deletion_allowed=True,
        pending_deletion_at=None,
    )
    assert encode_key_row(migrated) == encode_key_row(KEY)


def test_a_naive_datetime_from_sqlite_encodes_like_the_same_utc_time() -> None:
    naive = dataclasses.replace(KEY, created_at=KEY.created_at.replace(tzinfo=None))
    assert encode_key_row(naive) == encode_key_row(KEY)


@dataclasses.dataclass(frozen=True)
class LaterKeyRecord(KeyRecord):
    """What another issue's field looks like: added with a default equal to the migrated value."""

    rotation_period_days: int = 0
    exportable: bool = False


def test_a_field_added_later_is_covered_and_existing_macs_stay_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kms.service import integrity

    before = encode_key_row(KEY)
    later_fields = tuple(
        field
        for field in dataclasses.fields(LaterKeyRecord)
        if field.name not in integrity.NOT_AUTHENTICATED
    )
    monkeypatch.setattr(integrity, "_KEY_FIELDS", later_fields)
    migrated = LaterKeyRecord(**{f.name: getattr(KEY, f.name) for f in dataclasses.fields(KEY)})
    assert integrity.encode_key_row(migrated) == before  # at their defaults: same bytes
    for change in ({"rotation_period_days": 2}, {"exportable": True}):
        assert integrity.encode_key_row(dataclasses.replace(migrated, **change)) != before


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ([("a", "bc")], [("ab", "c")]),
        ([("a", "b"), ("c", "d")], [("a", "b\x00\x00\x00\x01cSd")]),
        ([("n", 1)], [("n", "1")]),
        ([("n", True)], [("n", 1)]),
        ([("n", None)], [("n", "")]),
        ([("n", None)], [("n", b"")]),
        ([("n", b"x")], [("n", "x")]),
        ([], [("n", None)]),
    ],
)
def test_the_encoding_is_injective_on_tricky_pairs(
    left: list[tuple[str, object]], right: list[tuple[str, object]]
) -> None:
    assert encode_record(b"label", left) != encode_record(b"label", right)  # type: ignore[arg-type]


def test_version_rows_bind_key_identity_and_both_blobs() -> None:
    base = encode_version_row(KEY, 1, b"wrapped", b"public")
    assert encode_version_row(KEY, 2, b"wrapped", b"public") != base
    assert encode_version_row(KEY, 1, b"wrappeD", b"public") != base
    assert encode_version_row(KEY, 1, b"wrapped", b"publiC") != base
    assert encode_version_row(KEY, 1, b"wrapped", None) != base
    for change in ({"incarnation": "f" * 32}, {"algorithm": "x"}, {"key_id": "y"}):
        assert encode_version_row(dataclasses.replace(KEY, **change), 1, b"wrapped", b"public") != (
            base
        )


def test_record_mac_refuses_a_wrong_or_missing_tag() -> None:
    mac = RecordMAC(bytearray(os.urandom(32)))
    tag = mac.tag(b"row")
    assert tag[:1] == b"\x01" and len(tag) == 33
    mac.verify(b"row", tag, "row")
    for stored in (None, b"", tag[:-1], tag[:-1] + bytes([tag[-1] ^ 1]), b"\x02" + tag[1:]):
        with pytest.raises(IntegrityFailure):
            mac.verify(b"row", stored, "row")
    with pytest.raises(IntegrityFailure) as excinfo:
        mac.verify(b"other row", tag, "key 'orders': key row")
    assert excinfo.value.detail == "key 'orders': key row: MAC does not match"
    assert excinfo.value.public_message == "internal error"


def test_the_keyring_macs_with_the_derived_key_not_the_master_key() -> None:
    keyring = RootKeyring(bytearray(MASTER), KEYSTORE_ID)
    try:
        tag = keyring.tag(b"row")
        bound = keystore_binding(KEYSTORE_ID) + b"row"
        assert tag[:1] == MAC_FORMAT_V2
        assert tag[1:] != hmac.new(bytes(MASTER), bound, hashlib.sha256).digest()
        assert tag[1:] == hmac.new(derive_mac_key(bytearray(MASTER)), bound, "sha256").digest()
    finally:
        keyring.close()


def test_a_row_tagged_in_one_keystore_fails_in_another_with_the_same_master_key() -> None:
    """A restored copy shares the master key; the keystore id it was made with still tells
    its rows apart, and a format-1 tag (before keystore binding) is refused outside upgrade."""
    one, other = (RootKeyring(bytearray(MASTER), ident) for ident in (b"1" * 16, b"2" * 16))
    try:
        with pytest.raises(IntegrityFailure):
            other.verify_tag(b"row", one.tag(b"row"), "row")
        legacy = RecordMAC(derive_mac_key(bytearray(MASTER))).tag(b"row")
        with pytest.raises(IntegrityFailure):
            one.verify_tag(b"row", legacy, "row")
        one.verify_legacy_tag(b"row", legacy, "row")
        blob = one.wrap(b"k" * 32, IDENTITY)
        assert blob[:1] == WRAP_FORMAT_V4
        assert one.unwrap(blob, IDENTITY) == bytearray(b"k" * 32)
        with pytest.raises(UnwrapFailed):
            other.unwrap(blob, IDENTITY)
    finally:
        one.close()
        other.close()


# -- the wrap AAD binds the incarnation ---------------------------------------------------------

IDENTITY = KeyIdentity("orders", 1, "encrypt", "AES-256-GCM", "a" * 32)


def test_a_wrapped_key_does_not_unwrap_under_another_incarnation() -> None:
    master = AESGCM(bytes(MASTER))
    blob = wrap_key(master, b"k" * 32, IDENTITY, KEYSTORE_ID)
    assert unwrap_key(master, blob, IDENTITY, KEYSTORE_ID) == bytearray(b"k" * 32)
    for other in (
        dataclasses.replace(IDENTITY, incarnation="b" * 32),
        dataclasses.replace(IDENTITY, version=2),
        dataclasses.replace(IDENTITY, algorithm="ChaCha20-Poly1305"),
    ):
        with pytest.raises(UnwrapFailed):
            unwrap_key(master, blob, other, KEYSTORE_ID, master)
    # Relabelling the blob as an older format switches to its AAD (and its key: here the same
    # one, the harder case), which does not match either.
    for older in (WRAP_FORMAT_V1, WRAP_FORMAT_V2, WRAP_FORMAT_V3):
        with pytest.raises(UnwrapFailed):
            unwrap_key(master, older + blob[1:], IDENTITY, KEYSTORE_ID, master)


def test_a_previous_release_blob_still_unwraps_under_its_identity() -> None:
    master = AESGCM(bytes(MASTER))
    old_aad = encode_aad(b"kms/wrapped-key/v1", "orders", 1, "encrypt", "AES-256-GCM")
    nonce = os.urandom(12)
    blob = WRAP_FORMAT_V1 + nonce + master.encrypt(nonce, b"k" * 32, old_aad)
    assert unwrap_key(master, blob, IDENTITY, legacy=master) == bytearray(b"k" * 32)
    with pytest.raises(UnwrapFailed):
        unwrap_key(master, blob, dataclasses.replace(IDENTITY, version=2), legacy=master)
    with pytest.raises(UnwrapFailed):  # without the root secret, no format-1 blob unwraps
        unwrap_key(master, blob, IDENTITY)


def test_booleans_encode_as_known_bytes() -> None:
    """A field left at a non-default boolean (``deletion_allowed`` false) is in every such row's
    MAC: its encoding is a stored format, pinned like the rest (changing it would make every
    existing row with it fail its check)."""
    assert encode_record(b"kms/test/v1", [("a", True), ("b", False)]) == (
        b"\x00\x00\x00\x0bkms/test/v1"
        b"\x00\x00\x00\x01aT\x00\x00\x00\x01\x01"
        b"\x00\x00\x00\x01bT\x00\x00\x00\x01\x00"
    )
