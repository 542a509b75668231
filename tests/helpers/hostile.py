"""Hostile clients and well-behaved ones, for the slow-client test and scripts/hostile_clients.py.

``HostileLoad`` runs in a child process (its own interpreter lock, so it does not slow the
measuring clients down) and keeps a number of hostile connections of these kinds open against
one server, opening a new one whenever the server closes one:

- ``silent``: a TCP connection that sends nothing;
- ``hello_byte``: one byte of a TLS ClientHello, then silence;
- ``slow_head``: a completed handshake with a valid client certificate, then a request head sent
  one byte per second;
- ``slow_body``: a whole head announcing a body, then the body one byte per second;
- ``unread`` (not in ``MIX``): 40 pipelined requests for the OpenAPI document (about 100 KB
  each), after which nothing is read: the answers pile up in the socket buffers.

``slow_head``, ``slow_body`` and ``unread`` present ``Target.attacker_cert`` (by default the
measuring clients' own certificate).

``measure`` runs the well-behaved clients: one on a kept-alive connection and one opening a new
connection per request, each timing every answer, plus optional extra kept-alive clients that
only count answers (the throughput). ``send_requests`` runs the same two clients for a number of
requests instead of a time, for a test that asks whether they are answered, not how fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers.harness import b64, new_session

KINDS = ("silent", "hello_byte", "slow_head", "slow_body", "unread")
#: The mix of slow clients the slow-client test and the script's default attack open.
MIX = ("silent", "hello_byte", "slow_head", "slow_body")
#: The first bytes of a TLS ClientHello record.
_CLIENT_HELLO_START = b"\x16"
_SLOW_HEAD = (
    b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 60\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
)
_UNREAD = b"GET /v1/kms/openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 40
_SLOW_BODY_HEAD = (
    b"POST /v1/kms/encrypt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 10000\r\n\r\n"
)


def raise_file_limit(needed: int) -> None:
    """Raise this process's open-file limit towards ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    ca_cert: Path
    client_cert: Path
    client_key: Path
    #: The hostile connections' certificate, if not the measuring clients'.
    attacker_cert: Path | None = None
    attacker_key: Path | None = None


