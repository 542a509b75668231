"""Encrypted files (format version 2) through a real kms: re-wrapping in place across a rotation and
a trim, the key and context the caller expects, tampering, version 1 files, and ``kms client``.

The format's byte-level attacks run without a server in tests/unit/test_client_files.py; here
each attack goes through the real /datakey, /decrypt and /rewrap of a gunicorn over mTLS.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.client import (
    FileFormatError,
    InvalidCiphertextError,
    KMSClient,
    UnexpectedHeaderError,
)
from kms.client.files import TAG_BYTES
from tests.helpers.client_file_v1 import encrypt_stream_v1
from tests.helpers.harness import ServerProcess, unique_key_id
from tests.http.test_client import client_for, run_client

CHUNK = 1024


@pytest.fixture
def kms(server: ServerProcess) -> Iterator[KMSClient]:
    with client_for(server.deployment) as client:
        yield client


def wrapped_start(sealed: bytes) -> int:
    """A version 2 header: 9 + file id 32, key id, context, commitment 32, tag 32, wrapped key."""
    offset = 9 + 32
    (length,) = struct.unpack(">H", sealed[offset : offset + 2])
    offset += 2 + length
    (length,) = struct.unpack(">I", sealed[offset : offset + 4])
    return offset + 4 + length + 32 + 32


def header_length(sealed: bytes) -> int:
    offset = wrapped_start(sealed)
    (length,) = struct.unpack(">H", sealed[offset : offset + 2])
    return offset + 2 + length


def chunks_of(sealed: bytes) -> list[bytes]:
    body = sealed[header_length(sealed) :]
    return [body[i : i + CHUNK + TAG_BYTES] for i in range(0, len(body), CHUNK + TAG_BYTES)]


def test_rewrap_file_survives_rotation_and_trim(kms: KMSClient, tmp_path: Path) -> None:
    """Encrypt, rotate, re-wrap in place, trim the version that wrapped the data key: the file
    still decrypts, and one that was not re-wrapped no longer does (the trim took effect)."""
    key_id = unique_key_id("rewrap-file")
    kms.create_key(key_id)
    plaintext = os.urandom(5 * CHUNK + 17)
    (tmp_path / "plain.bin").write_bytes(plaintext)
    sealed, kept = tmp_path / "sealed.kms", tmp_path / "not-rewrapped.kms"
    kms.encrypt_file(key_id, tmp_path / "plain.bin", sealed, {"app": "x"}, chunk_size=CHUNK)
    kms.encrypt_file(key_id, tmp_path / "plain.bin", kept, {"app": "x"}, chunk_size=CHUNK)
    sealed.chmod(0o640)
    before = sealed.read_bytes()
    assert before.startswith(b"KMSF\x02")

    kms.rotate_key(key_id)
    rewrapped = kms.rewrap_file(sealed, expected_key_id=key_id, expected_context={"app": "x"})
    assert (rewrapped.key_id, rewrapped.version) == (key_id, 2)
    after = sealed.read_bytes()
    assert after != before
    assert chunks_of(after) == chunks_of(before)  # the chunks: byte for byte
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o640  # replaced in place, mode kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "not-rewrapped.kms",
        "plain.bin",
        "sealed.kms",
    ]  # no temporary file left behind

    kms.update_key(key_id, min_decryption_version=2)
    kms.trim_key(key_id, 2)
    assert kms.decrypt_file(sealed, tmp_path / "back.bin", expected_key_id=key_id) == len(plaintext)
    assert (tmp_path / "back.bin").read_bytes() == plaintext
    # Its version trimmed, the file's data key is a ciphertext like any that does not decrypt.
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_file(kept, tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()


def test_a_header_naming_another_key_or_context_is_refused(kms: KMSClient, tmp_path: Path) -> None:
    """Someone who may use a key of their own writes a file the victim expects under the
    victim's key: without expectations it decrypts (the file chooses the key); with them, the
    header is refused before kms is asked."""
    victim, attacker = unique_key_id("victim"), unique_key_id("attacker")
    kms.create_key(victim)
    kms.create_key(attacker)
    (tmp_path / "forged.bin").write_bytes(b"pay the attacker")
    forged = tmp_path / "forged.kms"
    kms.encrypt_file(attacker, tmp_path / "forged.bin", forged, {"tenant": "evil"})
    assert kms.decrypt_file(forged, io.BytesIO()) == len(b"pay the attacker")

    expectations: tuple[dict[str, Any], ...] = (
        {"expected_key_id": victim},
        {"expected_context": {"tenant": "good"}},
        {"expected_key_id": victim, "expected_context": {"tenant": "evil"}},
    )
    before = forged.read_bytes()
    for expected in expectations:
        with pytest.raises(UnexpectedHeaderError):
            kms.decrypt_file(forged, tmp_path / "out.bin", **expected)
        assert not (tmp_path / "out.bin").exists()
        with pytest.raises(UnexpectedHeaderError):
            kms.rewrap_file(forged, **expected)
    assert forged.read_bytes() == before
    right = kms.decrypt_file(
        forged, io.BytesIO(), expected_key_id=attacker, expected_context={"tenant": "evil"}
    )
    assert right == len(b"pay the attacker")


def test_tampered_files_are_refused(kms: KMSClient, tmp_path: Path) -> None:
    key_id = unique_key_id("tamper")
    kms.create_key(key_id)
    plaintext = os.urandom(3 * CHUNK + 5)
    (tmp_path / "plain.bin").write_bytes(plaintext)
    paths = [tmp_path / "a.kms", tmp_path / "b.kms"]
    for path in paths:
        kms.encrypt_file(key_id, tmp_path / "plain.bin", path, {"n": "1"}, chunk_size=CHUNK)
    a, b = (path.read_bytes() for path in paths)
    header_a, header_b = a[: header_length(a)], b[: header_length(b)]
    chunks_a, chunks_b = chunks_of(a), chunks_of(b)
    assert len(chunks_a) == 4

    def edited(offset: int) -> bytes:
        damaged = bytearray(a)
        damaged[offset] ^= 0x01
        return bytes(damaged)

    attacks = {
        "cut at a chunk boundary": header_a + b"".join(chunks_a[:3]),
        "cut inside a chunk": a[:-3],
        "chunks reordered": header_a + b"".join(chunks_a[i] for i in (0, 2, 1, 3)),
        "a chunk from another file": header_a + chunks_a[0] + chunks_b[1] + b"".join(chunks_a[2:]),
        "another file's header": header_b + b"".join(chunks_a),
        # b's wrapped key in a's header: kms unwraps it, the commitment refuses it.
        "another file's wrapped key": a[: wrapped_start(a)]
        + b[wrapped_start(b) : header_length(b)]
        + a[header_length(a) :],
        "chunk size edited": edited(8),
        "file id edited": edited(20),
        "context edited": a.replace(b'{"n":"1"}', b'{"n":"2"}'),
        "commitment edited": edited(wrapped_start(a) - 40),
        "header tag edited": edited(wrapped_start(a) - 1),
        "appended": a + chunks_a[-1],
    }
    for name, forged in attacks.items():
        assert forged != a, name
        (tmp_path / "forged.kms").write_bytes(forged)
        with pytest.raises(InvalidCiphertextError):
            kms.decrypt_file(tmp_path / "forged.kms", tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists(), name
    assert kms.decrypt_file(paths[0], io.BytesIO()) == len(plaintext)


def test_a_version_1_file_still_decrypts(kms: KMSClient, tmp_path: Path) -> None:
    """A file the version 1 writer made through the real /datakey decrypts with today's reader;
    re-wrapping it in place is refused and leaves it as it was."""
    key_id = unique_key_id("v1-file")
    kms.create_key(key_id)
    plaintext = os.urandom(2 * CHUNK + 3)
    old = tmp_path / "old.kms"
    with old.open("wb") as out:
        encrypt_stream_v1(kms, key_id, plaintext, out, context={"a": "b"}, chunk_size=CHUNK)
    written = old.read_bytes()
    assert written.startswith(b"KMSF\x01")
    back = io.BytesIO()
    assert kms.decrypt_file(old, back, expected_key_id=key_id, expected_context={"a": "b"}) > 0
    assert back.getvalue() == plaintext
    with pytest.raises(FileFormatError):
        kms.rewrap_file(old)
    assert old.read_bytes() == written

    # Why: version 1 chunks depend on the wrapped key. Re-wrapped by kms and put back into the
    # header, the data key is the same, yet the file no longer decrypts.
    offset = 16
    (length,) = struct.unpack(">H", written[offset : offset + 2])
    offset += 2 + length
    (length,) = struct.unpack(">I", written[offset : offset + 4])
    offset += 4 + length
    (length,) = struct.unpack(">H", written[offset : offset + 2])
    wrapped = written[offset + 2 : offset + 2 + length].decode()
    kms.rotate_key(key_id)
    new = kms.rewrap(key_id, wrapped, {"a": "b"}).ciphertext.encode()
    assert kms.decrypt(key_id, new.decode(), {"a": "b"}) == kms.decrypt(key_id, wrapped, {"a": "b"})
    spliced = written[:offset] + struct.pack(">H", len(new)) + new + written[offset + 2 + length :]
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_file(io.BytesIO(spliced), io.BytesIO())
    (tmp_path / "cut.kms").write_bytes(written[: -(CHUNK + TAG_BYTES)])
    with pytest.raises(InvalidCiphertextError):
        kms.decrypt_file(tmp_path / "cut.kms", io.BytesIO())


def test_round_trips_around_chunk_boundaries(kms: KMSClient) -> None:
    key_id = unique_key_id("sizes")
    kms.create_key(key_id)

    @settings(
        max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(chunks=st.integers(min_value=0, max_value=3), offset=st.integers(-1, 1))
    def round_trip(chunks: int, offset: int) -> None:
        plaintext = os.urandom(max(0, chunks * CHUNK + offset))
        sealed = io.BytesIO()
        kms.encrypt_file(key_id, io.BytesIO(plaintext), sealed, chunk_size=CHUNK)
        back = io.BytesIO()
        kms.decrypt_file(io.BytesIO(sealed.getvalue()), back, expected_key_id=key_id)
        assert back.getvalue() == plaintext

    round_trip()


def test_kms_client_rewraps_and_checks_expectations(server: ServerProcess, tmp_path: Path) -> None:
    deployment = server.deployment
    key_id = unique_key_id("cli-rewrap")
    with client_for(deployment) as kms:
        kms.create_key(key_id)
    (tmp_path / "in.bin").write_bytes(os.urandom(70_000))
    sealed = str(tmp_path / "x.kms")
    context = '{"tenant": "a"}'
    made = run_client(
        deployment, "encrypt-file", key_id, str(tmp_path / "in.bin"), sealed, "--context", context
    )
    assert made.returncode == 0, made.stderr
    with client_for(deployment) as kms:
        kms.rotate_key(key_id)
    rewrapped = run_client(deployment, "rewrap-file", sealed, "--expect-key-id", key_id)
    assert rewrapped.returncode == 0, rewrapped.stderr
    assert rewrapped.stderr.decode() == (
        f"kms: {sealed}: data key re-wrapped under {key_id} version 2\n"
    )
    with client_for(deployment) as kms:
        kms.update_key(key_id, min_decryption_version=2)
        kms.trim_key(key_id, 2)

    out = str(tmp_path / "out.bin")
    for options, message in (
        (["--expect-key-id", "someone-else"], "the file names another key than expected"),
        (["--expect-context", '{"tenant": "b"}'], "the file names another encryption context"),
        (["--expect-context", "[1]"], "--expect-context must be a JSON object of strings"),
    ):
        refused = run_client(deployment, "decrypt-file", sealed, out, *options)
        assert refused.returncode == 1
        assert refused.stderr.decode().startswith(f"kms: {message}"), refused.stderr
        assert not Path(out).exists()
    opened = run_client(
        deployment,
        "decrypt-file",
        sealed,
        out,
        "--expect-key-id",
        key_id,
        "--expect-context",
        context,
    )
    assert opened.returncode == 0, opened.stderr
    assert Path(out).read_bytes() == (tmp_path / "in.bin").read_bytes()
