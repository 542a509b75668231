"""The audit log's file (kms.audit.AuditLog), in process: the chain's start, a writer that finds
a file an earlier release wrote, torn lines, sealed files and descriptors. The keyed chain, its
rotation and what verify says of an attacker's edits are in test_audit_chain.py.

docs/operations.md, Audit log: "prev_hash is the SHA-256 (hex) of the previous line's bytes";
"a file without any write permission bit is treated as sealed even when kms runs as root".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kms.audit
from kms.audit import AuditLog, NotARegularFile, _head_body, head_path, line_hash
from kms.audit_verify import ChainResult, verify_files
from tests.helpers.audit import KEY, unkeyed_log


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def verify(*paths: Path) -> ChainResult:
    return verify_files(paths, KEY)


def test_the_first_file_starts_with_a_file_line_at_64_zeros(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    first, request = lines(path)
    assert first["type"] == "file" and first["file"] == 1 and first["previous_file"] is None
    assert first["prev_hash"] == "0" * 64
    assert request["prev_hash"] == line_hash(path.read_bytes().splitlines()[0])
    assert request["kid"] == KEY.key_id and len(request["mac"]) == 64
    result = verify(path)
    assert result.failure is None
    assert (result.files[0].lines, result.files[0].keyed, result.files[0].unkeyed) == (2, 2, 0)


def _padded(length: int) -> dict[str, str]:
    """An unkeyed first line (prev_hash: 64 zeros) of ``length`` bytes without its newline."""
    empty = json.dumps({"pad": "", "prev_hash": "0" * 64}, separators=(",", ":"))
    return {"pad": "x" * (length - len(empty))}


# Around the 8 KiB chunks a writer reads the file's last line back in.
@pytest.mark.parametrize("length", [100, 8191, 8192, 8193, 20000])
def test_a_file_of_an_earlier_release_is_continued_with_keyed_lines(
    tmp_path: Path, length: int
) -> None:
    """An unkeyed log (kms before keyed chains), no chain head: the first keyed line chains to
    its last line, read back from the file whatever its length; verify counts both kinds."""
    path = tmp_path / "audit.log"
    unkeyed_log(path, [{"type": "request"}, _padded(length)])
    last = path.read_bytes().splitlines()[-1]
    assert len(last) == length
    AuditLog(path, KEY).append({"type": "response"})
    keyed = lines(path)[2]
    assert keyed["prev_hash"] == line_hash(last) and keyed["type"] == "response"
    result = verify(path)
    assert result.failure is None
    assert (result.files[0].keyed, result.files[0].unkeyed) == (1, 2)
    assert "2 unkeyed lines" in result.files[0].describe(keyed=True)


@pytest.mark.parametrize("length", [100, 8193])
def test_a_one_line_file_of_an_earlier_release_is_continued(tmp_path: Path, length: int) -> None:
    """The file's only line is its last: read back whole from the first byte, whatever its
    length (8193: the last 8 KiB read leaves its first byte alone)."""
    path = tmp_path / "audit.log"
    unkeyed_log(path, [_padded(length)])
    (last,) = path.read_bytes().splitlines()
    assert len(last) == length
    AuditLog(path, KEY).append({"type": "response"})
    assert lines(path)[1]["prev_hash"] == line_hash(last)
    assert verify(path).failure is None


@pytest.mark.parametrize("mode", [0o444, 0o555, 0o400])
def test_a_file_without_any_write_bit_is_sealed(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    before = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(PermissionError):
        AuditLog(path, KEY).append({"type": "request"})
    assert path.read_bytes() == before


def test_a_new_audit_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It names every caller and key: mode 0600, as kms's other files beside its data."""
    path = tmp_path / "audit.log"
    previous = os.umask(0o022)
    try:
        AuditLog(path, KEY).append({"type": "request"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_appending_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Every request appends once or twice: a descriptor kept per line would exhaust the
    worker's; nor does an append that fails keep one (a sealed file, a directory)."""
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY)
    audit.append({"type": "request"})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        audit.append({"type": "request"})
    assert len(os.listdir("/proc/self/fd")) == before
    os.chmod(path, 0o444)
    for _ in range(5):
        with pytest.raises(PermissionError):
            audit.append({"type": "request"})
    path.unlink()
    path.mkdir()
    for _ in range(5):
        with pytest.raises(IsADirectoryError):
            audit.append({"type": "request"})
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_start_up_check_and_repair_leave_no_descriptor_open(tmp_path: Path) -> None:
    """kms.node runs both in the server's master before it forks the workers: a log descriptor
    kept there would be inherited by every worker and hold a rotated, deleted file's space for
    as long as the server runs."""
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        AuditLog.check_writable(path)
        assert AuditLog(path, KEY).repair() == 0
        with path.open("ab") as handle:
            handle.write(b'{"time":')  # a torn line: this repair cuts it and writes a line
        assert AuditLog(path, KEY).repair() == len(b'{"time":')
    assert len(os.listdir("/proc/self/fd")) == before
    assert verify(path).failure is None


def test_a_head_that_is_not_a_regular_file_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """A FIFO at the head's path refuses every line (503 while serving): each refusal must close
    what it opened, or the worker runs out of descriptors and keeps failing once it is gone."""
    path = tmp_path / "audit.log"
    os.mkfifo(head_path(path), 0o600)
    audit = AuditLog(path, KEY)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(NotARegularFile, match="not a regular file"):
            audit.append({"type": "request"})
        with pytest.raises(NotARegularFile):
            AuditLog.check_writable(path)
    assert len(os.listdir("/proc/self/fd")) == before
    head_path(path).unlink()
    audit.append({"type": "request"})
    assert verify(path).failure is None


def test_the_chain_head_is_encoded_as_seal_encodes_its_record() -> None:
    """The head's line is formatted directly, not by ``json.dumps``: the bytes must be the
    same, or a head written by one release would not verify under the other."""
    digest = hashlib.sha256(b"last").hexdigest()
    for device, inode, size, number in [(0, 0, 0, 1), (2049, 1 << 40, 123_456_789, 77)]:
        record = {"device": device, "inode": inode, "size": size, "file": number}
        record["last_hash"] = digest
        assert KEY.seal_encoded(_head_body(device, inode, size, number, digest, KEY)) == (
            KEY.seal(record)
        )


# -- a line whole or not at all; regular files only (docs/operations.md, Audit log) -------------


def test_a_torn_last_line_is_removed_and_recorded_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request", "n": 1})
    AuditLog(path, KEY).append({"type": "response", "n": 1})
    complete = path.read_bytes()
    torn = b'{"time":"2026-12-07T10:00:00.000Z","type":"requ'
    with path.open("ab") as handle:
        handle.write(torn)  # a writer killed mid-line
    failure = verify(path).failure
    assert failure is not None and (failure.line, failure.reason) == (4, "the line is incomplete")

    AuditLog(path, KEY).append({"type": "request", "n": 2})  # another process: it reads the tail

    assert path.read_bytes().startswith(complete)
    repair, after = lines(path)[3:]
    assert repair["type"] == "repair"
    assert repair["removed_bytes"] == len(torn)
    assert repair["removed_sha256"] == hashlib.sha256(torn).hexdigest()
    assert repair["prev_hash"] == line_hash(complete.splitlines()[-1])
    assert after["n"] == 2
    assert verify(path).failure is None
    assert verify(path).files[0].lines == 5


def test_repair_leaves_a_complete_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY)
    assert audit.repair() == 0  # an empty (new) file
    audit.append({"type": "request"})
    before = path.read_bytes()
    assert AuditLog(path, KEY).repair() == 0
    assert path.read_bytes() == before


