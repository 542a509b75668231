"""The audit summary lines of the requests that did no work (kms.api.audit.Summaries), in process.

kms/api/audit.py: each worker counts them per identity, by status and by operation, and writes
one ``summary`` line per identity every ``audit.summary_seconds``; "a summary that cannot be
written (a full disk) is kept and added to the next one".
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kms.api.audit import MAX_SUMMARY_IDENTITIES, Summaries
from kms.audit import AuditKey, AuditLog

#: Long enough that the summary thread never writes on its own while a test runs.
SECONDS = 3600


class FullDiskOnce(AuditLog):
    """An audit log whose first append fails as on a full disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, AuditKey(b"k" * 32))
        self.failures_left = 1

    def append(self, record: Mapping[str, Any]) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        super().append(record)


def summaries_by_identity(path: Path) -> dict[str, dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # The keyed chain starts each file with a "file" line (docs/operations.md, "Audit log").
    lines = [line for line in lines if line["type"] != "file"]
    assert all(line["type"] == "summary" for line in lines)
    return {line["identity"]: line for line in lines}


def summary_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "kms-audit-summary")


def test_a_summary_that_cannot_be_written_is_kept_and_added_to_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.log"
    summaries = Summaries(FullDiskOnce(path), SECONDS)
    try:
        summaries.count("alice", "encrypt", 403)
        summaries.count("alice", "decrypt", 429)
        summaries.count("bob", "-", 404)
        with caplog.at_level(logging.ERROR, logger="kms"):
            summaries.flush()  # the disk is full: nothing written, everything kept
        assert not path.exists() or path.read_bytes() == b""
        assert "cannot write the audit summary lines, kept for the next" in caplog.text
        summaries.count("alice", "encrypt", 403)
        summaries.flush()
    finally:
        summaries.close()
    written = summaries_by_identity(path)
    assert set(written) == {"alice", "bob"}
    alice, bob = written["alice"], written["bob"]
    assert alice["requests"] == 3
    assert alice["statuses"] == {"403": 2, "429": 1}
    assert alice["operations"] == {"decrypt": 1, "encrypt": 2}
    assert bob["requests"] == 1
    assert bob["statuses"] == {"404": 1}
    assert bob["operations"] == {"-": 1}


def test_one_summary_thread_however_many_requests_are_counted(tmp_path: Path) -> None:
    before = summary_threads()
    summaries = Summaries(AuditLog(tmp_path / "audit.log", AuditKey(b"k" * 32)), SECONDS)
    try:
        for status in (401, 403, 404, 429):
            summaries.count("stranger", "encrypt", status)
        assert summary_threads() == before + 1
    finally:
        summaries.close()
    assert summary_threads() == before
    (line,) = summaries_by_identity(tmp_path / "audit.log").values()
    assert line["requests"] == 4


def test_past_the_identity_bound_the_summaries_so_far_are_written_at_once(tmp_path: Path) -> None:
    """Memory stays bounded whatever the number of identities: a new identity past
    ``MAX_SUMMARY_IDENTITIES`` writes out the tallies so far before it is counted."""
    path = tmp_path / "audit.log"
    summaries = Summaries(AuditLog(path, AuditKey(b"k" * 32)), SECONDS)
    try:
        for number in range(MAX_SUMMARY_IDENTITIES):
            summaries.count(f"client-{number}", "encrypt", 403)
        assert not path.exists() or path.read_bytes() == b""
        summaries.count("one-more", "encrypt", 403)
        written = summaries_by_identity(path)
        assert len(written) == MAX_SUMMARY_IDENTITIES and "one-more" not in written
    finally:
        summaries.close()
    assert "one-more" in summaries_by_identity(path)
