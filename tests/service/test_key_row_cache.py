"""The key-row cache of the hot path (issue 12), in process, on a real SQLite file and PostgreSQL.

Each service here stands for one worker: its own engine, its own caches. They share the database
and, on SQLite, the change counters file beside it (each maps it separately, as processes do).
The real-server versions of these checks are in tests/http/test_cache_staleness.py.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, text

from kms.errors import (
    InvalidCiphertext,
    KeyDisabled,
    KeyNotFound,
    KeyPendingDeletion,
    KMSError,
)
from kms.master import destroy_due_keys
from kms.service.cache import ROW_BASE_BYTES, KeyMaterialCache, KeyRowCache, row_bytes
from kms.service.keyring import RootKeyring
from kms.service.keys import Decrypted, KMSService
from kms.settings import Settings
from kms.store.changes import (
    BUCKETS,
    TABLE_BYTES,
    KeyChanges,
    LocalChanges,
    PostgresChangeListener,
    bucket_of,
    changes_path,
    open_changes,
)
from kms.store.db import create_kms_engine
from kms.store.records import utc_now
from kms.store.repository import SQLKeyRepository
from tests.helpers.keystore import make_service

#: Long enough that only the change counters can explain a change seen within a test.
LONG_BOUND_MS = 60_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Worker:
    """One service over its own engine, with a statement counter on that engine."""

    def __init__(
        self,
        settings: Settings,
        keyring: RootKeyring,
        *,
        staleness_ms: int = 1000,
        changes: KeyChanges | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 4096,
        max_bytes: int = 2**40,
    ) -> None:
        self.engine: Engine = create_kms_engine(settings.database_url)
        self.changes = (
            open_changes(settings.database_url, create=True) if changes is None else changes
        )
        self.repository = SQLKeyRepository(self.engine, self.changes)
        self.rows = KeyRowCache(
            staleness_ms,
            self.repository.change_mark,
            max_entries=max_entries,
            max_bytes=max_bytes,
            clock=clock,
        )
        self.service = make_service(
            self.repository, keyring, KeyMaterialCache(1024), rows=self.rows
        )
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        self.statements.append(statement)

    def close(self) -> None:
        self.repository.close()


@pytest.fixture
def workers(initialised: Settings, keyring: RootKeyring) -> Iterator[Callable[..., KMSService]]:
    built: list[Worker] = []

    def build(**options: object) -> Worker:
        worker = Worker(initialised, keyring, **options)
        built.append(worker)
        return worker

    yield build
    for worker in built:
        worker.close()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _hot_calls(service: KMSService) -> list[Callable[[], object]]:
    """One of every hot-path operation, on keys made here (AES, Ed25519, ECDSA, HMAC)."""
    service.create_key("aes")
    service.create_key("ed", purpose="sign", algorithm="Ed25519")
    service.create_key("ec", purpose="sign", algorithm="ECDSA-P256")
    service.create_key("hmac", purpose="mac", algorithm="HMAC-SHA256")
    ciphertext = service.encrypt("aes", b"secret").ciphertext
    ed_signature = service.sign("ed", b"message").signature
    ec_signature = service.sign("ec", b"message").signature
    tag = service.mac("hmac", b"message").mac
    return [
        lambda: service.encrypt("aes", b"secret"),
        lambda: service.decrypt("aes", ciphertext),
        lambda: service.generate_data_key("aes"),
        lambda: service.rewrap("aes", ciphertext),
        lambda: service.encrypt_batch("aes", [{"plaintext": b"a"}, {"plaintext": b"b"}]),
        lambda: service.decrypt_batch("aes", [{"ciphertext": ciphertext}]),
        lambda: service.sign("ed", b"message"),
        lambda: service.verify("ed", b"message", ed_signature),
        lambda: service.sign("ec", b"message"),
        lambda: service.verify("ec", b"message", ec_signature),
        lambda: service.mac("hmac", b"message"),
        lambda: service.verify_mac("hmac", b"message", tag),
    ]


@pytest.mark.parametrize(("staleness_ms", "reads_per_call"), [(1000, 0), (0, 1)])
def test_a_warm_key_costs_no_sql_statement(
    workers: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    staleness_ms: int,
    reads_per_call: int,
) -> None:
    # Decryption counts are flushed every 10 s: not during this test. And the cache's clock
    # stands still, so that a slow moment on a busy machine cannot age the rows past the bound.
    monkeypatch.setattr("kms.service.keys.limits.FLUSH_SECONDS", 3600.0)
    worker = workers(staleness_ms=staleness_ms, clock=FakeClock())
    calls = _hot_calls(worker.service)
    for call in calls:  # warm: rows read, material unwrapped, an encryption block reserved
        call()
    worker.statements.clear()
    for _ in range(3):
        for call in calls:
            call()
    # With the default bound nothing at all; with 0, exactly the key row per call (as before).
    assert len(worker.statements) == 3 * len(calls) * reads_per_call, worker.statements
    assert all("FROM keys" in statement for statement in worker.statements)


def test_another_workers_change_is_seen_at_once_through_the_counter_file(
    workers: Callable[..., Worker], initialised: Settings
) -> None:
    a = workers(staleness_ms=LONG_BOUND_MS)
    b = workers(staleness_ms=LONG_BOUND_MS)
    a.service.create_key("k")
    assert b.service.encrypt("k", b"x").version == 1  # cached by b

    a.service.rotate_key("k")
    assert b.service.encrypt("k", b"x").version == 2

    a.service.disable_key("k")
    with pytest.raises(KeyDisabled):
        b.service.encrypt("k", b"x")
    a.service.enable_key("k")
    assert b.service.encrypt("k", b"x").version == 2

    old = b.service.encrypt("k", b"before").ciphertext
    a.service.recreate_key("k")
    new = b.service.encrypt("k", b"after")
    assert new.version == 1
    assert a.service.decrypt("k", new.ciphertext).plaintext == b"after"
    with pytest.raises(InvalidCiphertext):
        b.service.decrypt("k", old)

    a.service.update_key("k", description="policy fields too")
    a.service.delete_key("k")
    with pytest.raises(KeyNotFound):
        b.service.encrypt("k", b"x")

    path = changes_path(initialised.database_url)
    assert path is not None and path.stat().st_size == TABLE_BYTES
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_change_the_counters_miss_is_seen_once_the_bound_passes(
    workers: Callable[..., Worker],
) -> None:
    """The hard bound: a worker that hears of no change still re-reads a row that old."""
    clock = FakeClock()
    a = workers(staleness_ms=LONG_BOUND_MS)
    deaf = workers(staleness_ms=1000, changes=LocalChanges(), clock=clock)
    a.service.create_key("k")
    deaf.service.encrypt("k", b"x")
    a.service.disable_key("k")
    clock.now += 0.999
    deaf.service.encrypt("k", b"x")  # within the window: the cached row, as documented
    clock.now += 0.001
    with pytest.raises(KeyDisabled):
        deaf.service.encrypt("k", b"x")


def test_the_worker_that_made_a_change_sees_it_at_once(workers: Callable[..., Worker]) -> None:
    # Its own counters are local (as on PostgreSQL before its NOTIFY comes back).
    clock = FakeClock()
    worker = workers(staleness_ms=LONG_BOUND_MS, changes=LocalChanges(), clock=clock)
    service = worker.service
    service.create_key("k")
    service.encrypt("k", b"x")
    service.rotate_key("k")
    assert service.encrypt("k", b"x").version == 2
    service.disable_key("k")
    with pytest.raises(KeyDisabled):
        service.encrypt("k", b"x")
    service.enable_key("k")
    service.encrypt("k", b"x")
    service.delete_key("k", pending_days=7)
    with pytest.raises(KeyPendingDeletion):
        service.encrypt("k", b"x")
    service.cancel_deletion("k")
    with pytest.raises(KeyDisabled):
        service.encrypt("k", b"x")
    service.enable_key("k")
    service.delete_key("k")
    with pytest.raises(KeyNotFound):
        service.encrypt("k", b"x")


def test_a_stale_row_never_turns_a_good_ciphertext_signature_or_mac_into_invalid(
    workers: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that missed every notification (local counters, a long bound) still decrypts
    and verifies what the current key made: the row is read again when the cached one fails."""
    a = workers(staleness_ms=LONG_BOUND_MS)
    deaf = workers(staleness_ms=LONG_BOUND_MS, changes=LocalChanges())
    a.service.create_key("aes")
    a.service.create_key("ed", purpose="sign", algorithm="Ed25519")
    a.service.create_key("hmac", purpose="mac", algorithm="HMAC-SHA256")
    old = deaf.service.encrypt("aes", b"v1").ciphertext
    deaf.service.verify("ed", b"m", a.service.sign("ed", b"m").signature)
    deaf.service.verify_mac("hmac", b"m", a.service.mac("hmac", b"m").mac)

    # A version the cached row does not know yet.
    a.service.rotate_key("aes")
    a.service.rotate_key("ed")
    a.service.rotate_key("hmac")
    v2 = a.service.encrypt("aes", b"v2")
    assert deaf.service.decrypt("aes", v2.ciphertext).plaintext == b"v2"
    assert deaf.service.verify("ed", b"m", a.service.sign("ed", b"m").signature).version == 2
    assert deaf.service.verify_mac("hmac", b"m", a.service.mac("hmac", b"m").mac).version == 2

    # A recreate: same version numbers, another incarnation; no integrity alarm either.
    for key_id in ("aes", "ed", "hmac"):
        a.service.recreate_key(key_id)
    caplog.clear()
    fresh = a.service.encrypt("aes", b"new")
    assert deaf.service.decrypt("aes", fresh.ciphertext).plaintext == b"new"
    signed = a.service.sign("ed", b"m")
    assert deaf.service.verify("ed", b"m", signed.signature).valid
    assert deaf.service.verify_mac("hmac", b"m", a.service.mac("hmac", b"m").mac).valid
    assert "integrity" not in caplog.text

    # Batches: only what failed is redone, on the new row; what really is invalid stays so.
    a.service.rotate_key("aes")
    newest = a.service.encrypt("aes", b"v2 of the new key").ciphertext
    results = deaf.service.decrypt_batch(
        "aes", [{"ciphertext": newest}, {"ciphertext": old}, {"ciphertext": fresh.ciphertext}]
    )
    assert isinstance(results[0], Decrypted) and results[0].plaintext == b"v2 of the new key"
    assert isinstance(results[1], InvalidCiphertext)  # made by the destroyed incarnation
    assert isinstance(results[2], Decrypted) and results[2].plaintext == b"new"
    with pytest.raises(InvalidCiphertext):
        deaf.service.decrypt("aes", old)
    assert "integrity" not in caplog.text


