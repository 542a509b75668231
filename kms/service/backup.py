"""The backup file format, and the rules for trusting one.

A backup (``kms-backup/3``) is a cleartext header line, then a document sealed under a key of its
own:

1. The header, canonical JSON (sorted keys, no spaces) and a newline:
   ``{"format": "kms-backup/3", "keystore_id": "<base64>", "salt": "<base64, 32 bytes>",
   "sealed": {"kdf_parameters": "<base64>", "root_secret": "<base64>"}}``: ``sealed`` holds the
   keystore's sealed root secret as its ``kms_metadata`` rows hold it (kms.service.masterkey:
   the KDF parameters only with the ``passphrase`` backend).
2. The document, sealed in chunks (kms.crypto.stream: AES-256-GCM, STREAM) under the backup
   encryption key ``HKDF-SHA256(root secret, salt = the header's salt, info =
   "kms/backup-encryption/v1" || keystore binding)``, with the header line as every chunk's
   associated data. The salt is new for every backup.

The header is all that is readable without the passphrase (or the HSM's key), and is what a
restore into an empty database needs before it can open anything: the master-key backend opens
the sealed root secret (the passphrase with the KDF parameters, or the HSM's key), the keystore
id binds it, and the salt makes the file's key its own. None of it is secret: the root secret is
sealed under AES-256-GCM, and the salt and the iteration count only set the cost of a guess
(PBKDF2, 600,000 iterations at least), as for any passphrase-encrypted file; the init marker,
the key ids, labels, descriptions, callers, counters, times, the row count and the schema
revision are all inside.

The document is a ``kms-backup/2`` backup, as earlier releases wrote it, UTF-8 JSON lines:

1. ``{"format": "kms-backup/2", "schema": "<alembic revision>", "rows": N}``
2. N row lines ``{"table": "<name>", "row": {<column>: <value>}}``, tables parents-first, rows in
   primary-key order. Values: JSON null, integers and strings as themselves; bytes as
   ``{"b64": "..."}``; times as ``{"time": "<ISO 8601, UTC>"}``.
3. ``{"tag": "<base64>"}``: HMAC-SHA256, under the backup key (HKDF of the root secret,
   ``kms/backup/v1``) and bound to the keystore id (a format-2 tag, kms.crypto.integrity), of
   every byte before this line. Format ``kms-backup/1`` (before keystore binding) had the same
   tag unbound; this kms restores only schema revisions of its own, which no such backup has.

A ``kms-backup/2`` file alone (taken before format 3) still restores, checked as before: it is
authenticated but not encrypted (destroy such files once a newer backup exists).

Nothing in it is unwrapped: the key versions are the wrapped blobs the database holds, under the
root secret's wrapping key. Restoring a format-3 file opens the header's sealed root secret with
the configured backend; a wrong passphrase (or HSM key), another keystore's, a changed header or
any changed, moved, dropped or added byte makes the root secret or the stream fail to open,
before any of the document is parsed. The document's own ``kms_metadata`` rows must then hold the
header's sealed root secret and keystore id, its init marker must unwrap and its tag must match.
(A format-2 file's root secret is opened from the document's own rows; one taken before root
secrets, keystore format 3, has the passphrase-derived key as its root secret.) The keystore id
binds the encryption key, the init marker and the tag: a backup whose rows were swapped for
another keystore's fails. Nothing is written before all of it has been checked.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms.crypto.stream import CHUNK_BYTES, STREAM_SALT_BYTES, StreamSealer, open_stream
from kms.errors import (
    BackupError,
    InvalidBackup,
    InvalidKDFParameters,
    KeystoreError,
    UnwrapFailed,
    WrongPassphrase,
)
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keystore import init_marker_aad, init_marker_aad_v3
from kms.service.masterkey import BACKEND_ROWS, MasterKeyBackend
from kms.store.models import kms_metadata
from kms.store.records import INIT_MARKER, KEYSTORE_ID, ROOT_SECRET

#: The file: a cleartext header and the document, sealed.
FORMAT = "kms-backup/3"
#: The document inside (and, alone, a backup taken before format 3: authenticated only).
DOCUMENT_FORMAT = "kms-backup/2"
Row = dict[str, Any]


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {"time": value.isoformat()}
    # bool before int: JSON keeps true/false apart from 1/0 (keys.deletion_allowed).
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"cannot back up a {type(value).__name__} value")


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            return base64.b64decode(value["b64"], validate=True)
        if set(value) == {"time"} and isinstance(value["time"], str):
            moment = datetime.fromisoformat(value["time"])
            if moment.tzinfo is None:
                raise ValueError("a time without a zone")
            return moment
        raise ValueError("an unknown value")
    if value is None or isinstance(value, bool | int | str):
        return value
    raise ValueError("an unknown value")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def file_header(sealed: dict[str, bytes], keystore_id: bytes, salt: bytes) -> bytes:
    """A format-3 file's cleartext header line: ``sealed`` is the keystore's sealed root secret
    (its ``kms_metadata`` rows named in ``BACKEND_ROWS``)."""
    return _line(
        {
            "format": FORMAT,
            "keystore_id": _b64(keystore_id),
            "salt": _b64(salt),
            "sealed": {name: _b64(value) for name, value in sorted(sealed.items())},
        }
    )


class BackupWriter:
    """Builds a backup's bytes as the rows come: each call returns what to write next (the
    sealed chunks that are full; the cleartext header first). Holds at most one chunk of the
    document, never the whole of it."""

    def __init__(self, keyring: RootKeyring, sealed: dict[str, bytes]) -> None:
        """``sealed``: the keystore's ``kms_metadata`` rows that seal its root secret, as read
        before the snapshot (``BACKEND_ROWS``)."""
        self._expected = {**sealed, KEYSTORE_ID: keyring.keystore_id}
        salt = os.urandom(STREAM_SALT_BYTES)
        self._header = file_header(sealed, keyring.keystore_id, salt)
        self._sealer = StreamSealer(keyring.backup_cipher(salt), self._header, CHUNK_BYTES)
        self._mac = keyring.backup_mac()
        self._tag = self._mac.running()

    def header(self, schema: str, rows: int) -> bytes:
        """The cleartext header, and the document's own header line (sealed)."""
        first = self._add(_line({"format": DOCUMENT_FORMAT, "schema": schema, "rows": rows}))
        return self._header + first

    def row(self, table: str, row: Row) -> bytes:
        if table == kms_metadata.name and row.get("name") in (*BACKEND_ROWS, KEYSTORE_ID):
            expected = self._expected.get(row["name"], b"")
            value = row.get("value")
            if not isinstance(value, bytes) or not hmac.compare_digest(value, expected):
                raise BackupError(
                    "the keystore was rekeyed while the backup was taken; take it again"
                )
        return self._add(
            _line({"table": table, "row": {k: _encode_value(v) for k, v in row.items()}})
        )

    def seal(self) -> bytes:
        """The document's tag line and the last chunk; the writer is closed after it."""
        try:
            tag = self._tag.tag()
        finally:
            self._mac.close()
        last = _line({"tag": base64.b64encode(tag).decode("ascii")})
        return self._sealer.update(last) + self._sealer.finish()

    def _add(self, line: bytes) -> bytes:
        self._tag.update(line)
        return self._sealer.update(line)


