"""The streaming file format of ``kms.client``: round trips, flat memory, and every tamper refused.

The data keys come from a local stand-in with the ``/datakey``, ``/decrypt`` and ``/rewrap``
contract (a data key in plaintext and wrapped under versioned wrapping keys, unwrapped again by
``decrypt``, re-wrapped under the latest version by ``rewrap``), so the format is tested here
without a server; the same through a live server is in tests/http/test_client_files.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import struct
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.client.errors import FileFormatError, InvalidCiphertextError, UnexpectedHeaderError
from kms.client.files import (
    COMMITMENT_BYTES,
    DEFAULT_CHUNK_SIZE,
    FILE_ID_BYTES,
    HEADER_TAG_BYTES,
    TAG_BYTES,
    _authenticated_part,
    _file_keys,
    _header_tag,
    _wrapped_field,
    decrypt_stream,
    encrypt_stream,
    opened_destination,
    read_header,
    rewrap_stream,
)
from kms.client.models import DataKey, Encrypted
from tests.helpers.client_file_v1 import (
    V1_CONTEXT,
    V1_DATA_KEY,
    V1_FILE,
    V1_KEY_ID,
    V1_PLAINTEXT,
    V1_WRAPPED,
    encrypt_stream_v1,
)

CHUNK = 1024


class LocalDataKeys:
    """The /datakey, /decrypt and /rewrap contract, with versioned wrapping keys held in this
    process. ``bind_header`` false stands in for a wrapping that ignores key_id and context, to
    show what the file's own header tag refuses."""

    def __init__(self, *, bind_header: bool = True) -> None:
        self._versions = {1: AESGCM(AESGCM.generate_key(bit_length=256))}
        self._bind = bind_header
        self.issued = 0
        self.unwrapped = 0

    def rotate(self) -> None:
        self._versions[max(self._versions) + 1] = AESGCM(AESGCM.generate_key(bit_length=256))

    def trim(self, below: int) -> None:
        for version in [v for v in self._versions if v < below]:
            del self._versions[version]

    def _aad(self, key_id: str, context: Mapping[str, str] | None) -> bytes:
        if not self._bind:
            return b""
        return key_id.encode() + b"|" + repr(sorted((context or {}).items())).encode()

    def _wrap(self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None) -> str:
        version = max(self._versions)
        nonce = secrets.token_bytes(12)
        sealed = self._versions[version].encrypt(nonce, plaintext, self._aad(key_id, context))
        return f"v{version}:" + base64.b64encode(nonce + sealed).decode()

    def generate_data_key(
        self, key_id: str, *, bytes: int, context: Mapping[str, str] | None
    ) -> DataKey:
        plaintext = secrets.token_bytes(bytes)
        self.issued += 1
        return DataKey(
            ciphertext=self._wrap(key_id, plaintext, context),
            key_id=key_id,
            version=max(self._versions),
            plaintext=plaintext,
        )

    def decrypt(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> bytes:
        self.unwrapped += 1
        try:
            prefix, _, text = ciphertext.partition(":")
            wrapping = self._versions[int(prefix.removeprefix("v"))]
            raw = base64.b64decode(text, validate=True)
            return wrapping.decrypt(raw[:12], raw[12:], self._aad(key_id, context))
        except (InvalidTag, ValueError, KeyError):
            raise InvalidCiphertextError("invalid ciphertext") from None

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        plaintext = self.decrypt(key_id, ciphertext, context)
        wrapped = self._wrap(key_id, plaintext, context)
        return Encrypted(ciphertext=wrapped, key_id=key_id, version=max(self._versions))


@pytest.fixture
def keys() -> LocalDataKeys:
    return LocalDataKeys()


def encrypt(keys: LocalDataKeys, plaintext: bytes, chunk_size: int = CHUNK, **kw: Any) -> bytes:
    out = io.BytesIO()
    size = encrypt_stream(keys, "files", io.BytesIO(plaintext), out, chunk_size=chunk_size, **kw)
    assert size == len(plaintext)
    return out.getvalue()


def decrypt(keys: object, sealed: bytes, **expected: object) -> bytes:
    out = io.BytesIO()
    decrypt_stream(keys, io.BytesIO(sealed), out, **expected)  # type: ignore[arg-type]
    return out.getvalue()


def rewrap(keys: object, sealed: bytes, **expected: object) -> bytes:
    out = io.BytesIO()
    rewrap_stream(keys, io.BytesIO(sealed), out, **expected)  # type: ignore[arg-type]
    return out.getvalue()


def layout(sealed: bytes) -> dict[str, tuple[int, int]]:
    """Where each field of a version 2 header lies: name -> (start, end)."""
    fields: dict[str, tuple[int, int]] = {}
    offset = 0

    def take(name: str, size: int) -> None:
        nonlocal offset
        fields[name] = (offset, offset + size)
        offset += size

    take("start", 9)
    take("file_id", FILE_ID_BYTES)
    (length,) = struct.unpack(">H", sealed[offset : offset + 2])
    take("key_id", 2 + length)
    (length,) = struct.unpack(">I", sealed[offset : offset + 4])
    take("context", 4 + length)
    take("commitment", COMMITMENT_BYTES)
    take("tag", HEADER_TAG_BYTES)
    (length,) = struct.unpack(">H", sealed[offset : offset + 2])
    take("wrapped", 2 + length)
    return fields


def header_length(sealed: bytes) -> int:
    return layout(sealed)["wrapped"][1]


def split(sealed: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    start = header_length(sealed)
    body = sealed[start:]
    size = chunk_size + TAG_BYTES
    return sealed[:start], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_round_trip(keys: LocalDataKeys, size: int) -> None:
    plaintext = os.urandom(size)
    sealed = encrypt(keys, plaintext)
    assert decrypt(keys, sealed) == plaintext
    header, chunks = split(sealed)
    assert header.startswith(b"KMSF\x02")
    assert len(chunks) == max(1, -(-size // CHUNK))  # full chunks, the last one 0..CHUNK
    assert size < 16 or plaintext[:16] not in sealed


@settings(max_examples=60, deadline=None)
@given(
    chunk_size=st.sampled_from([1024, 1031, 4096]),
    chunks=st.integers(min_value=0, max_value=4),
    offset=st.integers(min_value=-2, max_value=2),
    context=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
def test_round_trips_around_chunk_boundaries(
    chunk_size: int, chunks: int, offset: int, context: dict[str, str] | None
) -> None:
    keys = LocalDataKeys()
    plaintext = os.urandom(max(0, chunks * chunk_size + offset))
    sealed = encrypt(keys, plaintext, chunk_size=chunk_size, context=context)
    header, sealed_chunks = split(sealed, chunk_size)
    assert len(sealed_chunks) == max(1, -(-len(plaintext) // chunk_size))
    assert (
        decrypt(keys, sealed, expected_key_id="files", expected_context=context or {}) == plaintext
    )
    keys.rotate()
    rewrapped = rewrap(keys, sealed)
    keys.trim(below=2)
    assert decrypt(keys, rewrapped) == plaintext
    if sealed_chunks:
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, header[:-1] + b"".join(sealed_chunks))


def test_the_context_is_bound(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, b"payload", context={"tenant": "a"})
    assert decrypt(keys, sealed) == b"payload"
    # The same file claiming another context: the data key no longer unwraps.
    changed = sealed.replace(b'{"tenant":"a"}', b'{"tenant":"b"}')
    assert changed != sealed
    with pytest.raises(InvalidCiphertextError):
        decrypt(keys, changed)


@pytest.mark.parametrize("field", ["start", "file_id", "key_id", "context", "commitment", "tag"])
def test_every_header_edit_is_refused_by_the_file_itself(field: str) -> None:
    """With a wrapping that binds neither key_id nor context (so kms's own check cannot help),
    a change to any byte of the header but the wrapped key is still refused: by the header tag,
    the commitment, or the chunks, and before any plaintext is written."""
    keys = LocalDataKeys(bind_header=False)
    sealed = encrypt(keys, os.urandom(2 * CHUNK + 3), context={"tenant": "a"})
    start, end = layout(sealed)[field]
    for position in range(start, end):
        if field == "start" and position < 5:
            continue  # magic and version: not a file of any known version
        damaged = bytearray(sealed)
        damaged[position] ^= 0x01
        out = io.BytesIO()
        with pytest.raises(InvalidCiphertextError):
            decrypt_stream(keys, io.BytesIO(bytes(damaged)), out)
        assert out.getvalue() == b"", (field, position)


def test_a_wrapped_key_from_another_file_fails_the_commitment(keys: LocalDataKeys) -> None:
    """Key commitment: a header whose wrapped key opens to another data key is refused before
    any chunk is decrypted, even though kms unwraps that key without complaint."""
    one = encrypt(keys, os.urandom(CHUNK + 1))
    other = encrypt(keys, os.urandom(CHUNK + 1))
    start, end = layout(one)["wrapped"]
    other_start, other_end = layout(other)["wrapped"]
    transplanted = one[:start] + other[other_start:other_end] + one[end:]
    unwrapped = keys.unwrapped
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertextError):
        decrypt_stream(keys, io.BytesIO(transplanted), out)
    assert keys.unwrapped == unwrapped + 1  # kms did unwrap it: the commitment refused it
    assert out.getvalue() == b""


def test_the_reader_checks_the_commitment_itself() -> None:
    """A writer who holds the data key can make every tag fit; the reader still derives the
    commitment from the data key kms unwrapped and refuses a header whose commitment differs,
    before any chunk."""
    keys = LocalDataKeys()
    data_key = keys.generate_data_key("files", bytes=32, context=None)
    assert data_key.plaintext is not None
    file_id = secrets.token_bytes(FILE_ID_BYTES)
    derived = _file_keys(data_key.plaintext, file_id)
    for commitment, refused in ((derived.commitment, False), (bytes(COMMITMENT_BYTES), True)):
        authenticated = _authenticated_part(CHUNK, file_id, "files", b"", commitment)
        digest = hashlib.sha256(authenticated).digest()
        sealed = b"".join(
            (
                authenticated,
                _header_tag(derived.header, authenticated),
                _wrapped_field(data_key.ciphertext),
                AESGCM(derived.chunk).encrypt(bytes(7) + b"\0\0\0\0\1", b"hi", digest + b"\1"),
            )
        )
        if not refused:
            assert decrypt(keys, sealed) == b"hi"
            continue
        out = io.BytesIO()
        with pytest.raises(InvalidCiphertextError):
            decrypt_stream(keys, io.BytesIO(sealed), out)
        assert out.getvalue() == b""


def test_a_file_cut_at_a_chunk_boundary_is_refused(keys: LocalDataKeys) -> None:
    header, chunks = split(encrypt(keys, os.urandom(3 * CHUNK + 5)))
    for kept in range(0, len(chunks)):
        with pytest.raises(InvalidCiphertextError):
            decrypt(keys, header + b"".join(chunks[:kept]))


def test_a_file_cut_anywhere_else_is_refused(keys: LocalDataKeys) -> None:
    sealed = encrypt(keys, os.urandom(2 * CHUNK + 5))
    for cut in (0, 3, 16, 60, header_length(sealed), header_length(sealed) + 10, len(sealed) - 1):
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
        header_b + b"".join(chunks_a),  # another file's header (its key and file id)
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


# -- re-wrapping and what the caller expects ------------------------------------------------------


def test_a_rewrapped_file_decrypts_after_the_old_version_is_gone(keys: LocalDataKeys) -> None:
    plaintext = os.urandom(2 * CHUNK + 9)
    sealed = encrypt(keys, plaintext, context={"tenant": "a"})
    keys.rotate()
    rewrapped = rewrap(keys, sealed)
    old, new = layout(sealed), layout(rewrapped)
    assert rewrapped[: old["tag"][1]] == sealed[: old["tag"][1]]  # A and its tag: unchanged
    assert rewrapped[new["wrapped"][0] + 2 : new["wrapped"][0] + 5] == b"v2:"  # the new version
    assert rewrapped[new["wrapped"][1] :] == sealed[old["wrapped"][1] :]  # chunks: byte for byte
    keys.trim(below=2)
    assert decrypt(keys, rewrapped) == plaintext
    with pytest.raises(InvalidCiphertextError):
        decrypt(keys, sealed)  # the version that wrapped it is gone


def test_rewrap_refuses_a_wrapped_key_that_does_not_open_the_file(keys: LocalDataKeys) -> None:
    """The new wrapped key is checked against the commitment before anything is written: a
    re-wrap answered with another data key (a confused or hostile server) writes nothing."""

    class Substituting(LocalDataKeys):
        def rewrap(
            self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
        ) -> Encrypted:
            other = self.generate_data_key(key_id, bytes=32, context=context)
            return Encrypted(ciphertext=other.ciphertext, key_id=key_id, version=1)

    hostile = Substituting()
    sealed = encrypt(hostile, os.urandom(CHUNK))
    out = io.BytesIO()
    with pytest.raises(InvalidCiphertextError):
        rewrap_stream(hostile, io.BytesIO(sealed), out)
    assert out.getvalue() == b""


def test_a_version_1_file_is_not_rewrapped(keys: LocalDataKeys) -> None:
    out = io.BytesIO()
    with pytest.raises(FileFormatError, match="version 1 file cannot be re-wrapped"):
        rewrap_stream(keys, io.BytesIO(V1_FILE), out)
    assert out.getvalue() == b""


def test_a_header_naming_another_key_or_context_is_refused_before_kms_is_asked() -> None:
    keys = LocalDataKeys()
    sealed = encrypt(keys, b"payload", context={"tenant": "a"})
    expectations: tuple[dict[str, Any], ...] = (
        {"expected_key_id": "other"},
        {"expected_context": {"tenant": "b"}},
        {"expected_context": {}},
        {"expected_key_id": "files", "expected_context": {"tenant": "a", "more": "x"}},
    )
    for expected in expectations:
        with pytest.raises(UnexpectedHeaderError):
            decrypt(keys, sealed, **expected)
        with pytest.raises(UnexpectedHeaderError):
            rewrap(keys, sealed, **expected)
    assert keys.unwrapped == 0
    expected_both = {"expected_key_id": "files", "expected_context": {"tenant": "a"}}
    assert decrypt(keys, sealed, **expected_both) == b"payload"
    assert decrypt(keys, encrypt(keys, b"x"), expected_context={}) == b"x"
    with pytest.raises(UnexpectedHeaderError):
        decrypt(keys, encrypt(keys, b"x"), expected_context={"tenant": "a"})


# -- version 1 ------------------------------------------------------------------------------------


class V1FixtureKey:
    """kms as it unwrapped the data key of ``V1_FILE``."""

    def decrypt(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> bytes:
        if (key_id, ciphertext, context) != (V1_KEY_ID, V1_WRAPPED, V1_CONTEXT):
            raise InvalidCiphertextError("invalid ciphertext")
        return V1_DATA_KEY


def test_a_file_the_version_1_writer_made_still_decrypts() -> None:
    assert V1_FILE.startswith(b"KMSF\x01")
    assert decrypt(V1FixtureKey(), V1_FILE) == V1_PLAINTEXT
    assert decrypt(V1FixtureKey(), V1_FILE, expected_key_id=V1_KEY_ID) == V1_PLAINTEXT
    with pytest.raises(UnexpectedHeaderError):
        decrypt(V1FixtureKey(), V1_FILE, expected_context={"tenant": "b"})
    header = read_header(io.BytesIO(V1_FILE))
    assert (header.version, header.key_id, header.context) == (1, V1_KEY_ID, V1_CONTEXT)


def test_version_1_files_are_still_refused_when_changed(keys: LocalDataKeys) -> None:
    for position in range(0, len(V1_FILE), 13):
        damaged = bytearray(V1_FILE)
        damaged[position] ^= 0x01
        with pytest.raises(InvalidCiphertextError):
            decrypt(V1FixtureKey(), bytes(damaged))
    out = io.BytesIO()
    plaintext = os.urandom(3 * CHUNK)
    encrypt_stream_v1(keys, "files", plaintext, out, chunk_size=CHUNK)
    sealed = out.getvalue()
    assert decrypt(keys, sealed) == plaintext
    with pytest.raises(InvalidCiphertextError):
        decrypt(keys, sealed[: -CHUNK - TAG_BYTES])  # cut at a chunk boundary


# -- output and memory ----------------------------------------------------------------------------


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
    rewrapped_path = tmp_path / "rewrapped.kms"

    tracemalloc.start()
    try:
        with source.open("rb") as src, opened_destination(sealed_path) as dst:
            size = encrypt_stream(keys, "files", src, dst)
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with sealed_path.open("rb") as src, opened_destination(rewrapped_path) as dst:
            rewrap_stream(keys, src, dst)
        _, rewrap_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with rewrapped_path.open("rb") as src, opened_destination(back) as dst:
            assert decrypt_stream(keys, src, dst) == size
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size == 50 * 1024 * 1024
    # A few chunks in flight at most (64 KiB each), whatever the file's size: not the file.
    assert encrypt_peak < 8 * DEFAULT_CHUNK_SIZE, encrypt_peak
    assert decrypt_peak < 8 * DEFAULT_CHUNK_SIZE, decrypt_peak
    assert rewrap_peak < 8 * DEFAULT_CHUNK_SIZE, rewrap_peak
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
