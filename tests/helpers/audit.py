"""Audit logs as kms writes them and as an attacker rewrites them (kms.audit)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kms.audit import GENESIS_HASH, SEAL, AuditKey, line_hash

#: A test's audit key (the server's comes from its keyring: Keyring.audit_key).
KEY = AuditKey(bytes(32))


def unkeyed_log(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """``records`` as a kms release before keyed chains wrote them: SHA-256 links, no MAC."""
    previous = GENESIS_HASH
    with path.open("ab") as handle:
        for record in records:
            line = json.dumps({**record, "prev_hash": previous}, separators=(",", ":")).encode()
            handle.write(line + b"\n")
            previous = line_hash(line)


def rechain(
    lines: list[bytes], start: int, *, seal: str = "keep", key: AuditKey | None = None
) -> list[bytes]:
    """What an attacker without the audit key does after deleting or editing line ``start``
    (1-based): every ``prev_hash`` from that line on recomputed with plain SHA-256, so that each
    link holds again. ``seal``: ``keep`` leaves each line's kid and mac as they were, ``strip``
    removes them (the unkeyed format), ``reseal`` seals each line again with ``key`` (a wrong
    one), ``forge`` does that but writes the real kid of the line it replaces."""
    out = list(lines[: start - 1])
    previous = line_hash(out[-1]) if out else GENESIS_HASH
    for line in lines[start - 1 :]:
        record = json.loads(line)
        kid = record.pop("kid", None)
        record.pop("mac", None)
        record["prev_hash"] = previous
        if seal == "keep":
            body = json.dumps({**record, "kid": kid}, separators=(",", ":")).encode()
            mac = SEAL.search(line.rstrip(b"\n"))
            assert mac is not None
            new = body[:-1] + b',"mac":"' + mac.group(1) + b'"}\n'
        elif seal == "strip":
            new = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        else:
            assert key is not None
            new = key.seal(record)
            if seal == "forge":
                new = new.replace(f'"kid":"{key.key_id}"'.encode(), f'"kid":"{kid}"'.encode())
        out.append(new)
        previous = line_hash(new)
    return out
