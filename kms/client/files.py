"""Streaming envelope encryption of files: one data key from kms, chunks encrypted locally.

The file never travels to the server: kms issues one 256-bit data key (``/v1/kms/datakey``),
returned both in plaintext and wrapped under a kms key; the file is encrypted here in chunks with
AES-256-GCM under keys derived from the plaintext data key, which is then dropped, and the wrapped
data key is stored in the file's header. Decryption sends only the wrapped key to
``/v1/kms/decrypt``; re-wrapping (``/v1/kms/rewrap``) replaces it without touching the chunks.

File format, version 2 (written since; all integers big-endian)::

    header, authenticated part A:
      magic        4 bytes  b"KMSF"
      version      1 byte   0x02
      chunk_size   4 bytes  plaintext bytes per chunk (1 KiB .. 16 MiB)
      file_id     32 bytes  random, per file
      key_id_len   2 bytes, key_id (UTF-8): the kms key that wraps the data key
      context_len  4 bytes, context: canonical JSON of the encryption context, or empty
      commitment  32 bytes  HKDF-SHA512(data key, salt=file_id, info="kms file v2 commitment")
    header_tag    32 bytes  HMAC-SHA256(header key, A)
    wrapped_len    2 bytes, wrapped data key: the /datakey (or /rewrap) ciphertext (ASCII)
    chunks, back to back, each AES-256-GCM(chunk key) ciphertext || 16-byte tag:
      nonce  = 7 zero bytes || counter (4, from 0) || last (1: 0x01 for the last chunk)
      AAD    = SHA-256(A) || last (1 byte)
      every chunk holds chunk_size plaintext bytes but the last, which holds 0..chunk_size
      (an empty file is one empty last chunk).

    chunk key  = HKDF-SHA512(data key, salt=file_id, info="kms file v2 chunk key"), 32 bytes
    header key = HKDF-SHA512(data key, salt=file_id, info="kms file v2 header key"), 32 bytes

This follows the committing message format of the AWS Encryption SDK (a random message id as
HKDF salt, one derived key for the content and one derived commitment value stored in the header
and compared before any decryption) and Tink's AES-GCM-HKDF streaming AEAD (a key derived per
file from a random salt, then the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizar:
the chunk counter and a last-chunk flag in the nonce). What it guarantees:

- Key commitment: a reader derives the commitment from the data key kms unwrapped and compares it
  (constant time) with the header's before it decrypts anything; a wrapped key that unwraps to any
  other data key is refused, so one file cannot be made to decrypt to two plaintexts.
- The header: every field but the wrapped key is under ``header_tag``, checked before any chunk;
  the wrapped key itself is kms's AEAD ciphertext, bound by kms to key_id and context (a wrapped
  key moved from another file fails the commitment). So the wrapped key, and only it, can be
  replaced, by a re-wrap of the same data key: chunks do not depend on it.
- Chunks decrypt only under this file's data key and file_id (the chunk key), at their own
  position (counter), in this header (SHA-256(A) in the AAD), and only the real last chunk ends the
  file: a cut (anywhere, including at a chunk boundary), chunks swapped, dropped, repeated or
  spliced in from another file, or bytes appended after the end all fail authentication.
- Chunk nonces need no random part: the chunk key is new for every file (random data key, random
  file_id), and one file's chunks are each sealed once under it.

Every such failure raises ``InvalidCiphertextError`` (``UnexpectedHeaderError``, a subclass, when
the caller named the key or context it expects and the header names another). Plaintext is released
only chunk by chunk as each chunk authenticates; ``decrypt_file`` to a path writes a temporary file
and renames it into place only when the whole file authenticated, so a failed decryption leaves no
partial output behind.

Version 1 (read, no longer written) had, after the version byte, chunk_size, a 7-byte random
nonce_prefix, key_id, context and the wrapped key (the same length fields), then chunks sealed
under the data key itself with nonce = nonce_prefix || counter || last and AAD = SHA-256(whole
header) || last. Its chunks depend on the wrapped key, so a version 1 file cannot be re-wrapped in
place, and it has no key commitment.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kms.client.errors import FileFormatError, InvalidCiphertextError, UnexpectedHeaderError
from kms.client.models import DataKey, Encrypted

MAGIC = b"KMSF"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
DATA_KEY_BYTES = 32
TAG_BYTES = 16
FILE_ID_BYTES = 32
COMMITMENT_BYTES = 32
HEADER_TAG_BYTES = 32
NONCE_PREFIX_BYTES = 7
MAX_CHUNKS = 2**32
MAX_CONTEXT_BYTES = 1024 * 1024
_START = struct.Struct(">4sBI")
_CHUNK_KEY_LABEL = b"kms file v2 chunk key"
_HEADER_KEY_LABEL = b"kms file v2 header key"
_COMMITMENT_LABEL = b"kms file v2 commitment"
_V2_NONCE_PREFIX = bytes(NONCE_PREFIX_BYTES)
_COPY_BYTES = 64 * 1024

Source = str | os.PathLike[str] | BinaryIO


class DataKeySource(Protocol):
    """Where data keys come from and are unwrapped: ``KMSClient``, or a local stand-in."""

    def generate_data_key(
        self, key_id: str, *, bytes: int, context: Mapping[str, str] | None
    ) -> DataKey: ...

    def decrypt(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> bytes: ...


class RewrapSource(DataKeySource, Protocol):
    """A ``DataKeySource`` that also re-wraps (``/v1/kms/rewrap``): decrypts a wrapped key and
    wraps it again under the key's latest version, never showing it to the caller."""

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted: ...


