"""A key's cost is bounded by design, not by its history (issue 6, item 8), on a real SQLite file.

verify without a version tries only the newest ``verify_max_versions`` versions; a key's detail
lists only its newest 100 versions while ``list_versions`` pages through all; a rotation past
``max_versions`` is refused, also when it races past the service's own check.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kms.app import create_app
from kms.errors import ConfigurationError, InvalidRequest, KeyNotFound, TooManyVersions
from kms.service.cache import KeyMaterialCache
from kms.service.keyring import RootKeyring
from kms.service.keys import KMSService
from kms.service.keys.validation import KEY_DETAIL_VERSIONS
from kms.settings import Settings, load_settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import CountingRepository, make_service
from tests.helpers.tls import client_as

MESSAGE = b"release 1.2.3"
ROTATIONS = 200


@pytest.fixture
def counting(initialised: Settings) -> Iterator[CountingRepository]:
    repository = CountingRepository(create_kms_engine(initialised.database_url))
    yield repository
    repository.close()


def build(repository: SQLKeyRepository, keyring: RootKeyring, **limits: int) -> KMSService:
    # An empty cache each time: every version verify tries is read from the repository.
    return make_service(repository, keyring, KeyMaterialCache(0), **limits)


@pytest.fixture
def rotated(counting: CountingRepository, keyring: RootKeyring) -> dict[int, bytes]:
    """A signing key rotated 200 times (versions 1..201); the signature each version made."""
    service = build(counting, keyring)
    service.create_key("busy", "sign", "Ed25519")
    signatures = {1: service.sign("busy", MESSAGE).signature}
    for _ in range(ROTATIONS):
        version = service.rotate_key("busy").version
        signatures[version] = service.sign("busy", MESSAGE).signature
    assert sorted(signatures) == list(range(1, ROTATIONS + 2))
    return signatures


def test_a_bad_signature_tries_only_the_newest_16_versions(
    counting: CountingRepository, keyring: RootKeyring, rotated: dict[int, bytes]
) -> None:
    service = build(counting, keyring)
    counting.versions_read.clear()
    result = service.verify("busy", MESSAGE, b"\x00" * 64)
    assert not result.valid
    assert counting.versions_read == list(range(201, 185, -1))  # 16 versions, newest first


def test_the_16th_newest_version_verifies_and_the_17th_does_not(
    counting: CountingRepository, keyring: RootKeyring, rotated: dict[int, bytes]
) -> None:
    service = build(counting, keyring)
    accepted = service.verify("busy", MESSAGE, rotated[186])
    assert (accepted.valid, accepted.version) == (True, 186)
    refused = service.verify("busy", MESSAGE, rotated[185])
    assert (refused.valid, refused.version) == (False, None)
    assert service.verify("busy", MESSAGE, rotated[201]).version == 201


def test_verify_max_versions_is_configurable(
    counting: CountingRepository, keyring: RootKeyring, rotated: dict[int, bytes]
) -> None:
    service = build(counting, keyring, verify_max_versions=4)
    assert service.verify("busy", MESSAGE, rotated[198]).valid
    assert not service.verify("busy", MESSAGE, rotated[197]).valid
    widened = build(counting, keyring, verify_max_versions=201)
    assert widened.verify("busy", MESSAGE, rotated[1]).version == 1


def test_key_detail_lists_the_newest_100_versions(
    counting: CountingRepository, keyring: RootKeyring, rotated: dict[int, bytes]
) -> None:
    detail = build(counting, keyring).get_key("busy")
    assert detail.version == 201
    assert KEY_DETAIL_VERSIONS == 100
    assert [v.version for v in detail.key_versions] == list(range(102, 202))


def test_list_versions_pages_through_all_201(
    counting: CountingRepository, keyring: RootKeyring, rotated: dict[int, bytes]
) -> None:
    service = build(counting, keyring)
    seen: list[int] = []
    after = None
    while page := service.list_versions("busy", limit=64, after=after):
        assert len(page) <= 64
        seen.extend(v.version for v in page)
        after = page[-1].version
    assert seen == list(range(1, 202))
    assert [v.version for v in service.list_versions("busy", limit=3, after=199)] == [200, 201]


@pytest.mark.parametrize("limit", [0, 1001, True, "5"])
def test_list_versions_refuses_a_bad_limit(service: KMSService, limit: object) -> None:
    service.create_key("k", "sign", "Ed25519")
    with pytest.raises(InvalidRequest):
        service.list_versions("k", limit=limit)  # type: ignore[arg-type]


def test_list_versions_of_an_unknown_key_is_not_found(service: KMSService) -> None:
    with pytest.raises(KeyNotFound):
        service.list_versions("absent")


def test_rotation_past_max_versions_is_refused(
    counting: CountingRepository, keyring: RootKeyring
) -> None:
    service = build(counting, keyring, max_versions=3)
    service.create_key("capped")
    assert service.rotate_key("capped").version == 2
    assert service.rotate_key("capped").version == 3
    with pytest.raises(TooManyVersions) as excinfo:
        service.rotate_key("capped")
    assert "maximum of 3 versions" in excinfo.value.public_message
    assert "kms.max_versions" in excinfo.value.public_message
    assert service.get_key("capped").version == 3
    # Raising the limit lets the key rotate again: nothing was consumed by the refusals.
    assert build(counting, keyring, max_versions=4).rotate_key("capped").version == 4


def test_the_limit_is_checked_again_under_the_rows_write_lock(
    counting: CountingRepository, keyring: RootKeyring
) -> None:
    # A rotation that passed the service's first check before another one landed still stops
    # when it reads the row under its write lock; nothing is written.
    other = build(counting, keyring, max_versions=2)
    other.create_key("raced")

    def rotate_meanwhile(key_id: str) -> None:
        other.rotate_key(key_id)  # lands version 2, the limit

    racing = make_service(
        counting, keyring, KeyMaterialCache(0), max_versions=2, after_generation=rotate_meanwhile
    )
    with pytest.raises(TooManyVersions):
        racing.rotate_key("raced")
    assert counting.get_key("raced").latest_version == 2
    assert [v.version for v in counting.list_versions("raced")] == [1, 2]


# -- settings and the HTTP answer -----------------------------------------------------------------


def test_the_limits_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "kms.yaml"
    config.write_text(
        "kms:\n  verify_max_versions: 4\n  max_versions: 10\ndatabase:\n  dsn: kms.db\n",
        encoding="utf-8",
    )
    loaded = load_settings(config, environ={})
    assert (loaded.verify_max_versions, loaded.max_versions) == (4, 10)
    overridden = load_settings(config, environ={"KMS_KMS_MAX_VERSIONS": "12"})
    assert overridden.max_versions == 12
    defaults = Settings(database_dsn="kms.db")
    assert (defaults.verify_max_versions, defaults.max_versions) == (16, 100_000)


@pytest.mark.parametrize(
    ("key", "value"),
    [("verify_max_versions", 0), ("verify_max_versions", "x"), ("max_versions", 0)],
)
def test_a_bad_limit_names_the_setting(tmp_path: Path, key: str, value: object) -> None:
    config = tmp_path / "kms.yaml"
    config.write_text(f"kms:\n  {key}: {value}\ndatabase:\n  dsn: kms.db\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=f"kms.{key}"):
        load_settings(config, environ={})


def test_rotation_past_the_limit_is_a_409_with_the_reason(
    initialised: Settings, keyring: RootKeyring
) -> None:
    app = create_app(initialised.with_overrides(max_versions=2), keyring=keyring)
    client = client_as(app)
    assert client.post("/v1/kms/keys", json={"key_id": "capped"}).status_code == 201
    assert client.post("/v1/kms/keys/capped/rotate").status_code == 200
    refused = client.post("/v1/kms/keys/capped/rotate")
    assert refused.status_code == 409
    assert refused.get_json() == {
        "error": "key has reached the maximum of 2 versions (kms.max_versions); "
        "recreate it or use a new key"
    }