@dataclass(frozen=True)
class VerifiedBackup:
    schema: str
    rows: list[tuple[str, Row]]
    #: The backup's keyring, when asked to keep it (``kms restore --as-clone``); the caller
    #: closes it.
    keyring: RootKeyring | None = None


def _parse_line(raw: bytes, number: int) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidBackup(f"line {number} is not JSON; nothing was written") from None
    if not isinstance(parsed, dict):
        raise InvalidBackup(f"line {number} is not a JSON object; nothing was written")
    return parsed


def _rows(lines: list[bytes]) -> Iterator[tuple[str, Row]]:
    for number, raw in enumerate(lines, start=2):
        parsed = _parse_line(raw, number)
        table, row = parsed.get("table"), parsed.get("row")
        if (
            set(parsed) != {"table", "row"}
            or not isinstance(table, str)
            or not isinstance(row, dict)
        ):
            raise InvalidBackup(f"line {number} is not a row; nothing was written")
        try:
            yield table, {str(k): _decode_value(v) for k, v in row.items()}
        except (ValueError, binascii.Error):
            raise InvalidBackup(f"line {number} holds a value kms cannot read") from None


@dataclass(frozen=True)
class _Document:
    """A ``kms-backup/2`` document, its structure checked; nothing verified yet."""

    schema: object
    rows: list[tuple[str, Row]]
    #: Its ``kms_metadata`` rows, by name.
    keystore: dict[str, bytes]
    marker: bytes
    keystore_id: bytes
    #: What the tag covers (every byte before the tag line), and the tag as written.
    body: bytes
    tag: str


