"""What a key shows (docs/api.md, keys): ``next_rotation_at`` from its latest version's creation,
and ``max_encryptions_per_version`` for AEAD keys only ("RSA-OAEP has no nonce, so ... its
`max_encryptions_per_version` shows `null`"), in process on a real SQLite file.
"""

from __future__ import annotations

from datetime import timedelta

from kms.service.keys import KMSService

DEFAULT_LIMIT = 2**30  # kms.max_encryptions_per_version's default


def test_next_rotation_counts_from_the_latest_version(service: KMSService) -> None:
    service.create_key("k", rotation_period="30d")
    service.rotate_key("k")
    detail = service.get_key("k")
    latest = detail.key_versions[-1]
    assert latest.version == 2
    assert detail.next_rotation_at == latest.created_at + timedelta(days=30)


def test_only_aead_keys_show_an_encryption_limit(service: KMSService) -> None:
    shown = {
        key_id: service.create_key(key_id, purpose, algorithm).max_encryptions_per_version
        for key_id, purpose, algorithm in [
            ("aes", "encrypt", "AES-256-GCM"),
            ("oaep", "encrypt", "RSA-OAEP-2048"),
            ("signer", "sign", "ECDSA-P256"),
        ]
    }
    assert shown == {"aes": DEFAULT_LIMIT, "oaep": None, "signer": None}