@dataclass(frozen=True)
class FileHeader:
    """A file's header as read, before anything in it is trusted."""

    version: int
    chunk_size: int
    key_id: str
    context: dict[str, str] | None
    wrapped_key: str = field(repr=False)
    #: Version 1: the 7-byte nonce prefix; version 2: the file id.
    salt: bytes = field(repr=False)
    #: Version 2 only (empty in version 1).
    commitment: bytes = field(default=b"", repr=False)
    tag: bytes = field(default=b"", repr=False)
    #: What the chunks' AAD digests: the whole header (1), the authenticated part A (2).
    bound: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class _FileKeys:
    chunk: bytes = field(repr=False)
    header: bytes = field(repr=False)
    commitment: bytes = field(repr=False)


def _invalid() -> InvalidCiphertextError:
    return InvalidCiphertextError("invalid ciphertext")


def _canonical_context(context: Mapping[str, str] | None) -> bytes:
    if not context:
        return b""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _derive(data_key: bytes, file_id: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA512(), length=32, salt=file_id, info=label).derive(data_key)


def _file_keys(data_key: bytes, file_id: bytes) -> _FileKeys:
    if len(data_key) != DATA_KEY_BYTES:
        raise _invalid()
    return _FileKeys(
        chunk=_derive(data_key, file_id, _CHUNK_KEY_LABEL),
        header=_derive(data_key, file_id, _HEADER_KEY_LABEL),
        commitment=_derive(data_key, file_id, _COMMITMENT_LABEL),
    )


def _header_tag(header_key: bytes, authenticated: bytes) -> bytes:
    return hmac.new(header_key, authenticated, hashlib.sha256).digest()


def _authenticated_part(
    chunk_size: int, file_id: bytes, key_id: str, context: bytes, commitment: bytes
) -> bytes:
    key_id_bytes = key_id.encode("utf-8")
    return b"".join(
        (
            _START.pack(MAGIC, FORMAT_VERSION, chunk_size),
            file_id,
            struct.pack(">H", len(key_id_bytes)),
            key_id_bytes,
            struct.pack(">I", len(context)),
            context,
            commitment,
        )
    )


def _wrapped_field(wrapped: str) -> bytes:
    wrapped_bytes = wrapped.encode("ascii")
    if not wrapped_bytes or len(wrapped_bytes) > 65535:
        raise ValueError("the wrapped data key does not fit the header")
    return struct.pack(">H", len(wrapped_bytes)) + wrapped_bytes


