"""A key pending deletion does no cryptography at all (README, key states).

Every operation that uses a key's material, single or batch, and the export of its public key,
is refused with ``KeyPendingDeletion`` (409) while the key waits for destruction, and each refused
attempt is recorded on the key. Each operation is first shown to work on the same key with the
same input, so a refusal can only come from the key's state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kms.errors import KeyPendingDeletion
from kms.service.keys import KMSService

Operation = Callable[[KMSService], Any]

MESSAGE = b"pay 100 to bob"
PLAINTEXT = b"a secret"


def encryption_operations(service: KMSService, key_id: str) -> dict[str, Operation]:
    ciphertext = service.encrypt(key_id, PLAINTEXT).ciphertext
    return {
        "encrypt": lambda s: s.encrypt(key_id, PLAINTEXT),
        "encrypt_batch": lambda s: s.encrypt_batch(key_id, [{"plaintext": PLAINTEXT}]),
        "decrypt": lambda s: s.decrypt(key_id, ciphertext),
        "decrypt_batch": lambda s: s.decrypt_batch(key_id, [{"ciphertext": ciphertext}]),
        "generate_data_key": lambda s: s.generate_data_key(key_id),
        "generate_data_key_batch": lambda s: s.generate_data_key_batch(key_id, [{}]),
        "rewrap": lambda s: s.rewrap(key_id, ciphertext),
        "rewrap_batch": lambda s: s.rewrap_batch(key_id, [{"ciphertext": ciphertext}]),
    }


def signing_operations(service: KMSService, key_id: str) -> dict[str, Operation]:
    signature = service.sign(key_id, MESSAGE).signature
    return {
        "sign": lambda s: s.sign(key_id, MESSAGE),
        "sign_batch": lambda s: s.sign_batch(key_id, [{"message": MESSAGE}]),
        "verify": lambda s: s.verify(key_id, MESSAGE, signature),
        "verify of a named version": lambda s: s.verify(key_id, MESSAGE, signature, version=1),
        "verify_batch": lambda s: s.verify_batch(
            key_id, [{"message": MESSAGE, "signature": signature}]
        ),
        "public_key": lambda s: s.public_key(key_id),
        "public_key of a named version": lambda s: s.public_key(key_id, 1),
    }


def mac_operations(service: KMSService, key_id: str) -> dict[str, Operation]:
    mac = service.mac(key_id, MESSAGE).mac
    return {
        "mac": lambda s: s.mac(key_id, MESSAGE),
        "verify_mac": lambda s: s.verify_mac(key_id, MESSAGE, mac),
        "verify_mac of a named version": lambda s: s.verify_mac(key_id, MESSAGE, mac, version=1),
    }


def rsa_oaep_operations(service: KMSService, key_id: str) -> dict[str, Operation]:
    return {
        **encryption_operations(service, key_id),
        "public_key": lambda s: s.public_key(key_id),
    }


KEYS: dict[str, tuple[str, str, Callable[[KMSService, str], dict[str, Operation]]]] = {
    "AES-256-GCM": ("encrypt", "AES-256-GCM", encryption_operations),
    "ChaCha20-Poly1305": ("encrypt", "ChaCha20-Poly1305", encryption_operations),
    "RSA-OAEP-2048": ("encrypt", "RSA-OAEP-2048", rsa_oaep_operations),
    "Ed25519": ("sign", "Ed25519", signing_operations),
    "ECDSA-P256": ("sign", "ECDSA-P256", signing_operations),
    "HMAC-SHA256": ("mac", "HMAC-SHA256", mac_operations),
}


@pytest.mark.parametrize("kind", KEYS)
def test_every_operation_on_a_key_pending_deletion_is_refused_and_recorded(
    service: KMSService, kind: str
) -> None:
    purpose, algorithm, operations_of = KEYS[kind]
    service.create_key("doomed", purpose, algorithm)
    operations = operations_of(service, "doomed")
    for name, operation in operations.items():
        for item in _items(operation(service)):
            assert not isinstance(item, Exception), name
            assert getattr(item, "valid", True), name  # a verify: the signature or MAC is good

    service.delete_key("doomed", pending_days=7)
    refused = []
    for name, operation in operations.items():
        with pytest.raises(KeyPendingDeletion):
            operation(service)
        refused.append(name)
    assert refused == list(operations)
    key = service.get_key("doomed")
    assert key.state == "pending_deletion"
    assert key.use_attempts_while_pending == len(operations)

    # Cancelled and enabled again, the key works as before: its material was kept.
    service.cancel_deletion("doomed")
    service.enable_key("doomed")
    for operation in operations.values():
        operation(service)


def _items(result: Any) -> list[Any]:
    return result if isinstance(result, list) else [result]