def test_repair_leaves_a_complete_file_alone_even_without_its_head(tmp_path: Path) -> None:
    """Repair cuts a torn line and nothing else: a complete log whose head is gone is left as
    it is (the next line it gets records that, with a resume line)."""
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    head_path(path).unlink()
    before = path.read_bytes()
    assert AuditLog(path, KEY).repair() == 0
    assert path.read_bytes() == before


def test_a_file_of_only_a_fragment_is_repaired_to_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"time":')
    assert AuditLog(path, KEY).repair() == len(b'{"time":')
    file_line, repair = lines(path)
    assert file_line["prev_hash"] == "0" * 64 and repair["type"] == "repair"
    assert verify(path).failure is None


@pytest.mark.parametrize("kind", ["fifo", "/dev/null"])
def test_a_fifo_or_a_device_is_refused_on_every_open(tmp_path: Path, kind: str) -> None:
    # /dev/null through a link in the test's own folder: a mutant that lets the device through
    # writes its chain head beside the link, never a /dev/null.chain that outlives the run.
    path = tmp_path / "audit.log"
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:
        path.symlink_to("/dev/null")
    with pytest.raises(NotARegularFile, match="not a regular file"):
        AuditLog.check_writable(path)
    with pytest.raises(NotARegularFile):
        AuditLog(path, KEY).append({"type": "request"})
    assert not (tmp_path / "audit.log.chain").exists()


