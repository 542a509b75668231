"""Each data key and each rewrap is one encryption against ``max_encryptions_per_version``
(README, use limits: a version makes exactly N encryptions, whichever call makes them), in
process on a real SQLite file.
"""

from __future__ import annotations

from kms.service.keys import KMSService
from kms.service.keys.results import Encrypted


def test_a_data_key_counts_one_encryption(service: KMSService) -> None:
    service.create_key("envelopes", max_encryptions_per_version=2)
    assert [service.generate_data_key("envelopes").version for _ in range(3)] == [1, 1, 2]


def test_a_rewrap_counts_one_encryption(service: KMSService) -> None:
    service.create_key("archive", max_encryptions_per_version=2)
    ciphertext = service.encrypt("archive", b"record").ciphertext
    assert service.rewrap("archive", ciphertext).version == 1  # the second of version 1
    assert service.rewrap("archive", ciphertext).version == 2


def test_a_rewrap_batch_counts_one_encryption_per_item(service: KMSService) -> None:
    service.create_key("archive", max_encryptions_per_version=3)
    ciphertext = service.encrypt("archive", b"record").ciphertext  # the first of version 1
    rewrapped = service.rewrap_batch("archive", [{"ciphertext": ciphertext}] * 2)
    assert [item.version for item in rewrapped if isinstance(item, Encrypted)] == [1, 1]
    assert service.encrypt("archive", b"next").version == 2
