"""The keyed audit chain (kms.audit, kms.audit_verify) against someone who can write the audit
files but has no audit key: lines edited or deleted with the chain recomputed, files of a rotation
removed or cut short, the chain head removed or put back. In process, on real files.

docs/security.md, Audit log: only kms can extend the chain; a file removed from the middle of a
rotation, or cut short, is named; verify names the first line that fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from kms.audit import AuditKey, AuditLog, head_path, line_hash
from kms.audit_verify import ChainFailure, ChainResult, verify_files
from kms.service.keyring import RootKeyring
from tests.helpers.audit import KEY, rechain, unkeyed_log


def verify(*paths: Path, key: AuditKey | None = KEY) -> ChainResult:
    return verify_files(paths, key)


def failure(*paths: Path, key: AuditKey | None = KEY) -> ChainFailure:
    result = verify(*paths, key=key)
    assert result.failure is not None, [file.describe(keyed=True) for file in result.files]
    return result.failure


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def written(path: Path, count: int, start: int = 0) -> AuditLog:
    audit = AuditLog(path, KEY)
    for number in range(start, start + count):
        audit.append({"type": "request", "n": number})
    return audit


# -- an attacker without the key ----------------------------------------------------------------


@pytest.mark.parametrize("seal", ["keep", "strip", "reseal", "forge"])
def test_a_line_deleted_and_the_chain_recomputed_is_named(tmp_path: Path, seal: str) -> None:
    path = tmp_path / "audit.log"
    written(path, 9)
    lines = path.read_bytes().splitlines(keepends=True)
    del lines[4]  # line 5
    path.write_bytes(b"".join(rechain(lines, 5, seal=seal, key=AuditKey(b"k" * 32))))
    found = failure(path)
    assert (found.path, found.line) == (path, 5)
    expected = {
        "keep": "its MAC does not match",
        "strip": "an unkeyed line after keyed lines",
        "reseal": "it is keyed under another audit key",
        "forge": "its MAC does not match",
    }[seal]
    assert found.reason.startswith(expected), found.reason


@pytest.mark.parametrize("where", [3, 10])  # a middle line, and the very last one
def test_an_edited_line_is_named_even_the_last(tmp_path: Path, where: int) -> None:
    path = tmp_path / "audit.log"
    written(path, 9)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[where - 1] = lines[where - 1].replace(b'"n":', b'"n":1')
    path.write_bytes(b"".join(rechain(lines, where)))
    found = failure(path)
    assert found.line == where and found.reason.startswith("its MAC does not match")


def test_a_line_of_another_keystore_is_named(tmp_path: Path) -> None:
    """The audit key is bound to the keystore id: the same master key, another keystore (a
    restored clone) has another key."""
    master = bytes(range(32))
    production = RootKeyring(bytearray(master), b"p" * 16)
    clone = RootKeyring(bytearray(master), b"c" * 16)
    path = tmp_path / "audit.log"
    AuditLog(path, AuditKey.of(clone)).append({"type": "request"})
    found = failure(path, key=AuditKey.of(production))
    assert found.line == 1 and "another audit key" in found.reason
    assert verify(path, key=AuditKey.of(clone)).failure is None


def test_links_only_passes_a_forgery_and_says_it_proves_nothing(tmp_path: Path) -> None:
    """Without the passphrase verify checks the links: a chain resealed under a wrong key
    passes, and the result says the MACs were not checked."""
    path = tmp_path / "audit.log"
    written(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(rechain(lines, 1, seal="reseal", key=AuditKey(b"k" * 32))))
    result = verify(path, key=None)
    assert result.failure is None and not result.keyed
    assert "MACs not checked" in result.files[0].describe(keyed=False)
    assert failure(path).line == 1


# -- old logs ----------------------------------------------------------------------------------


def test_an_unkeyed_log_verifies_labelled_and_a_downgrade_fails(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    unkeyed_log(old, [{"type": "request", "n": n} for n in range(3)])
    result = verify(old)
    assert result.failure is None
    assert (result.files[0].unkeyed, result.files[0].keyed) == (3, 0)
    assert "unkeyed lines" in result.files[0].describe(keyed=True)
    written(old, 2)  # kms of this release continues it: keyed from here on
    assert verify(old).failure is None
    unkeyed_log(old, [{"type": "request"}])  # an unkeyed line at the end: its link is wrong too
    lines = old.read_bytes().splitlines(keepends=True)
    path = tmp_path / "downgraded.log"
    path.write_bytes(b"".join(rechain(lines, len(lines), seal="strip")))
    found = failure(path)
    assert found.line == 6 and "downgrade" in found.reason


# -- rotation ------------------------------------------------------------------------------------


def rotated(tmp_path: Path, files: int = 3) -> list[Path]:
    """``files`` files of one chain: the log moved away between them, as logrotate does."""
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY)
    names = []
    for number in range(1, files + 1):
        for line in range(3):
            audit.append({"type": "request", "n": number * 10 + line})
        if number < files:
            names.append(path.rename(tmp_path / f"audit.log.{number}"))
    return [*names, path]


def test_a_new_file_after_rotation_names_the_file_before_and_its_last_hash(
    tmp_path: Path,
) -> None:
    first, second, third = rotated(tmp_path)
    head = records(second)[0]
    assert head["type"] == "file" and (head["file"], head["previous_file"]) == (2, 1)
    assert head["prev_hash"] == line_hash(first.read_bytes().splitlines()[-1])
    result = verify(first, second, third)
    assert result.failure is None
    assert [file.describe(keyed=True).split(",")[0] for file in result.files] == [
        "4 lines (file 1)",
        "4 lines (file 2",
        "4 lines (file 3",
    ]
    assert verify(third).failure is None  # alone: it continues file 2, which was not given


def test_a_rotated_file_removed_from_the_middle_is_named(tmp_path: Path) -> None:
    files = rotated(tmp_path, files=4)
    found = failure(files[0], files[3])
    assert (found.path, found.line) == (files[3], 1)
    assert (
        found.reason == f"it follows file 3, but {files[0]} is file 1: 2 files missing between them"
    )
    found = failure(files[0], files[1], files[3])
    assert "1 file missing" in found.reason


def test_a_rotated_file_cut_short_is_named(tmp_path: Path) -> None:
    first, second, third = rotated(tmp_path)
    second.write_bytes(b"".join(second.read_bytes().splitlines(keepends=True)[:-1]))
    found = failure(first, second, third)
    assert (found.path, found.line) == (third, 1)
    assert found.reason.startswith(f"it does not continue {second}")


def test_files_given_out_of_order_are_named(tmp_path: Path) -> None:
    first, second, third = rotated(tmp_path)
    found = failure(second, first, third)
    assert (found.path, found.line) == (first, 1)


def test_a_file_emptied_in_place_after_a_copy_continues_the_chain(tmp_path: Path) -> None:
    """logrotate's copytruncate: the same inode, emptied; the next line starts file 2."""
    path = tmp_path / "audit.log"
    written(path, 3)
    copy = tmp_path / "audit.log.1"
    shutil.copyfile(path, copy)
    os.truncate(path, 0)
    written(path, 2)
    assert (records(path)[0]["file"], records(path)[0]["previous_file"]) == (2, 1)
    assert verify(copy, path).failure is None