class HostileLoad:
    """``counts[kind]`` hostile connections held open in a child process until ``stop``."""

    def __init__(self, target: Target, counts: dict[str, int], nice: int = 0) -> None:
        """``nice`` lowers the attackers' CPU priority: on one machine, their CPU is not the
        server's to lose (a real attacker brings its own)."""
        self.target = target
        self.counts = counts
        context = multiprocessing.get_context("fork")
        self.open_now = context.Array("i", len(KINDS))
        self.opened_total = context.Value("i", 0)
        self.stopping = context.Event()
        # One process per kind: opening TLS connections costs the attacker CPU too, and one
        # interpreter could not keep every kind at its count.
        self.processes = [
            context.Process(
                target=_run_hostile,
                args=(
                    target,
                    {kind: count},
                    self.open_now,
                    self.opened_total,
                    self.stopping,
                    nice,
                ),
                daemon=True,
            )
            for kind, count in counts.items()
            if count > 0
        ]
        self.samples: list[int] = []

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def sample_while(self, running: threading.Event, interval: float = 0.25) -> threading.Thread:
        """Record the total of open hostile connections every ``interval`` while ``running``."""

        def sample() -> None:
            while running.is_set():
                self.samples.append(sum(self.open_connections().values()))
                time.sleep(interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        return thread

    def open_connections(self) -> dict[str, int]:
        return {kind: self.open_now[index] for index, kind in enumerate(KINDS)}

    def wait_until_open(self, fraction: float, timeout: float) -> dict[str, int]:
        """Wait until at least ``fraction`` of every kind is open; return the counts seen."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.open_connections()
            if all(seen[kind] >= fraction * self.counts.get(kind, 0) for kind in KINDS):
                return seen
            if time.monotonic() > deadline:
                return seen
            time.sleep(0.1)

    def stop(self) -> None:
        self.stopping.set()
        for process in self.processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()


def _run_hostile(
    target: Target,
    counts: dict[str, int],
    open_now: Any,
    opened_total: Any,
    stopping: Any,
    nice: int,
) -> None:
    if nice:
        os.nice(nice)
    raise_file_limit(4 * sum(counts.values()) + 256)
    asyncio.run(_hostile_main(target, counts, open_now, opened_total, stopping))


async def _hostile_main(
    target: Target,
    counts: dict[str, int],
    open_now: Any,
    opened_total: Any,
    stopping: Any,
) -> None:
    context = ssl.create_default_context(cafile=str(target.ca_cert))
    context.load_cert_chain(
        str(target.attacker_cert or target.client_cert),
        str(target.attacker_key or target.client_key),
    )
    stop = asyncio.Event()

    async def watch_stop() -> None:
        while not stopping.is_set():
            await asyncio.sleep(0.1)
        stop.set()

    def counted(kind: str, delta: int) -> None:
        index = KINDS.index(kind)
        with open_now.get_lock():
            open_now[index] += delta
        if delta > 0:
            with opened_total.get_lock():
                opened_total.value += 1

    async def one_connection(kind: str) -> None:
        tls = kind in ("slow_head", "slow_body", "unread")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                target.host,
                target.port,
                ssl=context if tls else None,
                server_hostname=target.host if tls else None,
            ),
            timeout=30,
        )
        counted(kind, +1)
        try:
            if kind == "hello_byte":
                writer.write(_CLIENT_HELLO_START)
            if kind == "slow_body":
                writer.write(_SLOW_BODY_HEAD)
            if kind == "unread":
                # asyncio reads up to its buffer's limit, then no more. One more request each
                # second notices a connection the server has closed (then reopened).
                writer.write(_UNREAD)
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=1.0)
                    if writer.transport.is_closing() or reader.at_eof():
                        return
                    writer.write(_UNREAD[: len(_UNREAD) // 40])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(writer.drain(), timeout=1.0)
                return
            trickle = {"slow_head": _SLOW_HEAD, "slow_body": b"x" * 10000}.get(kind, b"")
            position = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout=1.0)
                except TimeoutError:
                    data = None
                if data is not None:
                    return  # the server answered or closed: this connection is done
                if position < len(trickle):
                    writer.write(trickle[position : position + 1])
                    position += 1
                    await writer.drain()
        finally:
            counted(kind, -1)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)

    async def keep_one_open(kind: str, delay: float) -> None:
        await asyncio.sleep(delay)
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await one_connection(kind)
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(watch_stop())]
    for kind in KINDS:
        for number in range(counts.get(kind, 0)):
            # Spread the opening over a second, as a real attacker's would arrive.
            tasks.append(asyncio.create_task(keep_one_open(kind, number / max(counts[kind], 1))))
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- the well-behaved clients ------------------------------------------------------------------


@dataclass
class ClientRecord:
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("nan"))


@dataclass
class Measurement:
    keepalive: ClientRecord
    new_connection: ClientRecord
    answers: int
    seconds: float

    @property
    def throughput(self) -> float:
        return self.answers / self.seconds

    @property
    def worst(self) -> float:
        return max(self.keepalive.worst, self.new_connection.worst)


def encrypt_request(target: Target, key_id: str) -> Callable[[requests.Session], None]:
    url = f"https://{target.host}:{target.port}/v1/kms/encrypt"
    body = {"key_id": key_id, "plaintext": b64(b"a well-behaved client")}

    def send(session: requests.Session) -> None:
        response = session.post(url, json=body, timeout=30)
        if response.status_code != 200:
            raise AssertionError(f"{response.status_code}: {response.text}")

    return send


def send_requests(target: Target, key_id: str, count: int) -> Measurement:
    """``count`` requests from each of the two clients (kept-alive, new connection per request),
    side by side; each request has the 30 s timeout of ``encrypt_request``."""
    send = encrypt_request(target, key_id)
    keepalive, new_connection = ClientRecord(), ClientRecord()

    def session() -> requests.Session:
        return new_session(target.client_cert, target.client_key, target.ca_cert)

    def run(record: ClientRecord, reuse: bool) -> None:
        kept = session() if reuse else None
        try:
            for _ in range(count):
                current = kept or session()
                started = time.monotonic()
                try:
                    send(current)
                except Exception as exc:  # recorded, reported by the caller
                    record.failures.append(f"{type(exc).__name__}: {exc}")
                finally:
                    record.latencies.append(time.monotonic() - started)
                    if kept is None:
                        current.close()
        finally:
            if kept is not None:
                kept.close()

    threads = [
        threading.Thread(target=run, args=(keepalive, True)),
        threading.Thread(target=run, args=(new_connection, False)),
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers = sum(len(r.latencies) - len(r.failures) for r in (keepalive, new_connection))
    return Measurement(keepalive, new_connection, answers, time.monotonic() - started)


def measure(target: Target, key_id: str, seconds: float, extra_clients: int = 0) -> Measurement:
    """Run the timed clients (and ``extra_clients`` counting ones) for ``seconds``."""
    send = encrypt_request(target, key_id)
    stop_at = time.monotonic() + seconds
    keepalive, new_connection = ClientRecord(), ClientRecord()
    answers = [0] * (extra_clients + 2)

    def session() -> requests.Session:
        return new_session(target.client_cert, target.client_key, target.ca_cert)

    def timed(record: ClientRecord, slot: int, reuse: bool) -> None:
        kept = session() if reuse else None
        try:
            while time.monotonic() < stop_at:
                current = kept or session()
                started = time.monotonic()
                try:
                    send(current)
                except Exception as exc:  # recorded, reported by the caller
                    record.failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    answers[slot] += 1
                finally:
                    record.latencies.append(time.monotonic() - started)
                    if kept is None:
                        current.close()
        finally:
            if kept is not None:
                kept.close()

    def counting(slot: int) -> None:
        with session() as kept:
            while time.monotonic() < stop_at:
                with contextlib.suppress(Exception):
                    send(kept)
                    answers[slot] += 1

    threads = [
        threading.Thread(target=timed, args=(keepalive, 0, True)),
        threading.Thread(target=timed, args=(new_connection, 1, False)),
    ] + [threading.Thread(target=counting, args=(slot + 2,)) for slot in range(extra_clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Measurement(keepalive, new_connection, sum(answers), time.monotonic() - started)
