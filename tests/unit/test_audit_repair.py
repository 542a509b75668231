"""``AuditLog.repair`` (run at start by kms.node): "the bytes removed (0: the file ends with a
complete line)", here with complete lines before the torn one (the chain's own tests repair a file
that is only a fragment, where both ends of the count coincide).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kms.audit import AuditKey, AuditLog
from kms.audit_verify import verify_files

KEY = AuditKey(b"k" * 32)


def test_repair_answers_the_bytes_of_the_torn_line_after_complete_ones(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request", "n": 1})
    AuditLog(path, KEY).append({"type": "response", "n": 1})
    complete = path.read_bytes()
    torn = b'{"time":"2026-12-07T10:00:00.000Z","type":"requ'
    with path.open("ab") as handle:
        handle.write(torn)  # a writer killed mid-line

    assert AuditLog(path, KEY).repair() == len(torn)

    assert path.read_bytes().startswith(complete)
    repair = json.loads(path.read_bytes()[len(complete) :])
    assert repair["type"] == "repair"
    assert repair["removed_bytes"] == len(torn)
    result = verify_files([path], KEY)
    assert result.failure is None
    # The file's first line, the two lines, the repair line: all keyed, all checked.
    assert (result.files[0].lines, result.files[0].keyed) == (4, 4)


def test_a_removed_torn_line_is_logged_with_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: `kms: audit log FILE: removed an incomplete last line (N bytes) left
    by an interrupted write; a repair line records it`, N the bytes removed."""
    path = tmp_path / "audit.log"
    AuditLog(path, KEY).append({"type": "request", "n": 1})
    torn = b'{"time":"2026-12-07T10:00:00.000Z","ty'
    with path.open("ab") as handle:
        handle.write(torn)
    with caplog.at_level(logging.WARNING, logger="kms"):
        assert AuditLog(path, KEY).repair() == len(torn)
    assert f"kms: audit log {path}: removed an incomplete last line ({len(torn)} bytes)" in (
        caplog.text
    )