# -- the chain head ------------------------------------------------------------------------------


def test_a_writer_killed_before_it_moved_the_head_on_is_taken_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    written(path, 2)
    head = head_path(path).read_bytes()
    written(path, 1, start=2)
    head_path(path).write_bytes(head)  # as if the head's update never happened
    written(path, 1, start=3)
    assert [record["type"] for record in records(path)].count("resume") == 0
    assert verify(path).failure is None


def _big(count: int, start: int = 0) -> list[dict]:
    """``count`` request records of about 100 KB each."""
    return [{"type": "request", "n": n, "pad": "x" * 100_000} for n in range(start, start + count)]


def test_a_killed_writer_s_long_line_in_a_log_over_1_mib_is_taken_up(tmp_path: Path) -> None:
    """The 1 MiB bound is on what lies past the head, not on the file: in a log of 1.1 MB, a
    killed writer's line longer than one 8 KiB read is taken up as the short one is."""
    path = tmp_path / "audit.log"
    audit = AuditLog(path, KEY)
    for record in _big(11):
        audit.append(record)
    assert path.stat().st_size > 1 << 20
    head = head_path(path).read_bytes()
    audit.append({"type": "request", "pad": "y" * 20_000})  # killed before it moved the head
    head_path(path).write_bytes(head)
    written(path, 1, start=11)
    assert [record["type"] for record in records(path)].count("resume") == 0
    assert verify(path).failure is None


