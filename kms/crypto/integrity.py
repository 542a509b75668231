"""Row authentication: a MAC key derived from the master key, and the canonical record encoding.

The MAC key is ``HKDF-SHA256(root secret, salt = none, info = "kms/row-mac/v1")``: a key of its
own, so the wrapping key is never used for anything but wrapping. A stored tag is its format
byte, then HMAC-SHA256 (the format version first, like every other blob kms stores):

- Format 2 (keystore format 3, written since keystore binding): ``0x02 || HMAC(binding ||
  encode_record(label, fields))``, where ``binding`` is ``encode_record(b"kms/keystore",
  [("keystore_id", id)])``: a row tagged in one keystore never verifies in another that shares
  its master key (a restored copy). The binding has a length-prefixed fixed shape, so the
  concatenation stays injective.
- Format 1 (keystores made before keystore binding): ``0x01 || HMAC(encode_record(label,
  fields))``. Verified only by ``kms upgrade``, before it writes format-2 tags; every other
  reader refuses it (a format-1 row put back after the upgrade carries no generation).

``encode_record`` is canonical and injective: the label, then for each field its name, a type
byte and its value, each length-prefixed (4-byte big-endian). Fields are encoded in the order the
caller gives; names are part of the encoding, so two records that differ in any field, or in which
fields they have, never encode alike.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable
from datetime import UTC, datetime

from kms.crypto.kdf import derive_key
from kms.errors import IntegrityFailure

MAC_FORMAT_V1 = b"\x01"
MAC_FORMAT_V2 = b"\x02"
MAC_KEY_BYTES = 32
MAC_KEY_INFO = b"kms/row-mac/v1"
#: The key of a backup file's integrity tag (kms.service.backup): a key of its own.
BACKUP_KEY_INFO = b"kms/backup/v1"
#: The audit log's HMAC key (kms.audit), followed by the keystore id in the HKDF info: a label of
#: fixed length first, so the info stays unambiguous.
AUDIT_KEY_INFO = b"kms/audit/v1"
TAG_BYTES = 32

FieldValue = str | int | bool | bytes | datetime | None


def derive_mac_key(master_key: bytearray, info: bytes = MAC_KEY_INFO) -> bytearray:
    """The row-MAC key (or, with another ``info``, another HMAC key of the root secret), derived
    into a mutable buffer the caller overwrites when done (kms.crypto.kdf.derive_key)."""
    return derive_key(master_key, info, MAC_KEY_BYTES)


def _value(value: FieldValue) -> tuple[bytes, bytes]:
    # bool before int: True is an int in Python, and must not encode like 1.
    if value is None:
        return b"N", b""
    if isinstance(value, bool):
        return b"T", b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return b"I", str(value).encode("ascii")
    if isinstance(value, str):
        return b"S", value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return b"B", bytes(value)
    if isinstance(value, datetime):
        # Microseconds since the epoch, UTC: what both SQLite and PostgreSQL give back intact.
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return b"D", str(delta // _MICROSECOND).encode("ascii")
    raise TypeError(f"cannot encode a {type(value).__name__} field")


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def encode_record(label: bytes, fields: Iterable[tuple[str, FieldValue]]) -> bytes:
    parts = [struct.pack(">I", len(label)), label]
    for name, value in fields:
        raw_name = name.encode("ascii")
        kind, raw = _value(value)
        parts += [
            struct.pack(">I", len(raw_name)),
            raw_name,
            kind,
            struct.pack(">I", len(raw)),
            raw,
        ]
    return b"".join(parts)


def keystore_binding(keystore_id: bytes) -> bytes:
    """What a format-2 tag is bound to: the keystore's id."""
    return encode_record(b"kms/keystore", [("keystore_id", keystore_id)])


class RecordMAC:
    """HMAC-SHA256 under the row-MAC key. The key sits in one OpenSSL HMAC context, copied per
    tag: no Python-side copy of it is kept.

    With a ``keystore_id`` it writes and verifies format-2 tags bound to that keystore; without
    one, format-1 tags (the backup tag, and ``kms upgrade`` reading a keystore made before
    keystore binding)."""

    def __init__(self, mac_key: bytearray, keystore_id: bytes | None = None) -> None:
        self._template: hmac.HMAC | None = hmac.new(mac_key, digestmod="sha256")
        self._format = MAC_FORMAT_V1
        if keystore_id is not None:
            if not keystore_id:
                raise ValueError("a keystore id cannot be empty")
            self._template.update(keystore_binding(keystore_id))
            self._format = MAC_FORMAT_V2

    def __repr__(self) -> str:
        return f"RecordMAC(open={self._template is not None})"

    def tag(self, encoded: bytes) -> bytes:
        if self._template is None:
            raise RuntimeError("the record MAC is closed")
        mac = self._template.copy()
        mac.update(encoded)
        return self._format + mac.digest()

    def running(self) -> RunningTag:
        """A tag over bytes given piece by piece (a backup written as it is read): the same
        tag ``tag`` gives over their concatenation."""
        if self._template is None:
            raise RuntimeError("the record MAC is closed")
        return RunningTag(self._template.copy(), self._format)

    def verify(self, encoded: bytes, stored: bytes | None, what: str) -> None:
        """Raise ``IntegrityFailure(what)`` unless ``stored`` is the tag of ``encoded``.

        A missing tag, or one of another format, fails like a wrong one. Compared in constant
        time.
        """
        if stored is None:
            raise IntegrityFailure(f"{what}: no MAC stored")
        if not hmac.compare_digest(self.tag(encoded), bytes(stored)):
            raise IntegrityFailure(f"{what}: MAC does not match")

    def close(self) -> None:
        self._template = None


class RunningTag:
    def __init__(self, mac: hmac.HMAC, tag_format: bytes) -> None:
        self._mac = mac
        self._format = tag_format

    def __repr__(self) -> str:
        return "RunningTag()"

    def update(self, data: bytes) -> None:
        self._mac.update(data)

    def tag(self) -> bytes:
        return self._format + self._mac.digest()
