"""What docs/security.md promises about secrets held in memory: no ``repr`` shows them, and the
buffers kms overwrites really are overwritten."""

from __future__ import annotations

import os

import pytest

from kms.crypto.wrapping import KeyIdentity
from kms.errors import WrongPassphrase
from kms.service import keyring as keyring_module
from kms.service import keystore as keystore_module
from kms.service import masterkey as masterkey_module
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keys import Decrypted
from kms.service.masterkey import PassphraseBackend

PLAINTEXT = b"the plaintext must stay out of repr"


def test_the_repr_of_a_decryption_result_holds_no_plaintext() -> None:
    result = Decrypted(key_id="orders", version=3, plaintext=PLAINTEXT)
    for text in (repr(result), str(result), f"{result}", f"{result!r}"):
        assert "stay out" not in text, text
        assert "plaintext=" not in text, text
        assert PLAINTEXT.hex() not in text
    assert "orders" in repr(result) and "3" in repr(result)


def test_zeroise_overwrites_every_byte_in_place() -> None:
    buffer = bytearray(os.urandom(64))
    same_object = buffer
    zeroise(buffer)
    assert same_object is buffer
    assert buffer == bytearray(64)  # same length, all zero: overwritten, not replaced


def test_closing_the_keyring_overwrites_the_master_key_and_refuses_further_use() -> None:
    master_key = bytearray(os.urandom(32))
    keyring = RootKeyring(master_key, b"i" * 16)
    aad = KeyIdentity("k", 1, "encrypt", "AES-256-GCM", "0" * 32)
    blob = keyring.wrap(b"\x01" * 32, aad)
    assert keyring.unwrap(blob, aad) == bytearray(b"\x01" * 32)

    keyring.close()

    assert master_key == bytearray(32)
    assert "open=False" in repr(keyring)
    with pytest.raises(RuntimeError):
        keyring.wrap(b"\x01" * 32, aad)
    with pytest.raises(RuntimeError):
        keyring.unwrap(blob, aad)


def test_closing_the_keyring_also_closes_its_row_mac_and_refuses_a_backup_mac() -> None:
    """Found by ``make mutants``: only wrap and unwrap were checked after close."""
    keyring = RootKeyring(bytearray(os.urandom(32)), b"i" * 16)
    keyring.verify_tag(b"row", keyring.tag(b"row"), "row")  # the control: open, it tags
    keyring.backup_mac().close()

    keyring.close()

    with pytest.raises(RuntimeError):
        keyring.tag(b"row")
    with pytest.raises(RuntimeError):
        keyring.backup_mac()


def test_the_derived_mac_keys_are_overwritten_once_handed_to_hmac(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wrapping, row-MAC and backup keys (HKDF of the root secret) live in buffers kms
    overwrites.

    A spy around ``derive_key`` keeps each buffer it returns, so the test can look at them
    after the keyring is done with them. Found by ``make mutants``.
    """
    derived: list[bytearray] = []
    real_derive = keyring_module.derive_key

    def spy(*args: object) -> bytearray:
        buffer = real_derive(*args)
        derived.append(buffer)
        return buffer

    monkeypatch.setattr(keyring_module, "derive_key", spy)
    keyring = RootKeyring(bytearray(os.urandom(32)), b"i" * 16)
    backup = keyring.backup_mac()
    try:
        assert len(derived) == 3

        assert all(len(buffer) == 32 and buffer == bytearray(32) for buffer in derived)
        assert backup.tag(b"row") != keyring.tag(b"row")  # two keys, both still usable
    finally:
        backup.close()
        keyring.close()


class _StoredKeystore:
    """The one repository method opening needs: the stored keystore rows."""

    def __init__(self, stored: dict[str, bytes]) -> None:
        self.stored = stored

    def read_metadata(self) -> dict[str, bytes]:
        return self.stored


def _backend(passphrase: bytes) -> PassphraseBackend:
    return PassphraseBackend(bytearray(passphrase), 1000, min_iterations=1000)


def test_the_passphrase_keys_of_init_and_of_opens_are_overwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key PBKDF2 derives from the passphrase only seals or opens the root secret: at
    ``kms init``, at an open with the wrong passphrase and at a good one, the buffer is
    overwritten before returning; the root secret the keyring keeps, only on close.

    A spy around ``derive_master_key`` keeps the buffers. Found by ``make mutants``.
    """
    derived: list[bytearray] = []
    real_derive = masterkey_module.derive_master_key

    def spy(*args: object) -> bytearray:
        buffer = real_derive(*args)
        derived.append(buffer)
        return buffer

    monkeypatch.setattr(masterkey_module, "derive_master_key", spy)
    stored = keystore_module.new_keystore(_backend(b"right"))
    assert len(derived) == 1 and derived[0] == bytearray(len(derived[0]))

    with pytest.raises(WrongPassphrase):
        keystore_module.open_keystore(_StoredKeystore(stored), _backend(b"wrong"))
    assert len(derived) == 2 and derived[1] == bytearray(len(derived[1]))

    opened = keystore_module.open_keystore(_StoredKeystore(stored), _backend(b"right"))
    assert len(derived) == 3 and derived[2] == bytearray(len(derived[2]))
    root_secret = opened.keyring.root_secret()
    assert root_secret != bytearray(len(root_secret))  # the control: an open keyring keeps it
    opened.keyring.close()
    with pytest.raises(RuntimeError):
        opened.keyring.root_secret()