def test_more_than_1_mib_past_the_head_is_recorded_not_read_in(tmp_path: Path) -> None:
    """Lines past the head are taken up only up to 1 MiB (a killed writer leaves one line):
    1.1 MB of lines, even chained and keyed, that the head does not know of are recorded."""
    path = tmp_path / "audit.log"
    written(path, 1)
    head = head_path(path).read_bytes()
    audit = AuditLog(path, KEY)
    for record in _big(11, start=1):
        audit.append(record)
    head_path(path).write_bytes(head)
    written(path, 1, start=12)
    resume = records(path)[-2]
    assert resume["type"] == "resume"
    assert resume["reason"] == "it does not end with the line kms wrote last"


def _unsealed_head(path: Path) -> None:
    """The lines after the first cut off, and a head that says so, written without the key."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))
    status = path.stat()
    head = {"device": status.st_dev, "inode": status.st_ino, "size": status.st_size}
    head |= {"file": 1, "last_hash": line_hash(lines[1])}
    head_path(path).write_bytes(json.dumps(head).encode().ljust(512, b" "))


def _padding_edited(path: Path) -> None:
    """The head kms wrote, with a byte of its padding changed."""
    head = bytearray(head_path(path).read_bytes())
    head[-1:] = b"x"
    head_path(path).write_bytes(bytes(head))


@pytest.mark.parametrize("change", [_unsealed_head, _padding_edited])
def test_a_head_changed_without_the_key_is_not_trusted(tmp_path: Path, change: Any) -> None:
    """docs/operations.md: the head is sealed with the audit key. One written without it (here
    to hide lines cut off the log), or with any byte changed, counts as missing: the next line
    is recorded by a resume line."""
    path = tmp_path / "audit.log"
    written(path, 4)
    change(path)
    written(path, 1, start=4)
    resume = records(path)[-2]
    assert resume["type"] == "resume"
    assert "missing or not this key's" in resume["reason"]


def test_lines_cut_off_the_live_file_are_recorded_by_the_next_line(tmp_path: Path) -> None:
    """The newest lines truncated while kms runs: the next writer finds the file shorter than
    the head says and writes a resume line, which verify names."""
    path = tmp_path / "audit.log"
    written(path, 5)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    written(path, 1, start=5)
    resume = records(path)[-2]
    assert resume["type"] == "resume"
    assert resume["expected_hash"] == line_hash(lines[-1])
    found = failure(path)
    assert found.line == len(lines) - 1
    assert "kms found the log altered" in found.reason
    assert "does not end with the line kms wrote last" in found.reason


def test_a_removed_head_with_keyed_lines_in_the_log_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    written(path, 2)
    head_path(path).unlink()
    written(path, 1, start=2)
    assert records(path)[-2]["type"] == "resume"
    assert "missing or not this key's" in failure(path).reason


def test_a_log_replaced_by_another_file_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    written(path, 3)
    copy = tmp_path / "copy"
    shutil.copyfile(path, copy)
    copy.replace(path)  # the same lines, another file: kms cannot tell what happened in between
    written(path, 1, start=3)
    assert "not the file kms wrote last" in failure(path).reason


def test_the_head_is_sealed_and_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    written(path, 1)
    head = head_path(path)
    assert head.stat().st_mode & 0o777 == 0o600
    assert len(head.read_bytes()) == 512 and KEY.verify(head.read_bytes().rstrip(b" "))
    head.write_bytes(head.read_bytes().replace(b'"file":1', b'"file":7'))
    written(path, 1, start=1)  # a head that does not verify is not believed
    assert records(path)[-2]["type"] == "resume"


# -- the key -------------------------------------------------------------------------------------


def test_the_audit_key_is_its_own_and_bound_to_the_keystore() -> None:
    master = bytes(range(32))
    one = RootKeyring(bytearray(master), b"a" * 16)
    again = RootKeyring(bytearray(master), b"a" * 16)
    other = RootKeyring(bytearray(master), b"b" * 16)
    key = one.audit_key()
    assert key == again.audit_key() and key != other.audit_key()
    assert bytes(key) != master and AuditKey(key).key_id != AuditKey(master).key_id
    with pytest.raises(RuntimeError):
        RootKeyring(bytearray(master)).audit_key()  # no keystore id: no audit key
    assert "key" not in repr(AuditKey(key)).replace("key_id", "")


def test_after_a_new_audit_key_a_moved_log_starts_a_new_chain(tmp_path: Path) -> None:
    """docs/operations.md, kms rekey: the log verified and moved away before the rekey, the
    first line under the new key starts a new chain; left in place, the new key cannot vouch
    for what came before and says so."""
    path = tmp_path / "audit.log"
    written(path, 2)
    moved = path.rename(tmp_path / "before-rekey.log")
    new_key = AuditKey(b"n" * 32)
    AuditLog(path, new_key).append({"type": "request"})
    first = records(path)[0]
    assert (first["file"], first["previous_file"], first["prev_hash"]) == (1, None, "0" * 64)
    assert verify(path, key=new_key).failure is None
    assert verify(moved).failure is None  # with the old key, as it was verified before
    assert "another audit key" in failure(moved, key=new_key).reason

    in_place = tmp_path / "in-place" / "audit.log"
    in_place.parent.mkdir()
    written(in_place, 2)
    AuditLog(in_place, new_key).append({"type": "request"})
    assert records(in_place)[-2]["type"] == "resume"


def test_the_key_id_of_an_audit_key_never_changes() -> None:
    """Every keyed line carries the `kid`: a release that derived it otherwise would call every
    log written before it `keyed under another audit key` (HMAC-SHA256 of `kms/audit/key-id`)."""
    assert AuditKey(bytes(32)).key_id == "be705f9f5894825e"


# -- what the next writer records ----------------------------------------------------------------


def test_a_line_added_without_the_key_is_logged_and_recorded_by_a_resume_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md, the chain's head: lines rewritten behind kms are logged (`kms: audit
    log FILE: REASON; a resume line records it`) and recorded by a resume line, even when the
    line added chains on kms's last line and the file only grew."""
    path = tmp_path / "audit.log"
    written(path, 2)
    forged = rechain(
        [*path.read_bytes().splitlines(keepends=True), b'{"type":"request"}\n'],
        3,
        seal="reseal",
        key=AuditKey(b"x" * 32),
    )
    path.write_bytes(b"".join(forged))
    with caplog.at_level(logging.WARNING, logger="kms"):
        written(path, 1, start=3)
    resume = records(path)[-2]
    assert resume["type"] == "resume"
    assert resume["reason"] == "it does not end with the line kms wrote last"
    assert (
        f"kms: audit log {path}: it does not end with the line kms wrote last; "
        "a resume line records it" in caplog.text
    )


