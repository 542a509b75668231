"""Rotate and recreate refuse a key they may not change before they generate its material.

Both check again under the row's write lock, so the answer would be the same without the first
check; what the first check saves is the material (an RSA-4096 key takes a second to make)
that a refused request would throw away. The service's ``after_generation`` hook runs exactly
once material exists: it must not run for a refused request.
"""

from __future__ import annotations

import pytest

from kms.errors import KeyPendingDeletion, KeyStateConflict
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service


@pytest.fixture
def generated(repository: SQLKeyRepository, keyring: RootKeyring) -> tuple[KMSService, list[str]]:
    made: list[str] = []
    service = make_service(repository, keyring, KeyMaterialCache(64), after_generation=made.append)
    return service, made


def test_recreate_of_a_protected_key_generates_nothing(
    generated: tuple[KMSService, list[str]],
) -> None:
    service, made = generated
    service.create_key("protected", deletion_allowed=False)
    made.clear()
    with pytest.raises(KeyStateConflict):
        service.recreate_key("protected")
    assert made == []
    assert service.get_key("protected").version == 1


def test_rotate_of_a_key_pending_deletion_generates_nothing(
    generated: tuple[KMSService, list[str]],
) -> None:
    service, made = generated
    service.create_key("leaving")
    service.delete_key("leaving", pending_days=7)
    made.clear()
    with pytest.raises((KeyPendingDeletion, KeyStateConflict)):
        service.rotate_key("leaving")
    assert made == []
    assert service.get_key("leaving").version == 1


def test_an_allowed_rotation_generates_once(generated: tuple[KMSService, list[str]]) -> None:
    service, made = generated
    service.create_key("turning")
    made.clear()
    service.rotate_key("turning")
    assert made == ["turning"]
