"""New connections go to the least loaded worker (kms.server.balance).

A client's pool keeps its connections alive, so the worker that accepts a connection serves it
for its whole life: when most of a pool lands on one of two workers, one core does the work of
two. Real server, two workers; which worker holds a connection is read from Linux's /proc (the
sockets among each worker's open files, matched with the established TCP connections on the
server's port, by the benchmark's own function, which reports the split of each scenario).
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
import requests

from bench.server import connections_per_process
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    expect_json,
    prepare_deployment,
)
from tests.helpers.identities import running_server

WORKERS = 2


@pytest.fixture()
def balanced_server(tmp_path: Path) -> Iterator[tuple[Deployment, ServerProcess]]:
    deployment = prepare_deployment(tmp_path)
    with running_server(deployment) as server:
        yield deployment, server


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in map(int, children):
            found |= {child} | descendants(child)
    return found


def idle_worker_pids(deployment: Deployment, server: ServerProcess) -> list[int]:
    """gunicorn's workers (the server's processes with no child: the master has them), once they
    hold no connection (the start-up probe's is closed)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The probe's socket stays open until its response, in a reference cycle, is collected.
        gc.collect()
        leaves = sorted(pid for pid in descendants(server.process.pid) if not descendants(pid))
        if len(leaves) == WORKERS and not any(
            connections_per_worker(leaves, deployment.port).values()
        ):
            return leaves
        time.sleep(0.05)
    pytest.fail(f"expected {WORKERS} idle worker processes, found {leaves}")


def connections_per_worker(pids: list[int], port: int) -> dict[int, int]:
    return dict(zip(pids, connections_per_process(pids, port), strict=True))


def open_kept_alive(stack: ExitStack, client: KMSClient) -> requests.Session:
    """A new connection, used once and kept alive (held by the stack until the test ends)."""
    session = stack.enter_context(closing(client.new_session()))
    assert expect_json(client.request("GET", "/healthz", session=session), 200)
    return session


def test_connections_opened_one_after_another_are_shared_evenly_by_the_workers(
    balanced_server: tuple[Deployment, ServerProcess],
) -> None:
    deployment, server = balanced_server
    pids = idle_worker_pids(deployment, server)
    client = KMSClient(deployment)
    with ExitStack() as stack:
        for _ in range(8):
            open_kept_alive(stack, client)
        held = connections_per_worker(pids, deployment.port)
        assert sum(held.values()) == 8, held
        # One after another, each new connection finds the other worker less loaded, so the
        # split is even; within one, since a worker too busy to take its turn within
        # kms.server.balance.YIELD_SECONDS leaves it to the other.
        assert max(held.values()) - min(held.values()) <= 1, held
    client.close()


def test_a_worker_that_does_not_accept_does_not_stall_new_clients(
    balanced_server: tuple[Deployment, ServerProcess],
) -> None:
    """The least loaded worker is stopped (SIGSTOP): the other one takes every new connection
    after one pause, instead of leaving them to a worker that never accepts (that it pauses only
    once: tests/unit/test_connection_table.py)."""
    deployment, server = balanced_server
    pids = idle_worker_pids(deployment, server)
    client = KMSClient(deployment)
    with ExitStack() as stack:
        open_kept_alive(stack, client)
        held = connections_per_worker(pids, deployment.port)
        busy = max(held, key=held.__getitem__)
        stopped = next(pid for pid in pids if pid != busy)
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(4):
                open_kept_alive(stack, client)
            held = connections_per_worker(pids, deployment.port)
        finally:
            os.kill(stopped, signal.SIGCONT)
        assert held == {busy: 5, stopped: 0}, held
    client.close()
