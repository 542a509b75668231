"""What ``kms rekey`` (and ``restore --as-clone``) does to each row, in process
(kms.service.keys.maintenance): a row changed behind kms is refused, never sealed again under
the new key, and every data key it unwraps to wrap again is overwritten; ``kms check`` likewise
overwrites each data key it unwraps. Found by ``make mutants`` (tools/mutants)."""

from __future__ import annotations

import dataclasses

import pytest

from kms.errors import IntegrityFailure
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys.maintenance import newest_generations, rekey_rows
from kms.service.keystore import new_root_secret
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service
from tests.service.test_secret_buffers import RecordingKeyring


def test_rekey_refuses_rows_changed_behind_kms_instead_of_sealing_them(
    repository: SQLKeyRepository, keyring: RootKeyring
) -> None:
    """Without the check, the new key's MAC would launder the change: a public key swapped for
    the attacker's would verify the attacker's signatures."""
    service = make_service(repository, keyring, KeyMaterialCache(16))
    service.create_key("signer", "sign", "Ed25519")
    service.create_key("other", "sign", "Ed25519")
    key = repository.get_key("signer")
    (record,) = repository.list_versions("signer")
    (foreign,) = repository.list_versions("other")
    new = RootKeyring(new_root_secret(), keyring.keystore_id)
    try:
        seal_key, rewrap_version, _ = rekey_rows(keyring, new)
        seal_key(key)  # the rows as kms wrote them pass
        rewrap_version(key, record)
        with pytest.raises(IntegrityFailure):
            seal_key(dataclasses.replace(key, description="changed behind kms"))
        with pytest.raises(IntegrityFailure):
            rewrap_version(key, dataclasses.replace(record, public_key=foreign.public_key))
    finally:
        new.close()


def test_rekey_overwrites_each_data_key_it_rewraps(
    repository: SQLKeyRepository, keyring: RootKeyring
) -> None:
    service = make_service(repository, keyring, KeyMaterialCache(16))
    service.create_key("aes")
    service.rotate_key("aes")
    key = repository.get_key("aes")
    recording = RecordingKeyring(keyring)
    new = RootKeyring(new_root_secret(), keyring.keystore_id)
    try:
        _, rewrap_version, _ = rekey_rows(recording, new)
        for record in repository.list_versions("aes"):
            rewrap_version(key, record)
    finally:
        new.close()
    assert len(recording.buffers) == 2
    for buffer in recording.buffers:
        assert buffer == bytearray(len(buffer)), "a data key buffer was left as it was"


def test_kms_check_overwrites_each_data_key_it_unwraps(
    repository: SQLKeyRepository, keyring: RootKeyring
) -> None:
    recording = RecordingKeyring(keyring)
    service = make_service(repository, recording, KeyMaterialCache(16))
    service.create_key("aes")
    service.create_key("signer", "sign", "ECDSA-P256")
    recording.buffers.clear()  # those the creates wrapped
    assert service.check_integrity().failures == []
    assert len(recording.buffers) == 2
    for buffer in recording.buffers:
        assert buffer == bytearray(len(buffer)), "a data key buffer was left as it was"


def test_a_key_changed_once_is_in_the_audit_trail_s_newest_generations() -> None:
    """``kms check --audit``: generation 1 (a create) counts like any other."""
    lines = [
        b'{"key_id":"made","key_generation":1}',
        b'{"key_id":"changed","key_generation":1}',
        b'{"key_id":"changed","key_generation":3}',
        b'{"key_id":"odd","key_generation":0}',
        b"not JSON",
    ]
    assert newest_generations(lines) == {"made": 1, "changed": 3}
