"""Each decryption counts once in the version's use totals (the metrics'
``kms_key_version_decryptions``), for an RSA-OAEP key as for an AES one (tests/service/
test_rotation.py), in process on a real SQLite file.
"""

from __future__ import annotations

from kms.service.keys import KMSService


def test_an_rsa_oaep_decryption_counts_once(service: KMSService) -> None:
    service.create_key("oaep", "encrypt", "RSA-OAEP-2048")
    ciphertext = service.encrypt("oaep", b"x").ciphertext
    for _ in range(3):
        service.decrypt("oaep", ciphertext)
    service.flush_use()
    (version,) = service.get_key("oaep").key_versions
    assert version.decryptions == 3
    assert [(key_id, decryptions) for key_id, _, _, decryptions, _ in service.use_totals()] == [
        ("oaep", 3)
    ]


def test_an_aes_decryption_counts_once(service: KMSService) -> None:
    service.create_key("aes")
    ciphertext = service.encrypt("aes", b"x").ciphertext
    for _ in range(2):
        service.decrypt("aes", ciphertext)
    service.flush_use()
    (version,) = service.get_key("aes").key_versions
    assert version.decryptions == 2