def test_a_fifo_at_the_head_s_path_is_refused(tmp_path: Path) -> None:
    """The head, too, must be a regular file: a FIFO there is named at the start-up check, as
    one at the log's path is, instead of failing every request later."""
    path = tmp_path / "audit.log"
    os.mkfifo(head_path(path), 0o600)
    with pytest.raises(NotARegularFile, match="not a regular file"):
        AuditLog.check_writable(path)


def test_every_line_is_written_holding_the_lock_on_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md: every line is written under an exclusive flock of the head, which
    keeps the chain one across workers: while a line is written, another process (here another
    open file description) cannot take the lock."""
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    write_all = kms.audit._write_all
    tried: list[bool] = []

    def write_then_try_the_lock(fd: int, data: bytes) -> None:
        other = os.open(head_path(path), os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            tried.append(True)
        except BlockingIOError:
            tried.append(False)
        finally:
            os.close(other)
        write_all(fd, data)

    monkeypatch.setattr(kms.audit, "_write_all", write_then_try_the_lock)
    AuditLog(path, KEY).append({"type": "request"})
    assert tried == [False]


#: Appends a line under a file size limit that lets only part of it through (as a full disk
#: does), in a process of its own: RLIMIT_FSIZE applies to every file the process writes.
PARTIAL_WRITE = """
import resource, signal, sys
from collections.abc import Iterator
from pathlib import Path
from kms.audit import AuditKey, AuditLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = sys.argv[1]
size = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
try:
    AuditLog(Path(path), AuditKey(bytes(32))).append({"type": "request", "pad": "x" * 200})
except OSError as error:
    print(error.errno)
"""


def test_a_write_that_fails_part_way_is_cut_back_to_the_last_complete_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    before = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", PARTIAL_WRITE, str(path), str(len(before))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(errno.EFBIG), result.stderr
    assert path.read_bytes() == before
    AuditLog(path, KEY).append({"type": "request"})
    assert verify(path).failure is None and verify(path).files[0].lines == 3


def test_a_fifo_put_in_place_after_the_path_was_checked_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md, a regular file only: the check is made on the file kms opened, so a
    FIFO swapped in between the look at the path and its opening is refused too (a FIFO would
    swallow the line while the request succeeds)."""
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request"})
    locked = AuditLog._lock_head

    def then_swapped(self: AuditLog) -> int:
        head_fd = locked(self)
        path.unlink()
        os.mkfifo(path, 0o600)
        return head_fd

    monkeypatch.setattr(AuditLog, "_lock_head", then_swapped)
    with pytest.raises(NotARegularFile, match="not a regular file"):
        AuditLog(path, KEY).append({"type": "request"})
