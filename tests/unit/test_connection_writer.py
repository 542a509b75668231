"""The writer a request thread answers through (kms.server.writing): it never waits on the
client, keeps order, and retries an unfinished TLS write with the same bytes first."""

from __future__ import annotations

import selectors
import ssl

import pytest

from kms.server.writing import ConnectionWriter


class SlowSocket:
    """A non-blocking socket whose peer reads ``room`` bytes at a time, then stops."""

    def __init__(self, room: int, blocked: type[Exception] = BlockingIOError) -> None:
        self.room = room
        self.blocked = blocked
        self.received = bytearray()
        self.attempts: list[bytes] = []

    def send(self, data: memoryview) -> int:
        self.attempts.append(bytes(data))
        if self.room == 0:
            raise self.blocked()
        count = min(self.room, len(data))
        self.room -= count
        self.received += data[:count]
        return count

    def getpeercert(self) -> dict[str, object]:
        return {"subject": ((("commonName", "a"),),)}


def test_what_the_socket_takes_goes_out_and_the_rest_waits_in_order() -> None:
    sock = SlowSocket(room=3)
    writer = ConnectionWriter(sock)
    writer.sendall(b"head+")  # does not wait: 3 bytes out, 2 queued
    writer.sendall(b"body")  # behind the queue, not tried on its own
    assert bytes(sock.received) == b"hea"
    assert bytes(writer.pending) == b"d+body"
    assert writer.flush() is False
    sock.room = 100
    assert writer.flush() is True
    assert bytes(sock.received) == b"head+body"
    assert writer.sent == 9 and not writer.pending


@pytest.mark.parametrize(
    ("blocked", "wants"),
    [
        (ssl.SSLWantWriteError, selectors.EVENT_WRITE),
        (ssl.SSLWantReadError, selectors.EVENT_READ),
        (BlockingIOError, selectors.EVENT_WRITE),
    ],
)
def test_a_write_that_cannot_finish_is_retried_from_the_same_bytes(
    blocked: type[Exception], wants: int
) -> None:
    sock = SlowSocket(room=0, blocked=blocked)
    writer = ConnectionWriter(sock)
    writer.sendall(b"answer")
    assert writer.wants == wants
    writer.sendall(b"-more")
    sock.room = 100
    assert writer.flush() is True
    # Each attempt starts with the bytes the failed one started with (OpenSSL requires it).
    assert all(attempt.startswith(b"answer") for attempt in sock.attempts)
    assert bytes(sock.received) == b"answer-more"


def test_a_client_that_went_away_is_an_error_for_the_caller() -> None:
    class Gone(SlowSocket):
        def send(self, data: memoryview) -> int:
            raise BrokenPipeError()

    writer = ConnectionWriter(Gone(room=0))
    with pytest.raises(BrokenPipeError):
        writer.sendall(b"x")


def test_the_rest_of_the_socket_is_the_socket() -> None:
    writer = ConnectionWriter(SlowSocket(room=0))
    assert writer.getpeercert() == {"subject": ((("commonName", "a"),),)}
