"""The streaming file format of ``kms.client``: round trips, flat memory, and every tamper refused.

The data keys come from a local stand-in with the ``/datakey`` contract (a data key in plaintext
and wrapped, unwrapped again by ``decrypt``), so the format is tested here without a server; the
round trip through a live server is in tests/http/test_client.py.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import struct
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.client.errors import InvalidCiphertextError
from kms.client.files import (
    DEFAULT_CHUNK_SIZE,
    TAG_BYTES,
    decrypt_stream,
    encrypt_stream,
    opened_destination,
)
from kms.client.models import DataKey

CHUNK = 1024


class LocalDataKeys:
    """The /datakey and /decrypt contract, with a wrapping key held in this process."""

    def __init__(self) -> None:
        self._wrapping = AESGCM(AESGCM.generate_key(bit_length=256))
        self.issued = 0

    @staticmethod
    def _aad(key_id: str, context: Mapping[str, str] | None) -> bytes:
        return key_id.encode() + b"|" + repr(sorted((context or {}).items())).encode()

    def generate_data_key(
        self, key_id: str, *, bytes: int, context: Mapping[str, str] | None
    ) -> DataKey:
        plaintext = secrets.token_bytes(bytes)
        nonce = secrets.token_bytes(12)
        sealed = self._wrapping.encrypt(nonce, plaintext, self._aad(key_id, context))
        self.issued += 1
        wrapped = "v1:" + base64.b64encode(nonce + sealed).decode()
        return DataKey(ciphertext=wrapped, key_id=key_id, version=1, plaintext=plaintext)

    def decrypt(self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None):
        try:
            raw = base64.b64decode(ciphertext.removeprefix("v1:"), validate=True)
            return self._wrapping.decrypt(raw[:12], raw[12:], self._aad(key_id, context))
        except (InvalidTag, ValueError):
            raise InvalidCiphertextError("invalid ciphertext") from None


@pytest.fixture
def keys() -> LocalDataKeys:
    return LocalDataKeys()


def encrypt(keys: LocalDataKeys, plaintext: bytes, chunk_size: int = CHUNK, **kw: object) -> bytes:
    out = io.BytesIO()
    size = encrypt_stream(keys, "files", io.BytesIO(plaintext), out, chunk_size=chunk_size, **kw)
    assert size == len(plaintext)
    return out.getvalue()


def decrypt(keys: LocalDataKeys, sealed: bytes) -> bytes:
    out = io.BytesIO()
    decrypt_stream(keys, io.BytesIO(sealed), out)
    return out.getvalue()


def header_length(sealed: bytes) -> int:
    offset = 16
    (key_id_len,) = struct.unpack(">H", sealed[offset : offset + 2])
    offset += 2 + key_id_len
    (context_len,) = struct.unpack(">I", sealed[offset : offset + 4])
    offset += 4 + context_len
    (wrapped_len,) = struct.unpack(">H", sealed[offset : offset + 2])
    return offset + 2 + wrapped_len


def split(sealed: bytes) -> tuple[bytes, list[bytes]]:
    start = header_length(sealed)
    body = sealed[start:]
    size = CHUNK + TAG_BYTES
    return sealed[:start], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_round_trip(keys: LocalDataKeys, size: int) -> None:
    plaintext = os.urandom(size)
    sealed = encrypt(keys, plaintext)
    assert decrypt(keys, sealed) == plaintext
    header, chunks = split(sealed)
    assert header.startswith(b"KMSF\x01")
    assert len(chunks) == max(1, -(-size // CHUNK))  # full chunks, the last one 0..CHUNK
    assert size < 16 or plaintext[:16] not in sealed


def test_the_context_is_bound(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, b"payload", context={"tenant": "a"})
    assert decrypt(keys, sealed) == b"payload"
    # The same file claiming another context: the data key no longer unwraps.
    changed = sealed.replace(b'{"tenant":"a"}', b'{"tenant":"b"}')
    assert changed != sealed
    with pytest.raises(InvalidCiphertextError):
        decrypt(keys, changed)


def test_a_file_cut_at_a_chunk_boundary_is_refused(keys: LocalDataKeys) -> None:
    header, chunks = split(encrypt(keys, os.urandom(3 * CHUNK + 5)))
    for kept in range(1, len(chunks)):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, header + b"".join(chunks[:kept]))


def test_a_file_cut_anywhere_else_is_refused(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, os.urandom(2 * CHUNK + 5))
    for cut in (0, 3, 16, header_length(sealed), header_length(sealed) + 10, len(sealed) - 1):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, sealed[:cut])


def test_reordered_chunks_are_refused(keys: LocalDataKeys) -> None:
    header, chunks = split(encrypt(keys, os.urandom(3 * CHUNK)))
    assert len(chunks) == 3
    for order in ([1, 0, 2], [0, 2, 1], [0, 0, 2], [0, 1, 1]):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, header + b"".join(chunks[i] for i in order))


def test_spliced_files_are_refused(keys: LocalDataKeys) -> None:
    plaintext = os.urandom(3 * CHUNK)
    header_a, chunks_a = split(encrypt(keys, plaintext))
    header_b, chunks_b = split(encrypt(keys, plaintext))
    assert decrypt(keys, header_a + b"".join(chunks_a)) == plaintext
    for spliced in (
        header_a + chunks_a[0] + chunks_b[1] + chunks_a[2],  # a chunk of another file
        header_b + b"".join(chunks_a),  # another file's header (its key and prefix)
        header_a + chunks_a[0] + chunks_a[1] + chunks_b[2],  # another file's last chunk
    ):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, spliced)


def test_anything_appended_is_refused(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, os.urandom(CHUNK + 3))
    header, chunks = split(sealed)
    for extended in (sealed + b"\x00", sealed + chunks[-1], sealed + chunks[0]):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, extended)


def test_every_flipped_byte_is_refused(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, os.urandom(CHUNK + 40))
    for position in range(0, len(sealed), 7):
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, bytes(damaged))


def test_decrypting_to_a_path_leaves_nothing_behind_on_failure(
    keys: LocalDataKeys, tmp_path: Path
) -> None:
    sealed = encrypt(keys, os.urandom(3 * CHUNK))
    header, chunks = split(sealed)
    target = tmp_path / "out.bin"
    with (
        pytest.raises(InvalidCiphertextError),
        opened_destination(target) as out,
    ):
        decrypt_stream(keys, io.BytesIO(header + chunks[0] + chunks[2]), out)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_fifty_megabytes_round_trip_in_flat_memory(keys: LocalDataKeys, tmp_path: Path) -> None:
    source = tmp_path / "plain.bin"
    block = os.urandom(1024 * 1024)
    with source.open("wb") as handle:
        for index in range(50):
            handle.write(bytes([index]) + block[1:])
    sealed_path = tmp_path / "sealed.kms"
    back = tmp_path / "back.bin"

    tracemalloc.start()
    try:
        with source.open("rb") as src, opened_destination(sealed_path) as dst:
            size = encrypt_stream(keys, "files", src, dst)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with sealed_path.open("rb") as src, opened_destination(back) as dst:
            assert decrypt_stream(keys, src, dst) == size
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size == 50 * 1024 * 1024
    # A few chunks in flight at most (64 KiB each), whatever the file's size: not the file.
    assert encrypt_peak < 8 * DEFAULT_CHUNK_SIZE, encrypt_peak
    assert decrypt_peak < 8 * DEFAULT_CHUNK_SIZE, decrypt_peak
    with source.open("rb") as original, back.open("rb") as restored:
        while True:
            expected, got = original.read(1 << 20), restored.read(1 << 20)
            assert expected == got
            if not expected:
                break
    assert keys.issued == 1  # one data key for the whole file


def test_a_bad_chunk_size_is_refused(keys: LocalDataKeys) -> None:
    with pytest.raises(ValueError):
        encrypt(keys, b"x", chunk_size=10)
