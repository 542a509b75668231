"""A key's detail lists its newest ``KEY_DETAIL_VERSIONS`` versions (docs/api.md: "key with its
newest 100 `key_versions`"; the rest through /versions), in process on a real SQLite file.
"""

from __future__ import annotations

from kms.service.keys import KMSService


def test_the_detail_of_a_key_of_101_versions_lists_the_newest_100(service: KMSService) -> None:
    service.create_key("k")
    for _ in range(100):
        service.rotate_key("k")
    shown = [version.version for version in service.get_key("k").key_versions]
    assert shown == list(range(2, 102))
