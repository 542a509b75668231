"""A byte stream sealed in chunks under a key of its own: how a backup file is encrypted.

Key: ``HKDF-SHA256(master key, salt = the stream's own 32 random bytes, info = label ||
binding)``, 32 bytes, for AES-256-GCM. The salt is new for every stream, so no two streams share
a key and the counter nonces below never repeat under one key.

Sealed stream: chunks, each ``length (4 bytes, big-endian) || AES-256-GCM(plaintext)`` with the
nonce ``chunk number (11 bytes, big-endian) || last (1 byte: 0x01 for the last chunk, else
0x00)`` and the caller's associated data (the file's cleartext header) on every chunk. This is
STREAM (Hoang, Reyhanitabar, Rogaway and Vizár, 2015): a chunk edited, dropped, repeated or
moved, a stream cut at a chunk boundary, anything after the last chunk, or a changed header
fails to open. Every chunk but the last holds ``CHUNK_BYTES`` of plaintext; the last holds at
least one byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.errors import UnwrapFailed

#: The label of a backup file's key (kms.service.backup): a key of its own.
BACKUP_ENCRYPTION_INFO = b"kms/backup-encryption/v1"
STREAM_SALT_BYTES = 32
STREAM_KEY_BYTES = 32
CHUNK_BYTES = 1 << 16
TAG_BYTES = 16
#: The largest chunk a reader accepts (a length prefix above it is refused before reading).
MAX_SEALED_CHUNK = (1 << 20) + TAG_BYTES
_LENGTH = struct.Struct(">I")


def derive_stream_key(master_key: bytearray, salt: bytes, info: bytes) -> AESGCM:
    """The AEAD of one stream; the derived key is overwritten once ``AESGCM`` holds its copy."""
    if len(salt) != STREAM_SALT_BYTES:
        raise ValueError(f"a stream salt is {STREAM_SALT_BYTES} bytes")
    key = bytearray(STREAM_KEY_BYTES)
    try:
        HKDF(algorithm=hashes.SHA256(), length=STREAM_KEY_BYTES, salt=salt, info=info).derive_into(
            master_key, key
        )
        return AESGCM(key)
    finally:
        key[:] = bytes(STREAM_KEY_BYTES)


def _nonce(number: int, last: bool) -> bytes:
    return number.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class StreamSealer:
    """Seals what it is given as it comes: ``update`` returns the chunks that are full,
    ``finish`` the last one. Holds at most one chunk of plaintext."""

    def __init__(self, aead: AESGCM, aad: bytes, chunk_bytes: int = CHUNK_BYTES) -> None:
        if not 0 < chunk_bytes <= MAX_SEALED_CHUNK - TAG_BYTES:
            raise ValueError("chunk_bytes out of range")
        self._aead: AESGCM | None = aead
        self._aad = aad
        self._chunk_bytes = chunk_bytes
        self._pending = bytearray()
        self._number = 0

    def __repr__(self) -> str:
        return f"StreamSealer(chunks={self._number})"

    def update(self, data: bytes) -> bytes:
        self._pending += data
        out = []
        # Strictly more than a chunk: the last chunk is sealed by finish, never empty.
        while len(self._pending) > self._chunk_bytes:
            out.append(self._seal(bytes(self._pending[: self._chunk_bytes]), last=False))
            del self._pending[: self._chunk_bytes]
        return b"".join(out)

    def finish(self) -> bytes:
        """The last chunk; the sealer is closed after it."""
        if not self._pending:
            raise ValueError("a sealed stream holds at least one byte")
        try:
            return self._seal(bytes(self._pending), last=True)
        finally:
            self._pending[:] = bytes(len(self._pending))
            self._aead = None

    def _seal(self, chunk: bytes, *, last: bool) -> bytes:
        if self._aead is None:
            raise RuntimeError("the stream is sealed")
        sealed = self._aead.encrypt(_nonce(self._number, last), chunk, self._aad)
        self._number += 1
        return _LENGTH.pack(len(sealed)) + sealed


def open_stream(aead: AESGCM, aad: bytes, sealed: bytes) -> Iterator[bytes]:
    """The plaintext of each chunk of ``sealed``, in order; raise ``UnwrapFailed`` at the first
    chunk that does not open (edited, moved, dropped, cut short, another key or header) and for
    anything after the last chunk."""
    view = memoryview(sealed)
    offset, number = 0, 0
    while True:
        if len(view) - offset < _LENGTH.size:
            raise UnwrapFailed(f"the stream is cut short before chunk {number}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if not TAG_BYTES < length <= MAX_SEALED_CHUNK or offset + length > len(view):
            raise UnwrapFailed(f"chunk {number} is cut short or has an impossible length")
        chunk = bytes(view[offset : offset + length])
        offset += length
        last = offset == len(view)
        try:
            yield aead.decrypt(_nonce(number, last), chunk, aad)
        except InvalidTag:
            raise UnwrapFailed(f"chunk {number} does not open") from None
        if last:
            return
        number += 1
