"""The backup file format, and the rules for trusting one.

A backup is UTF-8 JSON lines:

1. ``{"format": "kms-backup/1", "schema": "<alembic revision>", "rows": N}``
2. N row lines ``{"table": "<name>", "row": {<column>: <value>}}``, tables parents-first, rows in
   primary-key order. Values: JSON null, integers and strings as themselves; bytes as
   ``{"b64": "..."}``; times as ``{"time": "<ISO 8601, UTC>"}``.
3. ``{"tag": "<base64>"}``: HMAC-SHA256, under the backup key (HKDF of the root secret,
   ``kms/backup/v1``) and bound to the keystore id (a format-2 tag, kms.crypto.integrity), of
   every byte before this line. Format ``kms-backup/1`` (before keystore binding) had the same
   tag unbound; this kms restores only schema revisions of its own, which no such backup has.

Nothing in it is unwrapped: the key versions are the wrapped blobs the database holds, under the
root secret, and the root secret is sealed in the backup's own ``kms_metadata`` rows (by the
passphrase or by the HSM's key, kms.service.masterkey). So restoring needs what opens the
keystore the backup was taken from (its passphrase, or its HSM key); with any other, the root
secret or the init marker does not open and the backup is refused. The keystore id comes from
the backup's own rows and binds the init marker and the tag: a backup whose rows were swapped
for another keystore's fails. The tag covers the whole file: a line truncated, edited, removed,
added or moved changes it. Nothing is written before the tag has been checked.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kms.errors import InvalidBackup, InvalidKDFParameters, UnwrapFailed, WrongPassphrase
from kms.service.keyring import RootKeyring, zeroise
from kms.service.keystore import init_marker_aad, init_marker_aad_v3
from kms.service.masterkey import MasterKeyBackend
from kms.store.records import INIT_MARKER, KEYSTORE_ID, ROOT_SECRET

FORMAT = "kms-backup/2"
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


class BackupWriter:
    """Builds a backup's bytes line by line and seals them with the tag."""

    def __init__(self, keyring: RootKeyring) -> None:
        self._mac = keyring.backup_mac()
        self._parts: list[bytes] = []

    def header(self, schema: str, rows: int) -> bytes:
        return self._add(_line({"format": FORMAT, "schema": schema, "rows": rows}))

    def row(self, table: str, row: Row) -> bytes:
        return self._add(
            _line({"table": table, "row": {k: _encode_value(v) for k, v in row.items()}})
        )

    def seal(self) -> bytes:
        """The tag line; the writer is closed after it."""
        try:
            tag = self._mac.tag(b"".join(self._parts))
        finally:
            self._mac.close()
        return _line({"tag": base64.b64encode(tag).decode("ascii")})

    def _add(self, line: bytes) -> bytes:
        self._parts.append(line)
        return line


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


def verify_backup(
    data: bytes,
    backend: MasterKeyBackend,
    *,
    columns: Callable[[str], list[str] | None],
    keep_keyring: bool = False,
) -> VerifiedBackup:
    """Check a backup's structure and tag and return its rows; raise ``InvalidBackup`` naming
    what is wrong. ``columns`` gives the column names of a table this kms knows, else None.
    ``backend`` opens the backup's root secret. ``keep_keyring``: return the backup's keyring
    too."""
    if not data.endswith(b"\n"):
        raise InvalidBackup("the backup is truncated (no final line); nothing was written")
    lines = data[:-1].split(b"\n")
    if len(lines) < 2:
        raise InvalidBackup("the backup is truncated; nothing was written")
    header = _parse_line(lines[0], 1)
    if header.get("format") != FORMAT:
        raise InvalidBackup(f"not a kms backup (no {FORMAT} header); nothing was written")
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
    keyring, marker_aad = _open_root(backend, keystore, keystore_id)
    try:
        try:
            zeroise(keyring.unwrap(marker, marker_aad))
        except UnwrapFailed:
            raise InvalidBackup(
                "the backup is from another keystore, or the passphrase is not the one it was "
                "taken under; nothing was written"
            ) from None
        mac = keyring.backup_mac()
        try:
            expected = mac.tag(data[: len(data) - len(lines[-1]) - 1])
        finally:
            mac.close()
    except BaseException:
        keyring.close()
        raise
    if not keep_keyring:
        keyring.close()
    try:
        stored = base64.b64decode(trailer["tag"], validate=True)
    except binascii.Error:
        stored = b""
    schema = header.get("schema")
    if not isinstance(schema, str) or not hmac.compare_digest(expected, stored):
        keyring.close()
    if not hmac.compare_digest(expected, stored):
        raise InvalidBackup(
            "the backup's integrity tag does not match: it was edited, reordered or cut short; "
            "nothing was written"
        )
    if not isinstance(schema, str):
        raise InvalidBackup("the backup names no schema revision; nothing was written")
    return VerifiedBackup(schema=schema, rows=rows, keyring=keyring if keep_keyring else None)


def _open_root(
    backend: MasterKeyBackend, keystore: dict[str, bytes], keystore_id: bytes
) -> tuple[RootKeyring, bytes]:
    """The backup's keyring, and the AAD its init marker must unwrap with: a backup of keystore
    format 4 has its root secret sealed in its rows, one of format 3 (taken before root
    secrets) has the passphrase-derived key as root secret."""
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
