"""Bulk seeding: a million correctly sealed keys without a million API calls.

Each key is made the way ``KMSService.create_key`` makes one (kms.service.keys): an AES-256-GCM
secret from the algorithm's own generator, wrapped by the keyring under the version's identity
(``KeyIdentity.aad``: key_id, version, purpose, algorithm, incarnation), the version row MAC'd over
that wrapped key (``encode_version_row``) and the key row MAC'd over all its fields
(``encode_key_row``). So the server reads them exactly as keys it made itself: a row that is not
right fails its MAC check and the benchmark's requests fail.

The crypto runs in a pool of processes (one per core, forked after the keyring is opened once);
the rows go into SQLite with ``executemany`` in one transaction. The seeded file is kept in a
cache directory under a name that holds everything its contents depend on (the schema's Alembic
head, this module's format number and the key count), with the passphrase file beside it, so a
rerun copies it instead of seeding again. PostgreSQL gets the same rows, the keystore metadata
(salt, KDF parameters, init marker) included, by ``COPY`` from that file: no crypto at all.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import secrets
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.load import BenchError

if TYPE_CHECKING:  # annotations only: the functions below import kms where they use it
    from sqlalchemy import Column

    from kms.settings import Settings
    from kms.store.records import KeyRecord

#: Raise when the rows this module writes change, so that old cache files are not reused.
SEED_FORMAT = 3
CHUNK = 5000
KEY_ID_PREFIX = "bench-cold-"
#: One key with many versions: the memory scenario fills a worker's key cache with its versions
#: (a batch decrypt of 1,000 ciphertexts loads 1,000 versions in one request).
MANY_VERSIONS_KEY = "bench-many-versions"

KEY_COLUMNS = (
    "key_id",
    "purpose",
    "algorithm",
    "state",
    "latest_version",
    "incarnation",
    "created_at",
    "updated_at",
    "mac",
    "description",
    "labels",
    "min_decryption_version",
    "min_available_version",
    "deletion_allowed",
    "pending_deletion_at",
    "use_attempts_while_pending",
    "last_use_attempt",
    "rotation_period",
    "max_encryptions_per_version",
)
VERSION_COLUMNS = (
    "key_id",
    "version",
    "wrapped_key",
    "public_key",
    "created_at",
    "mac",
    "encryptions",
    "decryptions",
    "last_used_at",
)


def cold_key_id(index: int) -> str:
    return f"{KEY_ID_PREFIX}{index:07d}"


@dataclass(frozen=True)
class Seeded:
    database: Path
    passphrase_file: Path
    #: One ciphertext per version of MANY_VERSIONS_KEY, one per line, version 1 first.
    ciphertexts: Path
    seconds: float  # 0.0 when it came from the cache
    cached: bool


def cache_name(count: int, versions: int) -> str:
    from kms.store.schema import head_revision

    return f"seed-v{SEED_FORMAT}-{head_revision()}-{count}-{versions}"


def seeded_sqlite(cache_dir: Path, count: int, versions: int, processes: int) -> Seeded:
    """The cached seeded database (``count`` one-version keys, and MANY_VERSIONS_KEY with
    ``versions`` versions), made now if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two runs at once (two worktrees' make bench) seed one after the other, not over each other.
    with (cache_dir / "seed.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _seeded_sqlite(cache_dir, count, versions, processes)


def _seeded_sqlite(cache_dir: Path, count: int, versions: int, processes: int) -> Seeded:
    name = cache_name(count, versions)
    database = cache_dir / f"{name}.db"
    passphrase = cache_dir / f"{name}.passphrase"
    ciphertexts = cache_dir / f"{name}.ciphertexts"
    if database.is_file() and passphrase.is_file() and ciphertexts.is_file():
        return Seeded(database, passphrase, ciphertexts, 0.0, cached=True)
    started = time.monotonic()
    partial = cache_dir / f"{name}.db.partial"
    for stale in (partial, database, passphrase, ciphertexts):
        stale.unlink(missing_ok=True)
    _write_passphrase(passphrase)
    _seed(partial, passphrase, ciphertexts, count, versions, processes)
    os.replace(partial, database)  # a run stopped half-way leaves no usable-looking file
    return Seeded(database, passphrase, ciphertexts, time.monotonic() - started, cached=False)


def _write_passphrase(path: Path) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(32) + "\n")


def _settings(database: Path, passphrase: Path) -> Settings:
    from kms.settings import Settings

    # The production KDF cost: the server refuses a keystore below it. It is paid once here.
    return Settings(database_dsn=str(database), master_passphrase_file=passphrase)


_keyring = None  # the forked pool's copy of the opened keyring


def default_signals() -> None:
    """In a forked helper: SIGTERM ends it quietly (the parent's handler unwinds the parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _seed(
    database: Path, passphrase: Path, ciphertexts: Path, count: int, versions: int, processes: int
) -> None:
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    from kms.master import init_database, open_master_keyring
    from kms.store.models import keys

    global _keyring  # handed to the forked workers, closed below
    settings = _settings(database, passphrase)
    init_database(settings)
    _keyring = open_master_keyring(settings)
    # The one timestamp of every row, in the form SQLAlchemy writes to SQLite.
    now = datetime.now(UTC)
    dialect = sqlite_dialect.dialect()
    stored_now = keys.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)(now)
    try:
        connection = sqlite3.connect(database, isolation_level=None)
        try:
            # A bulk load into a file nobody else has open, renamed into place only when done:
            # no journal is needed, and the WAL would only write every page twice.
            connection.execute("PRAGMA journal_mode=OFF")
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA cache_size=-65536")
            connection.execute("BEGIN IMMEDIATE")
            key_sql = _insert_sql("keys", KEY_COLUMNS)
            version_sql = _insert_sql("key_versions", VERSION_COLUMNS)
            fork = multiprocessing.get_context("fork")
            chunks = [
                (start, min(CHUNK, count - start), now, stored_now)
                for start in range(0, count, CHUNK)
            ]
            with fork.Pool(processes, initializer=default_signals) as pool:
                for key_rows, version_rows in pool.imap(_make_rows, chunks):
                    connection.executemany(key_sql, key_rows)
                    connection.executemany(version_sql, version_rows)
                ciphertexts.touch()  # present even with no versions key: the seed is complete
                if versions:
                    key_row = _many_versions_key(versions, now, stored_now)
                    connection.execute(key_sql, key_row)
                    version_chunks = [
                        (first, min(CHUNK, versions + 1 - first), key_row[5], now, stored_now)
                        for first in range(1, versions + 1, CHUNK)
                    ]
                    with ciphertexts.open("w", encoding="ascii") as lines:
                        for version_rows, texts in pool.imap(_make_versions, version_chunks):
                            connection.executemany(version_sql, version_rows)
                            lines.write("".join(text + "\n" for text in texts))
            connection.execute("COMMIT")
            connection.execute("PRAGMA journal_mode=WAL")  # as kms init leaves a database
        finally:
            connection.close()
    finally:
        _keyring.close()
        _keyring = None


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - constants


class _Splicer:
    """Re-encodes a record whose only changing fields have a fixed length, by splicing.

    ``encode`` is kms's own encoder (``encode_key_row``, ``encode_version_row``, the wrap AAD).
    It runs once on markers of the right lengths; each key's encoding is then the template with
    its values in the markers' places, and every chunk's first key is checked against ``encode``
    itself, so a change to kms's encodings fails the seeding instead of sealing wrong rows.
    """

    def __init__(self, encode: Callable[..., bytes], markers: tuple[bytes, ...]) -> None:
        self._encode = encode
        template = encode(*markers)
        places = []
        for marker in markers:
            if template.count(marker) != 1:
                raise BenchError("a seeding marker is not unique in its encoding")
            places.append((template.index(marker), len(marker)))
        order = sorted(range(len(markers)), key=lambda i: places[i][0])
        self._order = order
        self._pieces: list[bytes] = []
        cursor = 0
        for i in order:
            at, length = places[i]
            self._pieces.append(template[cursor:at])
            cursor = at + length
        self._tail = template[cursor:]
        self._lengths = [len(marker) for marker in markers]

    def __call__(self, *values: bytes) -> bytes:
        parts: list[bytes] = []
        for piece, i in zip(self._pieces, self._order, strict=True):
            parts += (piece, values[i])
        parts.append(self._tail)
        return b"".join(parts)

    def check(self, values: tuple[bytes, ...], arguments: tuple[object, ...]) -> bytes:
        spliced = self(*values)
        if [len(value) for value in values] != self._lengths or spliced != self._encode(*arguments):
            raise BenchError("kms's row encoding changed: update bench/seed.py (SEED_FORMAT)")
        return spliced


def _make_rows(chunk: tuple[int, int, datetime, str]) -> tuple[list[tuple], list[tuple]]:
    """Key and version rows for keys ``start .. start + size - 1`` (in a pool process)."""
    from kms.crypto.algorithms import ALGORITHMS
    from kms.crypto.wrapping import WRAP_FORMAT_V4, KeyIdentity
    from kms.service.integrity import encode_key_row, encode_version_row
    from kms.service.keyring import zeroise
    from kms.store.records import KeyRecord

    start, size, now, stored_now = chunk
    keyring = _keyring
    if keyring is None:
        raise BenchError("the seeding pool has no keyring")
    spec = ALGORITHMS["AES-256-GCM"]

    def record_of(key_id: str, incarnation: str) -> KeyRecord:
        return KeyRecord(
            key_id=key_id,
            purpose=spec.purpose.value,
            algorithm=spec.name,
            state="enabled",
            latest_version=1,
            incarnation=incarnation,
            created_at=now,
        )

    def key_row(key_id: bytes, incarnation: bytes) -> bytes:
        return encode_key_row(record_of(key_id.decode(), incarnation.decode()))

    def identity_aad(key_id: bytes, incarnation: bytes) -> bytes:
        return KeyIdentity(
            key_id.decode(), 1, spec.purpose.value, spec.name, incarnation.decode()
        ).aad(WRAP_FORMAT_V4, keyring.keystore_id)

    def version_row(key_id: bytes, incarnation: bytes, wrapped: bytes) -> bytes:
        record = record_of(key_id.decode(), incarnation.decode())
        return encode_version_row(record, 1, wrapped, None)

    id_marker = b"K" * len(cold_key_id(0))
    incarnation_marker = b"Q" * 32  # secrets.token_hex(16), as create_key makes it
    wrapped_marker = b"\xfe" * (1 + 12 + 32 + 16)  # format, nonce, AES-256 key, tag
    key_encoding = _Splicer(key_row, (id_marker, incarnation_marker))
    aad_encoding = _Splicer(identity_aad, (id_marker, incarnation_marker))
    version_encoding = _Splicer(version_row, (id_marker, incarnation_marker, wrapped_marker))

    key_rows: list[tuple] = []
    version_rows: list[tuple] = []
    for index in range(start, start + size):
        key_id = cold_key_id(index)
        incarnation = secrets.token_hex(16)
        raw_id, raw_incarnation = key_id.encode(), incarnation.encode()
        secret = spec.generate()
        try:
            if index == start:
                aad = aad_encoding.check((raw_id, raw_incarnation), (raw_id, raw_incarnation))
            else:
                aad = aad_encoding(raw_id, raw_incarnation)
            wrapped = keyring.wrap(secret, aad)
        finally:
            zeroise(secret)
        if index == start:
            key_encoded = key_encoding.check((raw_id, raw_incarnation), (raw_id, raw_incarnation))
            version_encoded = version_encoding.check(
                (raw_id, raw_incarnation, wrapped), (raw_id, raw_incarnation, wrapped)
            )
        else:
            key_encoded = key_encoding(raw_id, raw_incarnation)
            version_encoded = version_encoding(raw_id, raw_incarnation, wrapped)
        key_rows.append(
            _key_row(
                key_id,
                spec.purpose.value,
                spec.name,
                1,
                incarnation,
                stored_now,
                keyring.tag(key_encoded),
            )
        )
        version_rows.append(
            (key_id, 1, wrapped, None, stored_now, keyring.tag(version_encoded), 0, 0, None)
        )
    return key_rows, version_rows


def _many_versions_record(versions: int, incarnation: str, now: datetime) -> KeyRecord:
    from kms.store.records import KeyRecord

    return KeyRecord(
        key_id=MANY_VERSIONS_KEY,
        purpose="encrypt",
        algorithm="AES-256-GCM",
        state="enabled",
        latest_version=versions,
        incarnation=incarnation,
        created_at=now,
    )


def _many_versions_key(versions: int, now: datetime, stored_now: str) -> tuple:
    from kms.service.integrity import encode_key_row

    if _keyring is None:
        raise BenchError("the seeder has no keyring")
    record = _many_versions_record(versions, secrets.token_hex(16), now)
    mac = _keyring.tag(encode_key_row(record))
    return _key_row(
        record.key_id,
        record.purpose,
        record.algorithm,
        versions,
        record.incarnation,
        stored_now,
        mac,
    )


def _key_row(
    key_id: str,
    purpose: str,
    algorithm: str,
    latest_version: int,
    incarnation: str,
    stored_now: str,
    mac: bytes,
) -> tuple:
    """A row in KEY_COLUMNS' order: an enabled key with every policy field at its default, as
    ``KMSService.create_key`` writes one (the MAC covers those defaults)."""
    return (
        key_id,
        purpose,
        algorithm,
        "enabled",
        latest_version,
        incarnation,
        stored_now,
        stored_now,
        mac,
        "",
        "{}",
        1,
        1,
        1,
        None,
        0,
        None,
        None,
        None,
    )


def _make_versions(
    chunk: tuple[int, int, str, datetime, str],
) -> tuple[list[tuple], list[str]]:
    """Version rows ``first .. first + size - 1`` of MANY_VERSIONS_KEY, each with a ciphertext
    made under it as ``KMSService`` makes one (kms.crypto.ciphertext), in a pool process."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from kms.crypto.ciphertext import ciphertext_aad, format_ciphertext
    from kms.crypto.wrapping import KeyIdentity
    from kms.service.integrity import encode_version_row
    from kms.service.keyring import zeroise

    first, size, incarnation, now, stored_now = chunk
    keyring = _keyring
    if keyring is None:
        raise BenchError("the seeding pool has no keyring")
    rows: list[tuple] = []
    texts: list[str] = []
    for version in range(first, first + size):
        record = _many_versions_record(version, incarnation, now)
        secret = bytearray(os.urandom(32))
        try:
            identity = KeyIdentity(
                record.key_id, version, record.purpose, record.algorithm, incarnation
            )
            wrapped = keyring.wrap(secret, identity)
            nonce = os.urandom(12)
            sealed = AESGCM(bytes(secret)).encrypt(
                nonce, b"bench", ciphertext_aad(record.key_id, version)
            )
        finally:
            zeroise(secret)
        mac = keyring.tag(encode_version_row(record, version, wrapped, None))
        rows.append((record.key_id, version, wrapped, None, stored_now, mac, 0, 0, None))
        texts.append(format_ciphertext(version, nonce, sealed))
    return rows, texts


def copy_to_postgres(seeded: Seeded, url: str) -> float:
    """Put the seeded keystore into the empty PostgreSQL database at ``url``; seconds taken.

    The schema comes from kms's migrations; the rows, the keystore metadata (salt, KDF
    parameters, init marker) included, are read from the SQLite file already formatted as
    ``COPY`` text by SQLite itself, so that Python only moves large strings.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy import create_engine

    from kms.store.models import metadata
    from kms.store.schema import upgrade_to_head

    started = time.monotonic()
    engine = create_engine(url)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()
    dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
    source = sqlite3.connect(f"file:{seeded.database}?mode=ro", uri=True)
    try:
        with psycopg.connect(dsn) as target, target.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")  # SQLite holds UTC times without a zone
            # A foreign key is checked row by row during COPY (a trigger per row); checked once
            # for the whole table when put back, it costs a fraction. Put back exactly as the
            # migrations made it, in the same transaction.
            foreign_keys = cursor.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
            ).fetchall()
            for table, name, _definition in foreign_keys:
                cursor.execute(
                    sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                        sql.Identifier(table), sql.Identifier(name)
                    )
                )
            for table in metadata.sorted_tables:
                columns = [column.name for column in table.columns]
                line = " || '\t' || ".join(_copy_text(column) for column in table.columns)
                rows = source.execute(f"SELECT {line} FROM {table.name}")  # noqa: S608
                with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                    while batch := rows.fetchmany(20_000):
                        copy.write("\n".join(text for (text,) in batch) + "\n")
            for table, name, definition in foreign_keys:
                cursor.execute(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
                        sql.Identifier(table), sql.Identifier(name)
                    )
                    + sql.SQL(definition)
                )
            target.commit()
            cursor.execute("ANALYZE")
    finally:
        source.close()
    return time.monotonic() - started


def _copy_text(column: Column[Any]) -> str:
    """An SQLite expression giving the column's value in PostgreSQL's COPY text format."""
    from sqlalchemy import Boolean, LargeBinary

    name = column.name
    if isinstance(column.type, LargeBinary):
        value = f"'\\\\x' || hex({name})"  # bytea's hex input, its backslash escaped for COPY
    elif isinstance(column.type, Boolean):
        value = f"CASE WHEN {name} THEN 't' ELSE 'f' END"
    else:
        value = (
            f"replace(replace(replace(replace(CAST({name} AS TEXT), '\\', '\\\\'), "
            f"char(9), '\\t'), char(10), '\\n'), char(13), '\\r')"
        )
    return f"CASE WHEN {name} IS NULL THEN '\\N' ELSE {value} END"


def copy_database(seeded: Seeded, directory: Path) -> tuple[Path, Path]:
    """A working copy of the cached database and its passphrase file, for one run to write to."""
    database = directory / "kms.db"
    shutil.copyfile(seeded.database, database)
    passphrase = directory / "master.passphrase"
    passphrase.unlink(missing_ok=True)
    shutil.copyfile(seeded.passphrase_file, passphrase)
    passphrase.chmod(0o600)
    return database, passphrase
