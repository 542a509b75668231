"""The table of connections per worker that shares new connections out (kms.server.balance)."""

from __future__ import annotations

import os
import selectors
import time
from types import SimpleNamespace

import pytest

from kms.server import balance
from kms.server.balance import FREE, ConnectionTable
from kms.server.worker import KMSWorker


def test_a_new_table_has_no_live_worker() -> None:
    table = ConnectionTable(slots=4)
    assert [table.count(slot) for slot in range(4)] == [FREE] * 4
    assert table.fewest_elsewhere(0) is None


def test_a_worker_compares_itself_with_the_least_loaded_other_live_worker() -> None:
    table = ConnectionTable(slots=4)
    first, second, third = (table.claim(set(range(n))) for n in range(3))
    assert (first, second, third) == (0, 1, 2)
    table.publish(0, 5)
    table.publish(1, 3)
    table.publish(2, 4)
    assert table.fewest_elsewhere(0) == 3
    assert table.fewest_elsewhere(1) == 4
    table.release(1)
    assert table.fewest_elsewhere(0) == 4
    assert table.fewest_elsewhere(2) == 5


def test_a_claimed_slot_starts_at_zero_and_a_full_table_gives_none() -> None:
    table = ConnectionTable(slots=2)
    table.publish(1, 7)
    assert table.claim({0}) == 1
    assert table.count(1) == 0
    assert table.claim({0, 1}) is None


def test_workers_forked_after_the_table_share_its_counters() -> None:
    table = ConnectionTable(slots=2)
    pid = os.fork()
    if pid == 0:
        table.publish(1, 9)
        os._exit(0)
    os.waitpid(pid, 0)
    assert table.count(1) == 9


def test_the_master_gives_each_worker_a_free_slot_and_frees_it_when_the_worker_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(balance, "_table", None)
    first, second, third = (SimpleNamespace() for _ in range(3))
    balance.assign_slot(first, [])
    balance.assign_slot(second, [first])
    assert (first.connection_slot, second.connection_slot) == (0, 1)
    assert first.connection_table is second.connection_table
    balance.release_slot(first)
    assert first.connection_table.count(0) == FREE
    balance.assign_slot(third, [second])
    assert third.connection_slot == 0


def idle_worker(table: ConnectionTable, slot: int, connections: int) -> KMSWorker:
    """The balancing state of a kms worker, without a server: no listeners, a real selector."""
    worker = object.__new__(KMSWorker)
    worker.connection_table, worker.connection_slot = table, slot
    worker.nr_conns = connections
    worker.sockets = []
    worker.poller = selectors.DefaultSelector()
    worker.accept_paused_until = None
    worker.others_at_pause = None
    worker.others_not_accepting = False
    table.publish(slot, connections)
    return worker


def test_a_worker_pauses_once_for_a_worker_that_does_not_accept_then_takes_every_connection() -> (
    None
):
    table = ConnectionTable(slots=2)
    worker = idle_worker(table, 0, 2)
    table.publish(1, 0)
    assert worker.more_loaded_than_another()
    worker.pause_accepting()
    # The pause runs out and the other worker took nothing: it is not accepting.
    worker.maybe_resume_accepting(paused_until=time.monotonic() - 1)
    for connections in range(3, 10):
        worker.nr_conns = connections
        assert not worker.more_loaded_than_another()
    # Its count moves (it accepts, or a connection of its own closed): balancing again.
    table.publish(1, 1)
    assert worker.more_loaded_than_another()


def test_a_pause_in_which_the_other_worker_accepted_leaves_balancing_on() -> None:
    table = ConnectionTable(slots=2)
    worker = idle_worker(table, 0, 3)
    table.publish(1, 0)
    worker.pause_accepting()
    table.publish(1, 1)  # it took one during the pause
    worker.maybe_resume_accepting(paused_until=time.monotonic() - 1)
    assert worker.more_loaded_than_another()


def test_a_worker_publishes_its_own_count_for_the_others() -> None:
    table = ConnectionTable(slots=2)
    worker = idle_worker(table, 0, 0)
    worker.nr_conns = 5
    worker.publish_connections()
    assert table.count(0) == 5 and table.fewest_elsewhere(1) == 5
