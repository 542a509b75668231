"""Backup files opened and sealed again with the keystore's own keys: how a test changes the
document inside a format-3 backup (kms.service.backup) and still gets it past the encryption, so
that a check of the document's own is what refuses it."""

from __future__ import annotations

import base64
import json
import os
import struct

from kms.crypto.stream import STREAM_SALT_BYTES, StreamSealer, open_stream
from kms.master import open_master_keyring
from kms.service.backup import file_header
from kms.service.masterkey import sealed_rows
from kms.settings import Settings
from kms.store.db import create_kms_engine
from kms.store.repository import SQLKeyRepository


def open_backup(settings: Settings, data: bytes) -> bytes:
    """The document inside a format-3 backup of the keystore of ``settings``."""
    header_end = data.index(b"\n") + 1
    salt = _salt(data[:header_end])
    keyring = open_master_keyring(settings)
    try:
        cipher = keyring.backup_cipher(salt)
        return b"".join(open_stream(cipher, data[:header_end], data[header_end:]))
    finally:
        keyring.close()


def seal_backup(settings: Settings, document: bytes, chunk_bytes: int = 1 << 16) -> bytes:
    """``document`` sealed as ``kms backup`` seals one, under the keystore of ``settings``."""
    repository = SQLKeyRepository(create_kms_engine(settings.database_url, pool=False))
    try:
        metadata = repository.read_metadata()
    finally:
        repository.close()
    keyring = open_master_keyring(settings)
    try:
        salt = os.urandom(STREAM_SALT_BYTES)
        header = file_header(sealed_rows(metadata), keyring.keystore_id, salt)
        sealer = StreamSealer(keyring.backup_cipher(salt), header, chunk_bytes)
        return header + sealer.update(document) + sealer.finish()
    finally:
        keyring.close()


def chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """A format-3 file's header line and its sealed chunks, each with its length prefix."""
    header_end = data.index(b"\n") + 1
    offset, found = header_end, []
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        found.append(data[offset : offset + 4 + length])
        offset += 4 + length
    return data[:header_end], found


def _salt(header: bytes) -> bytes:
    return base64.b64decode(json.loads(header)["salt"])
