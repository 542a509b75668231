"""Which connection the worker may close for a newcomer at its cap, and the quota per identity
(kms.server.admission), on connections built by hand: no socket is used."""

from __future__ import annotations

import socket

from kms.server.admission import (
    QUOTA_LOG_INTERVAL_SECONDS,
    IdentityCounts,
    choose_victim,
    evictable,
)
from kms.server.connection import Connection, State


def connection(state: State, since: float, identity: str | None = None) -> Connection:
    conn = Connection(socket.socket(), ("127.0.0.1", 1), ("127.0.0.1", 2))
    conn.sock.close()
    conn.state, conn.since, conn.identity = state, since, identity
    return conn


def test_only_connections_that_are_not_yet_a_clients_may_be_closed() -> None:
    assert evictable(connection(State.HANDSHAKE, 0))
    assert evictable(connection(State.HEAD, 0, "CN=a"))
    answered = connection(State.HEAD, 0, "CN=a")
    answered.requests = 1
    assert not evictable(answered)
    started = connection(State.HEAD, 0, "CN=a")
    started.buffer += b"GET / HT"
    assert not evictable(started)
    for state in (State.IDLE, State.BODY, State.BUSY, State.WRITE, State.DISCARD, State.LINGER):
        assert not evictable(connection(state, 0, "CN=a")), state


def test_handshakes_go_first_then_the_busiest_identity_then_the_oldest() -> None:
    counts = IdentityCounts(quota=10)
    for _ in range(3):
        counts.admit("CN=many")
    counts.admit("CN=few")
    idle = connection(State.IDLE, 0, "CN=many")
    few = connection(State.HEAD, 1, "CN=few")
    many_new = connection(State.HEAD, 3, "CN=many")
    many_old = connection(State.HEAD, 2, "CN=many")
    handshake = connection(State.HANDSHAKE, 4)
    held = [idle, few, many_new, many_old, handshake]
    assert choose_victim(held, counts) is handshake
    held.remove(handshake)
    assert choose_victim(held, counts) is many_old
    held.remove(many_old)
    assert choose_victim(held, counts) is many_new
    held.remove(many_new)
    assert choose_victim(held, counts) is few
    assert choose_victim([idle], counts) is None


def test_an_identity_holds_at_most_its_quota() -> None:
    counts = IdentityCounts(quota=2)
    assert counts.admit("CN=a") and counts.admit("CN=a")
    assert not counts.admit("CN=a")
    assert counts.admit("CN=b")
    assert counts.held("CN=a") == 2
    counts.release("CN=a")
    assert counts.held("CN=a") == 1
    assert counts.admit("CN=a")
    assert not counts.admit("CN=a")
    counts.release("CN=b")
    assert counts.held("CN=b") == 0 and "CN=b" not in counts.counts


def test_refusals_of_one_identity_are_logged_at_most_once_per_interval() -> None:
    counts = IdentityCounts(quota=1)
    counts.admit("CN=a")
    assert counts.refusal_to_log("CN=a", 100.0)
    assert not counts.refusal_to_log("CN=a", 100.0 + QUOTA_LOG_INTERVAL_SECONDS - 0.1)
    assert counts.refusal_to_log("CN=b", 101.0)  # each identity on its own
    assert counts.refusal_to_log("CN=a", 100.0 + QUOTA_LOG_INTERVAL_SECONDS)


def test_a_refused_identity_that_comes_back_is_not_logged_again_within_the_interval() -> None:
    """Its connections closed and reopened in between, and another identity was refused."""
    counts = IdentityCounts(quota=1)
    counts.admit("CN=a")
    assert counts.refusal_to_log("CN=a", 100.0)
    counts.release("CN=a")
    counts.admit("CN=b")
    assert counts.refusal_to_log("CN=b", 101.0)
    counts.admit("CN=a")
    assert not counts.refusal_to_log("CN=a", 102.0)


def test_identities_at_their_quota_are_logged_once_per_interval_after_many_others_left() -> None:
    """Many identities were refused and then closed their connections: the table forgets them,
    not the identities still at their quota."""
    counts = IdentityCounts(quota=1)
    gone = [f"CN=gone-{n}" for n in range(100)]
    for identity in gone:
        counts.admit(identity)
    for identity in gone:
        assert counts.refusal_to_log(identity, 100.0)
    for identity in gone:
        counts.release(identity)
    counts.admit("CN=a")
    counts.admit("CN=b")
    assert counts.refusal_to_log("CN=a", 101.0)
    assert counts.refusal_to_log("CN=b", 101.0)
    assert not counts.refusal_to_log("CN=a", 102.0)
    assert not counts.refusal_to_log("CN=b", 102.0)
    assert not any(name.startswith("CN=gone-") for name in counts.logged)
