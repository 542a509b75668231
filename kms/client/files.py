"""Streaming envelope encryption of files: one data key from kms, chunks encrypted locally.

The file never travels to the server: kms issues one 256-bit data key (``/v1/kms/datakey``),
returned both in plaintext and wrapped under a kms key; the file is encrypted here in chunks with
AES-256-GCM under the plaintext data key, which is then dropped, and the wrapped data key is
stored in the file's header. Decryption sends only the wrapped key to ``/v1/kms/decrypt``.

File format, version 1 (all integers big-endian)::

    header:
      magic        4 bytes  b"KMSF"
      version      1 byte   0x01
      chunk_size   4 bytes  plaintext bytes per chunk (1 KiB .. 16 MiB)
      nonce_prefix 7 bytes  random, per file
      key_id_len   2 bytes, key_id (UTF-8): the kms key that wrapped the data key
      context_len  4 bytes, context: canonical JSON of the encryption context, or empty
      wrapped_len  2 bytes, wrapped data key: the /datakey ciphertext (ASCII)
    chunks, back to back, each AES-256-GCM(data key) ciphertext || 16-byte tag:
      nonce  = nonce_prefix (7) || counter (4, from 0) || last (1: 0x01 for the last chunk)
      AAD    = SHA-256(header) || last (1 byte)
      every chunk holds chunk_size plaintext bytes but the last, which holds 0..chunk_size
      (an empty file is one empty last chunk).

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizar 2015): a chunk decrypts
only at its own position (counter in the nonce), only in its own file (the header, which holds
the wrapped key and a random prefix, is in the AAD), and only the real last chunk carries the last
flag, so a file cut at a chunk boundary, chunks swapped, dropped or repeated, chunks spliced in
from another file, or bytes appended after the end all fail authentication. Every such failure
raises ``InvalidCiphertextError``. Plaintext is released only chunk by chunk as each chunk
authenticates; ``decrypt_file`` to a path writes a temporary file and renames it into place only
when the whole file authenticated, so a failed decryption leaves no partial output behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.client.errors import InvalidCiphertextError
from kms.client.models import DataKey

MAGIC = b"KMSF"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DATA_KEY_BYTES = 32
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
MAX_CHUNKS = 2**32
_FIXED = struct.Struct(">4sBI7s")

Source = str | os.PathLike[str] | BinaryIO


class DataKeySource(Protocol):
    """Where data keys come from and are unwrapped: ``KMSClient``, or a local stand-in."""

    def generate_data_key(
        self, key_id: str, *, bytes: int, context: Mapping[str, str] | None
    ) -> DataKey: ...

    def decrypt(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> bytes: ...


def _invalid() -> InvalidCiphertextError:
    return InvalidCiphertextError("invalid ciphertext")


def _canonical_context(context: Mapping[str, str] | None) -> bytes:
    if not context:
        return b""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _header(chunk_size: int, prefix: bytes, key_id: str, context: bytes, wrapped: str) -> bytes:
    key_id_bytes = key_id.encode("utf-8")
    wrapped_bytes = wrapped.encode("ascii")
    return b"".join(
        (
            _FIXED.pack(MAGIC, FORMAT_VERSION, chunk_size, prefix),
            struct.pack(">H", len(key_id_bytes)),
            key_id_bytes,
            struct.pack(">I", len(context)),
            context,
            struct.pack(">H", len(wrapped_bytes)),
            wrapped_bytes,
        )
    )


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def encrypt_stream(
    source: DataKeySource,
    key_id: str,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    context: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Encrypt ``src`` into ``dst``; the number of plaintext bytes."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    data_key = source.generate_data_key(key_id, bytes=DATA_KEY_BYTES, context=context)
    if data_key.plaintext is None or len(data_key.plaintext) != DATA_KEY_BYTES:
        raise ValueError("the data key source returned no 256-bit plaintext key")
    prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
    header = _header(chunk_size, prefix, key_id, _canonical_context(context), data_key.ciphertext)
    header_digest = hashlib.sha256(header).digest()
    aead = AESGCM(data_key.plaintext)
    dst.write(header)
    total = 0
    counter = 0
    chunk = _read_exactly(src, chunk_size)
    while True:
        following = _read_exactly(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        if counter >= MAX_CHUNKS:
            raise ValueError("file too large for this chunk size")
        aad = header_digest + (b"\x01" if last else b"\x00")
        dst.write(aead.encrypt(_nonce(prefix, counter, last), chunk, aad))
        total += len(chunk)
        counter += 1
        if last:
            return total
        chunk = following


def decrypt_stream(source: DataKeySource, src: BinaryIO, dst: BinaryIO) -> int:
    """Decrypt ``src`` into ``dst``; the number of plaintext bytes. Raises
    ``InvalidCiphertextError`` for any damaged, cut, reordered, spliced or extended file; output
    written before the failure must then be discarded."""
    chunk_size, prefix, key_id, context, wrapped, header = _read_header(src)
    data_key = source.decrypt(key_id, wrapped, context)
    if len(data_key) != DATA_KEY_BYTES:
        raise _invalid()
    header_digest = hashlib.sha256(header).digest()
    aead = AESGCM(data_key)
    sealed_size = chunk_size + TAG_BYTES
    total = 0
    counter = 0
    sealed = _read_exactly(src, sealed_size)
    while True:
        following = _read_exactly(src, sealed_size) if len(sealed) == sealed_size else b""
        last = not following
        if len(sealed) < TAG_BYTES or counter >= MAX_CHUNKS:
            raise _invalid()
        aad = header_digest + (b"\x01" if last else b"\x00")
        try:
            chunk = aead.decrypt(_nonce(prefix, counter, last), sealed, aad)
        except InvalidTag:
            raise _invalid() from None
        dst.write(chunk)
        total += len(chunk)
        counter += 1
        if last:
            return total
        sealed = following


def _read_header(src: BinaryIO) -> tuple[int, bytes, str, dict[str, str] | None, str, bytes]:
    fixed = _read_exactly(src, _FIXED.size)
    if len(fixed) != _FIXED.size:
        raise _invalid()
    magic, version, chunk_size, prefix = _FIXED.unpack(fixed)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise _invalid()
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _invalid()
    parts = [fixed]
    key_id_bytes = _read_field(src, ">H", parts)
    context_bytes = _read_field(src, ">I", parts, limit=1024 * 1024)
    wrapped_bytes = _read_field(src, ">H", parts)
    try:
        key_id = key_id_bytes.decode("utf-8")
        wrapped = wrapped_bytes.decode("ascii")
        context = json.loads(context_bytes) if context_bytes else None
    except (UnicodeDecodeError, ValueError):
        raise _invalid() from None
    if not key_id or not wrapped or (context is not None and not isinstance(context, dict)):
        raise _invalid()
    return chunk_size, prefix, key_id, context, wrapped, b"".join(parts)


def _read_field(src: BinaryIO, length_format: str, parts: list[bytes], limit: int = 65535) -> bytes:
    size = struct.calcsize(length_format)
    raw = _read_exactly(src, size)
    if len(raw) != size:
        raise _invalid()
    (length,) = struct.unpack(length_format, raw)
    if length > limit:
        raise _invalid()
    value = _read_exactly(src, length)
    if len(value) != length:
        raise _invalid()
    parts += (raw, value)
    return value


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at the end (pipes may return short reads)."""
    first = src.read(size)
    if not first or len(first) == size:
        return first or b""
    pieces = [first]
    missing = size - len(first)
    while missing:
        piece = src.read(missing)
        if not piece:
            break
        pieces.append(piece)
        missing -= len(piece)
    return b"".join(pieces)


@contextmanager
def opened_source(src: Source) -> Iterator[BinaryIO]:
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as handle:
            yield handle
    else:
        yield src


@contextmanager
def opened_destination(dst: Source) -> Iterator[BinaryIO]:
    """A path is written through a temporary file beside it, renamed into place only when the
    block completes: a failure (a tampered file) leaves no partial output at ``dst``."""
    if not isinstance(dst, str | os.PathLike):
        yield dst
        return
    target = Path(dst)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