def _verify_commitment(keys: _FileKeys, header: FileHeader) -> None:
    """The data key kms unwrapped is the one this file was made with, and A is unchanged."""
    if not hmac.compare_digest(keys.commitment, header.commitment):
        raise _invalid()
    if not hmac.compare_digest(_header_tag(keys.header, header.bound), header.tag):
        raise _invalid()


def _check_expected(
    header: FileHeader,
    expected_key_id: str | None,
    expected_context: Mapping[str, str] | None,
) -> None:
    """Refuse, before asking kms anything, a header that names another key or context than the
    caller expects: otherwise whoever wrote the file chooses which key kms is asked to use."""
    if expected_key_id is not None and header.key_id != expected_key_id:
        raise UnexpectedHeaderError("the file names another key than expected")
    if expected_context is not None and dict(expected_context) != (header.context or {}):
        raise UnexpectedHeaderError("the file names another encryption context than expected")


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
    """Encrypt ``src`` into ``dst`` in format version 2; the number of plaintext bytes."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    data_key = source.generate_data_key(key_id, bytes=DATA_KEY_BYTES, context=context)
    if data_key.plaintext is None or len(data_key.plaintext) != DATA_KEY_BYTES:
        raise ValueError("the data key source returned no 256-bit plaintext key")
    file_id = secrets.token_bytes(FILE_ID_BYTES)
    keys = _file_keys(data_key.plaintext, file_id)
    authenticated = _authenticated_part(
        chunk_size, file_id, key_id, _canonical_context(context), keys.commitment
    )
    dst.write(authenticated)
    dst.write(_header_tag(keys.header, authenticated))
    dst.write(_wrapped_field(data_key.ciphertext))
    digest = hashlib.sha256(authenticated).digest()
    aead = AESGCM(keys.chunk)
    total = 0
    counter = 0
    chunk = _read_exactly(src, chunk_size)
    while True:
        following = _read_exactly(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        if counter >= MAX_CHUNKS:
            raise ValueError("file too large for this chunk size")
        aad = digest + (b"\x01" if last else b"\x00")
        dst.write(aead.encrypt(_nonce(_V2_NONCE_PREFIX, counter, last), chunk, aad))
        total += len(chunk)
        counter += 1
        if last:
            return total
        chunk = following


def decrypt_stream(
    source: DataKeySource,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    expected_key_id: str | None = None,
    expected_context: Mapping[str, str] | None = None,
) -> int:
    """Decrypt ``src`` (format version 1 or 2) into ``dst``; the number of plaintext bytes.

    ``expected_key_id`` and ``expected_context``, when given, must be what the header names (an
    empty context matches a file without one), or ``UnexpectedHeaderError`` is raised before kms
    is asked anything. Raises ``InvalidCiphertextError`` for any damaged, cut, reordered, spliced
    or extended file; output written before the failure must then be discarded."""
    header = read_header(src)
    _check_expected(header, expected_key_id, expected_context)
    data_key = source.decrypt(header.key_id, header.wrapped_key, header.context)
    if len(data_key) != DATA_KEY_BYTES:
        raise _invalid()
    if header.version == 1:
        aead = AESGCM(data_key)
        prefix = header.salt
    else:
        keys = _file_keys(data_key, header.salt)
        _verify_commitment(keys, header)
        aead = AESGCM(keys.chunk)
        prefix = _V2_NONCE_PREFIX
    digest = hashlib.sha256(header.bound).digest()
    sealed_size = header.chunk_size + TAG_BYTES
    total = 0
    counter = 0
    sealed = _read_exactly(src, sealed_size)
    while True:
        following = _read_exactly(src, sealed_size) if len(sealed) == sealed_size else b""
        last = not following
        if len(sealed) < TAG_BYTES or counter >= MAX_CHUNKS:
            raise _invalid()
        aad = digest + (b"\x01" if last else b"\x00")
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


def rewrap_stream(
    source: RewrapSource,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    expected_key_id: str | None = None,
    expected_context: Mapping[str, str] | None = None,
) -> Encrypted:
    """Copy the version 2 file ``src`` to ``dst`` with its data key re-wrapped by kms under the
    key's latest version; the chunks are copied byte for byte, unread. The new wrapped key is
    unwrapped once and checked against the commitment and the header tag before anything is
    written, so a file whose header does not fit its key is refused (``InvalidCiphertextError``)
    with ``dst`` empty. A version 1 file raises ``FileFormatError``: its chunks depend on the
    wrapped key."""
    header = read_header(src)
    _check_expected(header, expected_key_id, expected_context)
    if header.version != FORMAT_VERSION:
        raise FileFormatError(
            f"a version {header.version} file cannot be re-wrapped in place: decrypt it and "
            "encrypt it again"
        )
    rewrapped = source.rewrap(header.key_id, header.wrapped_key, header.context)
    if rewrapped.key_id != header.key_id:
        raise _invalid()
    data_key = source.decrypt(header.key_id, rewrapped.ciphertext, header.context)
    _verify_commitment(_file_keys(data_key, header.salt), header)
    dst.write(header.bound)
    dst.write(header.tag)
    dst.write(_wrapped_field(rewrapped.ciphertext))
    shutil.copyfileobj(src, dst, _COPY_BYTES)
    return rewrapped


def read_header(src: BinaryIO) -> FileHeader:
    """The header at the start of ``src`` (left positioned at the first chunk); nothing in it is
    authenticated yet. Raises ``InvalidCiphertextError`` for anything that is not a header."""
    start = _read_exactly(src, _START.size)
    if len(start) != _START.size:
        raise _invalid()
    magic, version, chunk_size = _START.unpack(start)
    if magic != MAGIC or version not in READABLE_VERSIONS:
        raise _invalid()
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise _invalid()
    salt_size = NONCE_PREFIX_BYTES if version == 1 else FILE_ID_BYTES
    salt = _read_exactly(src, salt_size)
    if len(salt) != salt_size:
        raise _invalid()
    parts = [start, salt]
    key_id_bytes = _read_field(src, ">H", parts)
    context_bytes = _read_field(src, ">I", parts, limit=MAX_CONTEXT_BYTES)
    commitment = tag = b""
    if version != 1:
        commitment = _read_exactly(src, COMMITMENT_BYTES)
        tag = _read_exactly(src, HEADER_TAG_BYTES)
        if len(commitment) != COMMITMENT_BYTES or len(tag) != HEADER_TAG_BYTES:
            raise _invalid()
        parts.append(commitment)
        bound = b"".join(parts)
        wrapped_bytes = _read_field(src, ">H", [])
    else:
        wrapped_bytes = _read_field(src, ">H", parts)
        bound = b"".join(parts)
    try:
        key_id = key_id_bytes.decode("utf-8")
        wrapped = wrapped_bytes.decode("ascii")
        context = json.loads(context_bytes) if context_bytes else None
    except (UnicodeDecodeError, ValueError):
        raise _invalid() from None
    if not key_id or not wrapped or not _is_context(context):
        raise _invalid()
    if version != 1 and _canonical_context(context) != context_bytes:
        raise _invalid()
    return FileHeader(
        version=version,
        chunk_size=chunk_size,
        key_id=key_id,
        context=context,
        wrapped_key=wrapped,
        salt=salt,
        commitment=commitment,
        tag=tag,
        bound=bound,
    )


def _is_context(context: object) -> bool:
    return context is None or (
        isinstance(context, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items())
    )


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
def opened_destination(dst: Source, *, mode_of: Path | None = None) -> Iterator[BinaryIO]:
    """A path is written through a temporary file beside it, renamed into place only when the
    block completes: a failure (a tampered file) leaves no partial output at ``dst``. With
    ``mode_of``, the new file gets that file's permission bits (a file replaced in place keeps
    its own); otherwise it is readable by its owner only."""
    if not isinstance(dst, str | os.PathLike):
        yield dst
        return
    target = Path(dst)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode_of is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(mode_of.stat().st_mode))
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename durable: the directory entry, not only the file's bytes, reaches the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
