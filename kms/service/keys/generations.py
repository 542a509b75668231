"""Anti-rollback: the generation of every key row, and what this node has seen of them.

A row MAC proves that kms wrote a row, not that it is the newest. So every change raises the
keystore epoch (a counter in ``kms_metadata``, under a MAC, taken under a lock by every change on
every node) and stamps the row it writes with the new epoch as its ``generation``, under the
row's MAC. A key's generation therefore only grows, and a key made again after a destroy starts
above the destroy.

Each node remembers the highest generation it has seen of each key, and the highest epoch: in
memory, and in its journal (kms.store.generations), which survives restarts and which every
process of the node shares. A row older than what the node remembers is refused as an integrity
failure (``RolledBack``: logged, counted, 503, never obeyed); a newer one, written by another
node, is simply remembered. Only what the node knew when a read began is held against the row
it reads (``mark``): a read that started before a change committed may return the row before
it, which is no rollback. A change refuses an epoch row older than the node has seen, and the
server refuses to start on one (kms.master).

What the node learns it writes to the journal at once: a new generation of a key is seen once
per change per process, never per request, so the hot path only compares two integers. Every
change also reaches the audit log with its generation (``RECORDED_CHANGES``), which
``kms check --audit`` compares with the database (kms.service.keys.maintenance).
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

from kms.errors import RolledBack
from kms.store.generations import EPOCH_NAME, GenerationJournal
from kms.store.records import KeyRecord

#: The changes a request made, ``(key_id, generation)``, for its audit line: the API sets a list
#: when a request arrives and reads it when answering; the service appends to it.
RECORDED_CHANGES: ContextVar[list[tuple[str, int]] | None] = ContextVar(
    "kms_recorded_changes", default=None
)


class Generations:
    """The newest generation of each key and the newest epoch this node has seen.

    ``journal`` None: in memory only (a PostgreSQL node without ``kms.state_file``, a test).
    """

    def __init__(self, journal: GenerationJournal | None = None) -> None:
        self._journal = journal
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {} if journal is None else journal.load()
        #: When (``mark``'s count) each name was last raised; absent: before any read.
        self._learned: dict[str, int] = {}
        self._tick = 0

    def __repr__(self) -> str:
        return f"Generations(keys={len(self._seen)}, journal={self._journal!r})"

    @property
    def epoch(self) -> int:
        """The highest epoch seen: the epoch itself, or any generation (a generation is the
        epoch its change raised)."""
        return max(self._seen.values(), default=0)

    def mark(self) -> int:
        """Before a read of the database: what counts as known when its rows are judged."""
        return self._tick

    def refresh(self) -> None:
        """Take in what the node's other processes recorded since (before a database read)."""
        if self._journal is None:
            return
        with self._lock:
            for name, value in self._journal.news().items():
                if value > self._seen.get(name, 0):
                    self._raise(name, value)

    def observe(self, key: KeyRecord, since: int | None = None) -> None:
        """Remember ``key``'s generation, or raise ``RolledBack`` if it is older than seen.

        ``since``: the ``mark`` taken before the row was read (None: read under the row's write
        lock, where nothing known can be newer than the row)."""
        self.observe_row(key.key_id, key.generation, since, f"key {key.key_id!r}")

    def observe_row(self, name: str, generation: int, since: int | None, what: str) -> None:
        """``observe`` for any row with a generation, remembered under ``name`` (a key's id; an
        alias's ``alias/...``, which no key id can be)."""
        known = self._seen.get(name, 0)
        if generation == known:
            return
        if generation < known:
            if since is not None and self._learned.get(name, 0) > since:
                return  # learned while the row was being read: the read began before it
            raise RolledBack(
                f"{what}: the row's generation {generation} is older than "
                f"generation {known}, which this node has seen: the row was rolled back"
            )
        self._remember([(name, generation)])

    def remember(self, key: KeyRecord) -> None:
        """Remember the generation of a row this process just wrote (never refused: a later
        change may have been remembered first)."""
        self.remember_row(key.key_id, key.generation)

    def remember_row(self, name: str, generation: int) -> None:
        """``remember`` for any row with a generation (see ``observe_row``); also what a row
        deleted at ``generation`` leaves: an older copy of it is a rollback."""
        self._remember([(name, generation), (EPOCH_NAME, generation)])

    def observe_epoch(self, epoch: int) -> None:
        """Remember the keystore epoch, or raise ``RolledBack`` if it is older than seen."""
        known = self.epoch
        if epoch < known:
            raise RolledBack(
                f"the keystore epoch {epoch} is older than epoch {known}, which this node has "
                "seen: the database was rolled back"
            )
        if epoch > known:
            self._remember([(EPOCH_NAME, epoch)])

    def destroyed(self, key_id: str, generation: int) -> None:
        """A key destroyed at ``generation``: a row of it older than that is a rollback."""
        self._remember([(key_id, generation), (EPOCH_NAME, generation)])

    def _remember(self, entries: list[tuple[str, int]]) -> None:
        with self._lock:
            fresh = [(n, v) for n, v in entries if v > self._seen.get(n, 0)]
            for name, value in fresh:
                self._raise(name, value)
            if self._journal is not None and fresh:
                self._journal.append(fresh, self._seen)

    def _raise(self, name: str, value: int) -> None:
        """Under the lock."""
        self._tick += 1
        self._seen[name] = value
        self._learned[name] = self._tick

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()


def record_change(key_id: str, generation: int) -> None:
    """Note a change for the request's audit line (outside a request: nobody listens)."""
    recorded = RECORDED_CHANGES.get()
    if recorded is not None:
        recorded.append((key_id, generation))