def test_the_row_cache_holds_at_most_its_entries_and_bytes(
    workers: Callable[..., Worker],
) -> None:
    by_entries = workers(max_entries=5, clock=FakeClock())
    for number in range(40):
        by_entries.service.create_key(f"key-{number}")
    for number in range(40):
        by_entries.service.encrypt(f"key-{number}", b"x")
        assert len(by_entries.rows) <= 5
    assert len(by_entries.rows) == 5

    by_bytes = workers(max_bytes=3 * ROW_BASE_BYTES + 100, clock=FakeClock())
    for number in range(40):
        by_bytes.service.encrypt(f"key-{number}", b"x")
        assert by_bytes.rows.size_bytes <= 3 * ROW_BASE_BYTES + 100
    assert 1 <= len(by_bytes.rows) <= 3
    # The most recently read keys are the ones kept, and still hit.
    by_bytes.statements.clear()
    by_bytes.service.encrypt("key-39", b"x")
    assert not by_bytes.statements


def test_the_material_cache_holds_at_most_its_entries_and_bytes() -> None:
    cache = KeyMaterialCache(max_entries=100, max_bytes=1000)
    for number in range(50):
        cache.put(("secret", f"k{number}", "i", 1), object(), 300)
        assert cache.size_bytes <= 1000
    assert len(cache) == 3
    cache.put(("secret", "too-big", "i", 1), object(), 1001)
    assert cache.get(("secret", "too-big", "i", 1)) is None
    cache.drop_key("k49")
    assert len(cache) == 2 and cache.size_bytes == 600
    small = KeyMaterialCache(max_entries=4)
    for number in range(50):
        small.put(("secret", f"k{number}", "i", 1), object(), 300)
    assert len(small) == 4


