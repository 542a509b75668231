"""``kms audit verify``: the chain of one or more audit log files (kms.audit), checked in order.

Each line must be JSON, end with its newline and chain to the line before it (``prev_hash``, the
SHA-256 of that line). The first line of the first file starts at 64 zeros, or is the ``file``
line of a rotated file (it names the file before it, which was not given). Each later file must
continue the one before: its first line's ``prev_hash`` is the hash of that file's last line, and
when it does not, its ``file`` line tells a file missing between them (``previous_file``) from a
file cut short.

With the audit key, each keyed line must be this key's (``kid``) and its MAC must verify: that
proves kms wrote it, and through the hash it covers, every line before it. Unkeyed lines (written
before keyed chains) are allowed only before the first keyed line and are counted apart: their
hashes prove order, not authorship. An unkeyed line after a keyed one is a downgrade. A ``resume``
line fails: kms found the log altered when it wrote it. Without the key, the same checks but the
MACs: the result says the lines' authorship was not checked.

The first line that fails is named (file and 1-based line number) with the reason; nothing after
it is judged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kms.audit import GENESIS_HASH, SEAL, AuditKey, line_hash

_PARSE_ERRORS = (UnicodeDecodeError, ValueError)


@dataclass
class FileResult:
    path: Path
    lines: int = 0
    keyed: int = 0
    unkeyed: int = 0
    #: The number its ``file`` line gives it, and the number of the file before (None: it
    #: starts the chain, or it has no ``file`` line).
    number: int | None = None
    follows: int | None = None

    def describe(self, keyed: bool) -> str:
        """Its lines, where it sits in the chain, and what proves them (``keyed``: the MACs
        were checked)."""
        text = f"{self.lines} lines"
        if self.number is not None:
            after = f", after file {self.follows}" if self.follows is not None else ""
            text += f" (file {self.number}{after})"
        text += ", chain intact"
        if self.keyed:
            checked = (
                "MACs checked under this keystore's audit key" if keyed else "MACs not checked"
            )
            text += f"; {self.keyed} keyed lines, {checked}"
        if self.unkeyed:
            text += (
                f"; {self.unkeyed} unkeyed lines (written before keyed chains: their hashes prove "
                "order, not who wrote them)"
            )
        return text


@dataclass(frozen=True)
class ChainFailure:
    path: Path
    line: int
    reason: str


@dataclass
class ChainResult:
    files: list[FileResult] = field(default_factory=list)
    failure: ChainFailure | None = None
    #: True when every keyed line's MAC was checked under the keystore's audit key.
    keyed: bool = False


class _Broken(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def verify_files(paths: Sequence[Path], key: AuditKey | None) -> ChainResult:
    """Check the chain through ``paths`` in order, MACs too when ``key`` is given. Raises
    OSError if a file cannot be read."""
    result = ChainResult(keyed=key is not None)
    state = _Chain(key)
    for path in paths:
        file = FileResult(path)
        result.files.append(file)
        try:
            state.check_file(file)
        except _Broken as broken:
            result.failure = ChainFailure(path, broken.line, broken.reason)
            return result
    return result


class _Chain:
    def __init__(self, key: AuditKey | None) -> None:
        self.key = key
        self.keyed_seen = False
        #: The previous file given: its path, number and last line's hash.
        self.previous: tuple[Path, int | None, str] | None = None

    def check_file(self, file: FileResult) -> None:
        last_hash = ""
        with file.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    raise _Broken(number, "the line is incomplete")
                record = _parse(line)
                if record is None:
                    raise _Broken(number, "the line is not a JSON object")
                if number == 1:
                    self._check_start(file, record)
                elif record.get("prev_hash") != last_hash:
                    raise _Broken(number, "its prev_hash does not match the line before it")
                self._check_seal(number, line, record, file)
                if record.get("type") == "resume":
                    reason = record.get("reason")
                    raise _Broken(
                        number,
                        "kms found the log altered when it wrote this line"
                        + (f" ({reason})" if isinstance(reason, str) else ""),
                    )
                last_hash = line_hash(line)
                file.lines += 1
        if file.lines:
            self.previous = (file.path, file.number, last_hash)

    def _check_start(self, file: FileResult, record: dict[str, Any]) -> None:
        prev_hash = record.get("prev_hash")
        if record.get("type") == "file":
            file.number = _number(record.get("file"))
            file.follows = _number(record.get("previous_file"))
            if file.follows is None and prev_hash != GENESIS_HASH:
                raise _Broken(1, "it names no previous file but does not start at 64 zeros")
        if self.previous is None:
            if prev_hash != GENESIS_HASH and file.follows is None:
                raise _Broken(
                    1,
                    "the first line's prev_hash is not the genesis hash, and it names no file "
                    "before it",
                )
            return
        path, number, last_hash = self.previous
        if prev_hash == last_hash:
            return
        if record.get("type") == "file" and file.follows is None:
            raise _Broken(1, f"it starts a new chain: it does not continue {path}")
        if file.follows is not None and number is not None and file.follows != number:
            if file.follows > number:
                missing = file.follows - number
                raise _Broken(
                    1,
                    f"it follows file {file.follows}, but {path} is file {number}: "
                    f"{missing} file{'s' if missing > 1 else ''} missing between them",
                )
            raise _Broken(1, f"it follows file {file.follows}, but {path} is file {number}")
        raise _Broken(
            1,
            f"it does not continue {path}: its prev_hash is not the hash of that file's last "
            "line (that file was cut short or altered, or a file is missing between them)",
        )

    def _check_seal(
        self, number: int, line: bytes, record: dict[str, Any], file: FileResult
    ) -> None:
        if "mac" not in record:
            if self.keyed_seen:
                raise _Broken(
                    number,
                    "an unkeyed line after keyed lines: written without the audit key (a "
                    "downgrade)",
                )
            file.unkeyed += 1
            return
        if SEAL.search(line.rstrip(b"\n")) is None:
            raise _Broken(number, "its mac is not the last member, or not 64 hex digits")
        if self.key is not None:
            if record.get("kid") != self.key.key_id:
                raise _Broken(
                    number,
                    f"it is keyed under another audit key (kid {str(record.get('kid'))[:16]!r}):"
                    " another keystore's, or this keystore's before a `kms rekey`",
                )
            if not self.key.verify(line):
                raise _Broken(
                    number,
                    "its MAC does not match: the line was edited, or written (or its hash "
                    "recomputed) without the audit key",
                )
        self.keyed_seen = True
        file.keyed += 1


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except _PARSE_ERRORS:
        return None
    return record if isinstance(record, dict) else None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
