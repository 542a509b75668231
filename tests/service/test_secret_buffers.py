"""Every plaintext key buffer kms holds in a ``bytearray`` is overwritten once it is used.

docs/security.md promises this for the passphrase (right after derivation) and the master key (on
close, tested in tests/unit/test_secrets_in_memory.py); the service does the same for each data
key it generates or unwraps, before caching the loaded key object. A keyring that records the
buffers it is handed and hands out shows whether they were overwritten afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import kms.master
from kms.errors import InvalidRequest, WrongPassphrase
from kms.master import init_database, open_master_keyring
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.settings import Settings
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import TEST_PASSPHRASE, make_service


class RecordingKeyring(RootKeyring):
    """The real keyring, keeping a reference to every plaintext buffer that passes through it."""

    def __init__(self, inner: RootKeyring) -> None:
        self._inner = inner
        self.buffers: list[bytearray] = []

    def wrap(self, secret: bytes | bytearray, aad: bytes) -> bytes:
        assert isinstance(secret, bytearray)
        self.buffers.append(secret)
        return self._inner.wrap(secret, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytearray:
        secret = self._inner.unwrap(blob, aad)
        self.buffers.append(secret)
        return secret

    def tag(self, encoded: bytes) -> bytes:
        return self._inner.tag(encoded)

    def verify_tag(self, encoded: bytes, stored: bytes | None, what: str) -> None:
        self._inner.verify_tag(encoded, stored, what)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> object:
        # Everything else (the row MAC key, ...) is the real keyring's, untouched.
        return getattr(self._inner, name)


@pytest.mark.parametrize("algorithm", ["AES-256-GCM", "ChaCha20-Poly1305", "Ed25519", "ECDSA-P256"])
def test_data_key_buffers_are_overwritten_after_use(
    repository: SQLKeyRepository, keyring: RootKeyring, algorithm: str
) -> None:
    recording = RecordingKeyring(keyring)
    service = make_service(repository, recording, KeyMaterialCache(16))
    purpose = "encrypt" if algorithm in ("AES-256-GCM", "ChaCha20-Poly1305") else "sign"

    service.create_key("buffers", purpose, algorithm)
    service.rotate_key("buffers")
    if purpose == "encrypt":
        service.decrypt("buffers", service.encrypt("buffers", b"message").ciphertext)
    else:
        service.sign("buffers", b"message")

    assert len(recording.buffers) == 3  # two generated and wrapped, one unwrapped to use
    for buffer in recording.buffers:
        assert len(buffer) > 0
        assert buffer == bytearray(len(buffer)), "a data key buffer was left as it was"


@pytest.mark.parametrize("passphrase", [TEST_PASSPHRASE, b"not the passphrase"])
def test_the_passphrase_buffer_is_overwritten_after_opening(
    initialised: Settings, monkeypatch: pytest.MonkeyPatch, passphrase: bytes
) -> None:
    handed_out: list[bytearray] = []

    def obtain(path: Path | None) -> bytearray:
        handed_out.append(bytearray(passphrase))
        return handed_out[-1]

    monkeypatch.setattr(kms.master, "obtain_passphrase", obtain)
    if passphrase == TEST_PASSPHRASE:
        open_master_keyring(initialised).close()
    else:
        with pytest.raises(WrongPassphrase):
            open_master_keyring(initialised)
    assert len(handed_out) == 1
    assert handed_out[0] == bytearray(len(passphrase))


def test_the_passphrase_buffer_is_overwritten_after_init(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    handed_out: list[bytearray] = []

    def obtain(path: Path | None) -> bytearray:
        assert path == settings.master_passphrase_file
        handed_out.append(bytearray(TEST_PASSPHRASE))
        return handed_out[-1]

    # The one seam where the passphrase enters: kms.master reads it through obtain_passphrase.
    monkeypatch.setattr(kms.master, "obtain_passphrase", obtain)
    init_database(settings)
    assert len(handed_out) == 1
    assert handed_out[0] == bytearray(len(TEST_PASSPHRASE))


@pytest.mark.parametrize("operation", ["delete", "recreate"])
def test_loaded_material_of_a_changed_key_leaves_the_cache(
    repository: SQLKeyRepository, keyring: RootKeyring, operation: str
) -> None:
    """The cache never serves stale material (its keys carry the incarnation), but a delete or
    recreate also drops what it held for the key, so no loaded key outlives its row in this
    worker longer than it must."""
    cache = KeyMaterialCache(16)
    service = make_service(repository, keyring, cache)
    service.create_key("cached", "encrypt", "AES-256-GCM")
    service.create_key("bystander", "encrypt", "AES-256-GCM")
    service.encrypt("cached", b"m")
    service.encrypt("bystander", b"m")
    assert "entries=2," in repr(cache)

    getattr(service, f"{operation}_key")("cached")

    assert "entries=1," in repr(cache)  # only the bystander's
    service.encrypt("bystander", b"m")
    assert "entries=1," in repr(cache)


def test_the_service_refuses_a_page_larger_than_1000(service: KMSService) -> None:
    """The API's schema refuses it first; the service keeps the same limit for other callers
    (the CLI's operator commands)."""
    service.create_key("one", "encrypt", "AES-256-GCM")
    assert [key.key_id for key in service.list_keys(1000)] == ["one"]
    with pytest.raises(InvalidRequest, match="limit"):
        service.list_keys(1001)
    with pytest.raises(InvalidRequest, match="limit"):
        service.list_keys(0)
