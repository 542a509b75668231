"""How many connections each worker of a node holds, so that new ones go to the least loaded.

Every worker polls the one listening socket its master bound, and the kernel gives a new
connection to whichever worker calls ``accept`` first. Clients keep their connections alive (a
pool of eight, say), so where a connection lands at connect time decides which core serves it
for its whole life: with two workers, a burst that all landed on one left the other core idle and
halved throughput (``make bench`` swung between about 450 and 950 requests/s per scenario on it).

The master makes a table of one counter per worker slot in shared memory (an anonymous mmap,
inherited at fork) and gives each worker a slot before forking it (``pre_fork``); a worker writes
its number of connections into its slot whenever it changes, and a worker that holds more than
the least loaded of the others leaves the next connection to them: it stops polling the
listener until its count is no longer above theirs, or for ``YIELD_SECONDS`` at most. If by then
no other worker's count has moved (they are stopped, hung, or still starting), it takes every new
connection itself, without pausing again, until one of their counts moves: a worker that does
not accept costs new clients one pause, not one per connection. nginx does the same with
``accept_mutex`` and ``ngx_accept_disabled``.

A worker with no slot (the table is full, or gunicorn was started without kms's configuration)
accepts as gunicorn's own workers do.
"""

from __future__ import annotations

import contextlib
import mmap
import selectors
import struct
import time
from typing import Any

#: Worker slots in the table; workers beyond it (more than any sane 2-to-64-core node) accept
#: without balancing.
SLOTS = 128
#: The longest a worker leaves pending connections to the others before accepting them itself.
YIELD_SECONDS = 0.02
#: A slot's counter when no live worker owns it.
FREE = -1

_COUNTER = struct.Struct("=i")


class ConnectionTable:
    """One int32 counter per worker slot in shared memory: connections held, or ``FREE``."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        # Anonymous and MAP_SHARED (mmap's default): the workers forked later share the pages.
        self._memory = mmap.mmap(-1, slots * _COUNTER.size)
        for slot in range(slots):
            self.release(slot)

    def claim(self, in_use: set[int]) -> int | None:
        """A free slot for a worker about to be forked (in the master), or None if full."""
        for slot in range(self.slots):
            if slot not in in_use:
                self.publish(slot, 0)
                return slot
        return None

    def release(self, slot: int) -> None:
        self.publish(slot, FREE)

    def publish(self, slot: int, connections: int) -> None:
        _COUNTER.pack_into(self._memory, slot * _COUNTER.size, connections)

    def count(self, slot: int) -> int:
        return _COUNTER.unpack_from(self._memory, slot * _COUNTER.size)[0]

    def others(self, slot: int) -> bytes:
        """The other slots' counters as they are now, to tell later whether any has moved."""
        offset = slot * _COUNTER.size
        return self._memory[:offset] + self._memory[offset + _COUNTER.size :]

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The fewest connections any other live worker holds; None if there is no other."""
        fewest: int | None = None
        for other, (connections,) in enumerate(_COUNTER.iter_unpack(self._memory)):
            if other == slot or connections == FREE:
                continue
            if fewest is None or connections < fewest:
                fewest = connections
        return fewest


#: The master's table, made on first use (in gunicorn's master, before any worker is forked).
_table: ConnectionTable | None = None


def assign_slot(worker: Any, live_workers: Any) -> None:
    """gunicorn ``pre_fork``: give the worker about to be forked a free slot of the table."""
    global _table  # one table per master, shared with its workers by fork
    if _table is None:
        _table = ConnectionTable()
    in_use = {getattr(other, "connection_slot", None) for other in live_workers}
    worker.connection_slot = _table.claim({slot for slot in in_use if slot is not None})
    worker.connection_table = _table


def release_slot(worker: Any) -> None:
    """gunicorn ``child_exit``: the worker's slot is free again (it may have died holding any
    count; a dead worker must not look like the least loaded one)."""
    slot = getattr(worker, "connection_slot", None)
    if _table is not None and slot is not None:
        _table.release(slot)


class BalancedAccept:
    """The worker's side of the table: publish its count, and leave the listener to a less
    loaded worker for a moment (mixed into ``KMSWorker``)."""

    # The worker's (gunicorn's or KMSWorker's).
    sockets: list[Any]
    poller: selectors.BaseSelector
    nr_conns: int
    connection_table: ConnectionTable | None
    connection_slot: int | None
    accept_paused_until: float | None
    others_at_pause: bytes | None
    others_not_accepting: bool

    def accept(self, listener: Any) -> None:
        raise NotImplementedError

    def accept_connections(self, listener: Any) -> None:
        raise NotImplementedError

    def more_loaded_than_another(self) -> bool:
        table, slot = self.connection_table, self.connection_slot
        if table is None or slot is None:
            return False
        if self.others_not_accepting:
            if table.others(slot) == self.others_at_pause:
                return False
            self.others_not_accepting = False
        fewest = table.fewest_elsewhere(slot)
        return fewest is not None and self.nr_conns > fewest

    def publish_connections(self) -> None:
        if self.connection_table is not None and self.connection_slot is not None:
            self.connection_table.publish(self.connection_slot, self.nr_conns)

    def pause_accepting(self) -> None:
        for listener in self.sockets:
            with contextlib.suppress(KeyError, ValueError):
                self.poller.unregister(listener)
        self.accept_paused_until = time.monotonic() + YIELD_SECONDS
        if self.connection_table is not None and self.connection_slot is not None:
            self.others_at_pause = self.connection_table.others(self.connection_slot)

    def maybe_resume_accepting(self, paused_until: float) -> None:
        ran_out = time.monotonic() >= paused_until
        if not ran_out and self.more_loaded_than_another():
            return
        self.accept_paused_until = None
        if ran_out and self.connection_table is not None and self.connection_slot is not None:
            # Nobody took the pending connections: until another count moves, take them all.
            self.others_not_accepting = (
                self.connection_table.others(self.connection_slot) == self.others_at_pause
            )
        for listener in self.sockets:
            if ran_out:
                # The others had their chance: a connection still pending is this worker's.
                self.accept_connections(listener)
            self.poller.register(listener, selectors.EVENT_READ, self.accept)
        self.publish_connections()