def test_row_bytes_count_the_variable_fields(workers: Callable[..., Worker]) -> None:
    worker = workers()
    worker.service.create_key("k", description="d" * 200, labels={"team": "t" * 100})
    key = worker.repository.get_key("k")
    assert row_bytes(key) > ROW_BASE_BYTES + 300


def test_a_command_that_writes_is_seen_by_a_server_at_once(
    workers: Callable[..., Worker], initialised: Settings
) -> None:
    """``kms destroy-due`` (through its library function, with its clock moved on) bumps the
    counters the server made; a server caching the row for a minute sees the key gone at once."""
    server = workers(staleness_ms=LONG_BOUND_MS)
    server.service.create_key("k")
    server.service.encrypt("k", b"x")
    server.service.delete_key("k", pending_days=1)
    with pytest.raises(KeyPendingDeletion):
        server.service.encrypt("k", b"x")  # the pending row is now the cached one

    destroyed = destroy_due_keys(
        initialised,
        on_destroyed=lambda _key: None,
        on_failure=lambda _key_id, error: pytest.fail(str(error)),
        now=utc_now() + timedelta(days=2),
    )
    assert destroyed == ["k"]
    with pytest.raises(KeyNotFound):
        server.service.encrypt("k", b"x")


def test_a_command_does_not_make_the_counters_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kms.db'}"
    command = open_changes(url)
    command.bump("k")  # no server made the file: nobody to tell, nothing made
    assert not (tmp_path / "kms.db.changes").exists()
    assert command.mark("k") == 1  # still counted in the process itself
    server = open_changes(url, create=True)
    assert server.mark("k") == 0
    assert (tmp_path / "kms.db.changes").stat().st_mode & 0o777 == 0o600
    open_changes(url).bump("k")
    assert server.mark("k") == 1
    server.close()