def _document(data: bytes, columns: Callable[[str], list[str] | None]) -> _Document:
    if not data.endswith(b"\n"):
        raise InvalidBackup("the backup is truncated (no final line); nothing was written")
    lines = data[:-1].split(b"\n")
    if len(lines) < 2:
        raise InvalidBackup("the backup is truncated; nothing was written")
    header = _parse_line(lines[0], 1)
    if header.get("format") != DOCUMENT_FORMAT:
        raise InvalidBackup(f"not a kms backup (no {DOCUMENT_FORMAT} header); nothing was written")
    trailer = _parse_line(lines[-1], len(lines))
    if set(trailer) != {"tag"} or not isinstance(trailer["tag"], str):
        raise InvalidBackup("the backup is truncated (no tag line); nothing was written")
    body = lines[1:-1]
    if header.get("rows") != len(body):
        raise InvalidBackup(
            f"the backup says {header.get('rows')} rows and holds {len(body)}; nothing was written"
        )
    rows = list(_rows(body))
    for table, row in rows:
        known = columns(table)
        if known is None or set(row) != set(known):
            raise InvalidBackup(
                f"the backup's {table} rows do not match this kms's schema; nothing was written"
            )
    keystore = {row["name"]: row["value"] for table, row in rows if table == "kms_metadata"}
    marker, keystore_id = keystore.get(INIT_MARKER), keystore.get(KEYSTORE_ID)
    if (
        not isinstance(marker, bytes)
        or not isinstance(keystore_id, bytes)
        or not keystore_id
        or not all(isinstance(value, bytes) for value in keystore.values())
    ):
        raise InvalidBackup("the backup holds no keystore; nothing was written")
    return _Document(
        schema=header.get("schema"),
        rows=rows,
        keystore=keystore,
        marker=marker,
        keystore_id=keystore_id,
        body=data[: len(data) - len(lines[-1]) - 1],
        tag=trailer["tag"],
    )


def _open_root(
    backend: MasterKeyBackend, keystore: dict[str, bytes], keystore_id: bytes
) -> tuple[RootKeyring, bytes]:
    """The backup's keyring, and the AAD its init marker must unwrap with: a keystore of format
    4 has its root secret sealed in ``keystore`` (its rows, or a format-3 file's header), one of
    format 3 (taken before root secrets) has the passphrase-derived key as root secret."""
    try:
        if ROOT_SECRET in keystore:
            return RootKeyring(backend.unseal(keystore, keystore_id), keystore_id), (
                init_marker_aad(keystore_id)
            )
        return RootKeyring(backend.legacy_root(keystore), keystore_id), init_marker_aad_v3(
            keystore_id
        )
    except WrongPassphrase:
        raise InvalidBackup(
            "the backup is from another keystore, or the passphrase is not the one it was "
            "taken under; nothing was written"
        ) from None
    except InvalidKDFParameters as error:
        raise InvalidBackup(f"the backup's {error.public_message}") from None
    except KeystoreError as error:
        raise InvalidBackup(
            f"the backup's root secret does not open: {error.public_message}"
        ) from None


def _b64_field(header: dict[str, Any], name: str) -> bytes:
    value = header.get(name)
    try:
        if not isinstance(value, str):
            raise ValueError(name)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidBackup(
            f"the backup's header has no valid {name}; nothing was written"
        ) from None


def _header_sealed(header: dict[str, Any]) -> dict[str, bytes]:
    sealed = header.get("sealed")
    if (
        not isinstance(sealed, dict)
        or ROOT_SECRET not in sealed
        or not set(sealed) <= set(BACKEND_ROWS)
    ):
        raise InvalidBackup("the backup's header has no sealed root secret; nothing was written")
    return {name: _b64_field(sealed, name) for name in sealed}