def test_a_killed_writer_s_line_glued_onto_the_line_before_is_recorded(tmp_path: Path) -> None:
    """The lines after the head are taken up only when the head's size falls on a line's end: a
    newline edited away at that point (the killed writer's line glued onto the one before) is
    recorded, though the line after it still chains on the head."""
    path = tmp_path / "audit.log"
    written(path, 2)
    head = head_path(path).read_bytes()
    size = path.stat().st_size
    written(path, 1, start=2)  # a writer killed before it moved the head on
    head_path(path).write_bytes(head)
    with path.open("r+b") as handle:
        handle.seek(size - 1)
        handle.write(b" ")
    written(path, 1, start=3)
    assert json.loads(path.read_bytes().splitlines()[-2])["type"] == "resume"


def test_a_log_whose_head_was_removed_keeps_its_file_number(tmp_path: Path) -> None:
    """With the head gone, the number comes from the file's own `file` line: the file after the
    next rotation is numbered on from it (file 3 after file 2), not restarted."""
    path = tmp_path / "audit.log"
    written(path, 2)
    os.truncate(path, 0)  # copytruncate: file 2
    written(path, 1)
    head_path(path).unlink()
    written(path, 1, start=1)
    assert records(path)[-2]["type"] == "resume"
    os.truncate(path, 0)
    written(path, 1)
    assert (records(path)[0]["file"], records(path)[0]["previous_file"]) == (3, 2)


def test_an_unkeyed_log_continued_then_rotated_is_numbered_on_from_file_0(tmp_path: Path) -> None:
    """A log of an earlier release has no `file` line: it counts as file 0, so the file after
    its rotation is file 1 after file 0."""
    path = tmp_path / "audit.log"
    unkeyed_log(path, [{"type": "request"}, {"type": "request"}])
    written(path, 1)
    os.truncate(path, 0)
    written(path, 1)
    assert (records(path)[0]["file"], records(path)[0]["previous_file"]) == (1, 0)


def test_a_writer_takes_up_another_writer_s_head_however_much_it_wrote(tmp_path: Path) -> None:
    """Two writers of one log (two workers): each reads the head the other left, so 1.1 MB of
    lines written by one in between is known, not judged against the head it wrote itself."""
    path = tmp_path / "audit.log"
    first, second = AuditLog(path, KEY), AuditLog(path, KEY)
    first.append({"type": "request", "n": 0})
    for record in _big(11, start=1):
        second.append(record)
    first.append({"type": "request", "n": 12})
    assert [record["type"] for record in records(path)] == ["file"] + ["request"] * 13
    assert verify(path).failure is None