def test_an_unusable_counters_file_falls_back_to_the_bound_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "kms.db.changes").mkdir()  # cannot be opened as a file
    changes = open_changes(f"sqlite:///{tmp_path / 'kms.db'}", create=True)
    with caplog.at_level(logging.WARNING, logger="kms.cache"):
        assert changes.mark("k") == 0
        changes.bump("k")
        assert changes.mark("k") == 1
    assert "kms.cache_staleness_ms" in caplog.text


def test_buckets_spread_key_ids() -> None:
    used = {bucket_of(f"key-{number}") for number in range(1000)}
    assert len(used) > 800 and all(0 <= bucket < BUCKETS for bucket in used)


# -- PostgreSQL: NOTIFY ---------------------------------------------------------------------------


@pytest.fixture
def pg_settings(tmp_path: Path, postgres_url: str) -> Settings:
    from tests.helpers.keystore import make_settings

    return make_settings(tmp_path).with_overrides(database_dsn=postgres_url)


@pytest.fixture
def pg_workers(
    pg_settings: Settings,
) -> Iterator[Callable[..., tuple[Worker, PostgresChangeListener]]]:
    from kms.master import init_database, open_master_keyring

    init_database(pg_settings)
    keyring = open_master_keyring(pg_settings)
    built: list[tuple[Worker, PostgresChangeListener]] = []

    def build(**options: object) -> tuple[Worker, PostgresChangeListener]:
        changes = LocalChanges()
        worker = Worker(pg_settings, keyring, changes=changes, **options)
        listener = PostgresChangeListener(
            pg_settings.database_url, changes, application_name="kms-server", poll_seconds=0.2
        )
        listener.start()
        worker.repository.on_close(listener.stop)
        built.append((worker, listener))
        assert listener.listening.wait(20), "the listener never listened"
        return worker, listener

    yield build
    for worker, _ in built:
        worker.close()
    keyring.close()


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``seconds`` (a deadline, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("not seen before the deadline")
        time.sleep(0.02)


def _raises(call: Callable[[], object], error: type[KMSError]) -> bool:
    try:
        call()
    except error:
        return True
    return False


def test_postgres_notify_tells_other_nodes_long_before_the_bound(
    pg_workers: Callable[..., tuple[Worker, PostgresChangeListener]],
) -> None:
    (a, _), (b, _) = pg_workers(staleness_ms=LONG_BOUND_MS), pg_workers(staleness_ms=LONG_BOUND_MS)
    a.service.create_key("k")
    b.service.encrypt("k", b"x")
    a.service.disable_key("k")
    # The bound is a minute: only the notification can make b see it within the deadline.
    _eventually(lambda: _raises(lambda: b.service.encrypt("k", b"x"), KeyDisabled))
    a.service.enable_key("k")
    _eventually(lambda: not _raises(lambda: b.service.encrypt("k", b"x"), KeyDisabled))
    a.service.rotate_key("k")
    _eventually(lambda: b.service.encrypt("k", b"x").version == 2)
    # A ciphertext of a version b has not seen yet decrypts there at once, notification or not.
    a.service.rotate_key("k")
    v3 = a.service.encrypt("k", b"three")
    assert b.service.decrypt("k", v3.ciphertext).plaintext == b"three"
    a.service.delete_key("k")
    _eventually(lambda: _raises(lambda: b.service.encrypt("k", b"x"), KeyNotFound))


def test_a_lost_listener_connection_drops_the_cache_and_reconnects(
    pg_workers: Callable[..., tuple[Worker, PostgresChangeListener]], pg_settings: Settings
) -> None:
    (a, _), (b, listener) = (
        pg_workers(staleness_ms=LONG_BOUND_MS),
        pg_workers(staleness_ms=LONG_BOUND_MS),
    )
    a.service.create_key("k")

    def served_from_cache() -> bool:
        # The create's own notification may reach b after its first read: poll, not assume.
        b.statements.clear()
        b.service.encrypt("k", b"x")
        return not b.statements

    _eventually(served_from_cache)

    admin = create_kms_engine(pg_settings.database_url)
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'kms-server'"
                )
            ).scalar_one()
        assert ended == 2
    finally:
        admin.dispose()
    _eventually(lambda: not listener.listening.is_set() or bool(b.rows.get("k") is None))
    _eventually(listener.listening.is_set)
    # Everything cached before the loss was dropped, and notifications flow again.
    b.statements.clear()
    b.service.encrypt("k", b"x")
    assert any("FROM keys" in statement for statement in b.statements)
    a.service.disable_key("k")
    _eventually(lambda: _raises(lambda: b.service.encrypt("k", b"x"), KeyDisabled))
