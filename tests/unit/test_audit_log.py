"""The audit log's file (kms.audit.AuditLog), in process: the chain's start, a writer that finds
a file another process wrote, sealed files and descriptors.

README, audit log: "prev_hash is the SHA-256 (hex) of the previous line's bytes (the first line's
is 64 zeros)"; all workers of a node write one chain; "a file without any write permission bit is
treated as sealed even when kms runs as root".
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kms.audit import AuditLog, line_hash, verify_chain


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_first_line_chains_to_64_zeros(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).append({"type": "request"})
    assert lines(path)[0]["prev_hash"] == "0" * 64


def _padded(length: int) -> dict[str, str]:
    """A record whose first line (prev_hash: 64 zeros) is ``length`` bytes without its newline."""
    empty = json.dumps({"pad": "", "prev_hash": "0" * 64}, separators=(",", ":"))
    return {"pad": "x" * (length - len(empty))}


# Around the 8 KiB chunks a writer reads the file's last line back in.
@pytest.mark.parametrize("length", [100, 8191, 8192, 8193, 20000])
def test_a_writer_that_did_not_write_the_last_line_chains_to_it(
    tmp_path: Path, length: int
) -> None:
    """Another worker wrote the last line (or this process restarted): the new line's prev_hash
    is read from the file, whatever that line's length."""
    path = tmp_path / "audit.log"
    AuditLog(path).append(_padded(length))
    assert len(path.read_bytes()) == length + 1
    AuditLog(path).append({"type": "response"})
    assert lines(path)[1]["prev_hash"] == line_hash(path.read_bytes().splitlines()[0])
    assert verify_chain(path).broken_line is None


@pytest.mark.parametrize("mode", [0o444, 0o555, 0o400])
def test_a_file_without_any_write_bit_is_sealed(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).append({"type": "request"})
    before = path.read_bytes()
    path.chmod(mode)
    with pytest.raises(PermissionError):
        AuditLog(path).append({"type": "request"})
    assert path.read_bytes() == before


def test_a_new_audit_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It names every caller and key: mode 0600, as kms's other files beside its data."""
    path = tmp_path / "audit.log"
    previous = os.umask(0o022)
    try:
        AuditLog(path).append({"type": "request"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_appending_leaves_no_descriptor_open(tmp_path: Path) -> None:
    """Every request appends twice: a descriptor kept per line would exhaust the worker's."""
    audit = AuditLog(tmp_path / "audit.log")
    audit.append({"type": "request"})
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        audit.append({"type": "request"})
    assert len(os.listdir("/proc/self/fd")) == before