def _open_sealed(
    data: bytes, header_end: int, backend: MasterKeyBackend
) -> tuple[RootKeyring, bytes, dict[str, bytes], bytes]:
    """The keyring of the root secret the header seals (opened by ``backend``), the document the
    stream holds, the header's sealed rows and the init marker's AAD; ``InvalidBackup`` if the
    root secret or the stream does not open."""
    header_line = data[:header_end]
    header = _parse_line(header_line[:-1], 1)
    if set(header) != {"format", "keystore_id", "salt", "sealed"}:
        raise InvalidBackup("the backup's header is not a kms-backup/3 header; nothing was written")
    keystore_id, salt = _b64_field(header, "keystore_id"), _b64_field(header, "salt")
    if not keystore_id or len(salt) != STREAM_SALT_BYTES:
        raise InvalidBackup(
            "the backup's header has no valid keystore_id or salt; nothing was written"
        )
    sealed = _header_sealed(header)
    keyring, marker_aad = _open_root(backend, sealed, keystore_id)
    try:
        cipher = keyring.backup_cipher(salt)
        document = b"".join(open_stream(cipher, header_line, data[header_end:]))
    except UnwrapFailed as error:
        keyring.close()
        if "cut short" in error.public_message:  # no need to guess at the passphrase
            raise InvalidBackup(
                f"the backup is truncated ({error.public_message}); nothing was written"
            ) from None
        raise InvalidBackup(
            "the backup does not decrypt: it is from another keystore, the passphrase is not "
            "the one it was taken under, or the file was edited, reordered or cut short; "
            "nothing was written"
        ) from None
    except BaseException:
        keyring.close()
        raise
    return keyring, document, sealed, marker_aad


def _same_rows(found: dict[str, bytes], expected: dict[str, bytes]) -> bool:
    return all(
        name in found and hmac.compare_digest(found[name], value)
        for name, value in expected.items()
    ) and all(name in expected for name in found if name in BACKEND_ROWS)


def verify_backup(
    data: bytes,
    backend: MasterKeyBackend,
    *,
    columns: Callable[[str], list[str] | None],
    keep_keyring: bool = False,
) -> VerifiedBackup:
    """Decrypt a backup (format 3) and check its document's structure and tag; return its rows.
    Raise ``InvalidBackup`` naming what is wrong. ``columns`` gives the column names of a table
    this kms knows, else None. ``backend`` opens the backup's root secret. ``keep_keyring``:
    return the backup's keyring too. A format-2 file (a document alone) is checked the same
    way."""
    keyring: RootKeyring | None = None
    try:
        header_end = data.find(b"\n") + 1
        if header_end == 0:
            raise InvalidBackup("the backup is truncated (no final line); nothing was written")
        header = _parse_line(data[: header_end - 1], 1)
        if header.get("format") == FORMAT:
            keyring, document_bytes, sealed, marker_aad = _open_sealed(data, header_end, backend)
            document = _document(document_bytes, columns)
            if not (
                _same_rows(document.keystore, sealed)
                and hmac.compare_digest(document.keystore_id, keyring.keystore_id)
            ):
                raise InvalidBackup(
                    "the backup's header names another keystore than its rows; nothing was written"
                )
        elif header.get("format") == DOCUMENT_FORMAT:
            document = _document(data, columns)
            keyring, marker_aad = _open_root(backend, document.keystore, document.keystore_id)
        else:
            raise InvalidBackup(
                f"not a kms backup (no {FORMAT} or {DOCUMENT_FORMAT} header); nothing was written"
            )
    except BaseException:
        if keyring is not None:
            keyring.close()
        raise
    try:
        try:
            zeroise(keyring.unwrap(document.marker, marker_aad))
        except UnwrapFailed:
            raise InvalidBackup(
                "the backup is from another keystore, or the passphrase is not the one it was "
                "taken under; nothing was written"
            ) from None
        mac = keyring.backup_mac()
        try:
            expected = mac.tag(document.body)
        finally:
            mac.close()
        try:
            stored = base64.b64decode(document.tag, validate=True)
        except binascii.Error:
            stored = b""
        if not hmac.compare_digest(expected, stored):
            raise InvalidBackup(
                "the backup's integrity tag does not match: it was edited, reordered or cut "
                "short; nothing was written"
            )
        if not isinstance(document.schema, str):
            raise InvalidBackup("the backup names no schema revision; nothing was written")
    except BaseException:
        keyring.close()
        raise
    if not keep_keyring:
        keyring.close()
    return VerifiedBackup(
        schema=document.schema, rows=document.rows, keyring=keyring if keep_keyring else None
    )
