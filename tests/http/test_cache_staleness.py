"""Key rows cached by the workers (``kms.cache_staleness_ms``): what one worker or node changes,
every other sees within the bound, at once when the change counters (SQLite) or NOTIFY (PostgreSQL)
tell it, and a ciphertext of a version a worker has not seen yet decrypts there at once.

Real servers: gunicorn with two workers over mutual TLS. To know that every worker answered,
the servers here add gunicorn's pid atom to the access log (a command-line option of this test's
own; the product's log format is untouched) and the tests read which process served each request
by its X-Request-Id. A fresh connection is opened per request so that both workers take some.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from kms.master import destroy_due_keys
from kms.settings import Settings
from kms.store.records import utc_now
from tests.helpers.config import write_config
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_json,
    free_port,
    initialise_database,
    kms_command,
    unb64,
    unique_key_id,
    write_dev_certificates,
)

pytestmark = pytest.mark.slow

#: Long enough that a change seen within a test's deadline was not seen through the bound.
LONG_BOUND_MS = 60_000
#: A deadline for what must happen "at once" or "within the bound": never a measurement.
DEADLINE_SECONDS = 15.0
WORKERS = 2
ACCESS_LOG_FORMAT = (
    '%(h)s caller="%({kms.caller}e)s" request_id=%({kms.request_id}e)s "%(r)s" %(s)s %(b)s '
    "%(M)sms pid=%(p)s"
)


class PidLoggingServer(ServerProcess):
    """``kms serve`` whose access log also names the worker process of each request."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment, kms_command("serve", "--access-logformat", ACCESS_LOG_FORMAT))

    def worker_of(self, response: requests.Response) -> str:
        line = self.access_log_line(response.headers["X-Request-Id"])
        return line.rsplit("pid=", 1)[1].strip()


def _configure(deployment: Deployment, database: Path | str, staleness_ms: int | None) -> None:
    staleness = {} if staleness_ms is None else {"cache_staleness_ms": staleness_ms}
    write_config(
        deployment.config,
        directory=deployment.directory,
        port=deployment.port,
        dsn=database,
        kms=staleness,
    )


class Node:
    """A running server and a client of it."""

    def __init__(self, server: PidLoggingServer, client: KMSClient) -> None:
        self.server = server
        self.client = client

    def fresh(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request on a new connection (so that any worker may take it)."""
        with closing(self.client.new_session()) as session:
            return self.client.request(method, path, session=session, **kwargs)

    def on_every_worker(
        self, method: str, path: str, check: Callable[[requests.Response], bool], **kwargs: Any
    ) -> None:
        """Until each worker has answered: every answer must pass ``check`` (at once)."""
        seen: set[str] = set()
        deadline = time.monotonic() + DEADLINE_SECONDS * 4
        while len(seen) < WORKERS:
            response = self.fresh(method, path, **kwargs)
            assert check(response), (response.status_code, response.text)
            seen.add(self.server.worker_of(response))
            if time.monotonic() > deadline:
                pytest.fail(f"only workers {seen} ever answered")

    def eventually_on_every_worker(
        self, method: str, path: str, check: Callable[[requests.Response], bool], **kwargs: Any
    ) -> None:
        """Poll until ``check`` passes on each worker, twice in a row on fresh connections."""
        passed: dict[str, int] = {}
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len([worker for worker, count in passed.items() if count >= 2]) < WORKERS:
            response = self.fresh(method, path, **kwargs)
            worker = self.server.worker_of(response)
            passed[worker] = passed.get(worker, 0) + 1 if check(response) else 0
            if time.monotonic() > deadline:
                pytest.fail(f"not seen on every worker before the deadline: {passed}")
            time.sleep(0.01)

    def warm(self, key_id: str) -> None:
        """Every worker has the key's row cached (an encrypt on each)."""
        self.on_every_worker(
            "POST",
            "/v1/kms/encrypt",
            lambda response: response.status_code == 200,
            json={"key_id": key_id, "plaintext": b64(b"warm")},
        )


def _start(stack: ExitStack, deployment: Deployment) -> Node:
    server = PidLoggingServer(deployment)
    stack.callback(lambda: _assert_clean_stop(server))
    client = stack.enter_context(closing(KMSClient(deployment)))
    server.wait_until_serving(client)
    return Node(server, client)


def _assert_clean_stop(server: ServerProcess) -> None:
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    with ExitStack() as stack:

        def start(
            staleness_ms: int | None, after_start: Callable[[Path], None] | None = None
        ) -> Node:
            directory = tmp_path / f"node-{staleness_ms}"
            write_dev_certificates(directory)
            deployment = Deployment(directory=directory, port=free_port())
            _configure(deployment, deployment.database, staleness_ms)
            initialise_database(deployment.database, deployment.passphrase_file)
            node = _start(stack, deployment)
            if after_start is not None:
                after_start(deployment.database)
            return node

        yield start


def _encrypt(node: Node, key_id: str, plaintext: bytes) -> dict[str, Any]:
    return expect_json(
        node.client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(plaintext)}),
        200,
    )


def _status(status: int) -> Callable[[requests.Response], bool]:
    return lambda response: response.status_code == status


def _encrypts_at(version: int) -> Callable[[requests.Response], bool]:
    return lambda response: response.status_code == 200 and response.json()["version"] == version


def _decrypts_to(plaintext: bytes) -> Callable[[requests.Response], bool]:
    return lambda response: (
        response.status_code == 200 and unb64(response.json()["plaintext"]) == plaintext
    )


ENCRYPT = "/v1/kms/encrypt"
DECRYPT = "/v1/kms/decrypt"


def _changes_seen(node: Node, other: Node, *, at_once: bool) -> None:
    """Rotate, disable, enable, recreate and delete through ``node``; ``other`` (maybe the same
    server) sees each on every worker: at once, or else within the bound (polled)."""
    see = other.on_every_worker if at_once else other.eventually_on_every_worker
    key_id = unique_key_id("cached")
    expect_json(node.client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
    other.warm(key_id)
    plaintext = {"key_id": key_id, "plaintext": b64(b"x")}

    expect_json(node.client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    see("POST", ENCRYPT, _encrypts_at(2), json=plaintext)
    # A ciphertext of a version a worker may not have seen: decrypts at once everywhere.
    expect_json(node.client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    v3 = _encrypt(node, key_id, b"three")
    assert v3["version"] == 3
    other.on_every_worker(
        "POST",
        DECRYPT,
        _decrypts_to(b"three"),
        json={"key_id": key_id, "ciphertext": v3["ciphertext"]},
    )

    expect_json(node.client.post(f"/v1/kms/keys/{key_id}/disable"), 200)
    see("POST", ENCRYPT, _status(409), json=plaintext)
    expect_json(node.client.post(f"/v1/kms/keys/{key_id}/enable"), 200)
    see("POST", ENCRYPT, _status(200), json=plaintext)

    other.warm(key_id)
    expect_json(node.client.post(f"/v1/kms/keys/{key_id}/recreate"), 201)
    see("POST", ENCRYPT, _encrypts_at(1), json=plaintext)
    # What the recreated key made decrypts everywhere at once, whatever a worker cached.
    fresh = _encrypt(node, key_id, b"after recreate")
    other.on_every_worker(
        "POST",
        DECRYPT,
        _decrypts_to(b"after recreate"),
        json={"key_id": key_id, "ciphertext": fresh["ciphertext"]},
    )

    other.warm(key_id)
    response = node.client.delete(f"/v1/kms/keys/{key_id}")
    assert response.status_code == 204, response.text
    see("POST", ENCRYPT, _status(404), json=plaintext)


def test_sqlite_workers_see_each_others_changes_at_once_through_the_counters(
    sqlite_node: Callable[..., Node],
) -> None:
    node = sqlite_node(LONG_BOUND_MS)
    _changes_seen(node, node, at_once=True)


def test_sqlite_with_staleness_zero_every_worker_reads_the_row(
    sqlite_node: Callable[..., Node],
) -> None:
    node = sqlite_node(0)
    _changes_seen(node, node, at_once=True)


def test_sqlite_without_usable_counters_the_bound_still_holds(
    sqlite_node: Callable[..., Node],
) -> None:
    """The counters file becomes unusable once the server runs (a directory in its place; at
    start that is refused, tests/system/test_side_files.py): a worker that meets it logs one
    warning, and the default bound of a second is what makes a change visible to the others."""

    def block_counters(database: Path) -> None:
        changes = database.with_name(database.name + ".changes")
        changes.unlink()
        changes.mkdir()

    node = sqlite_node(None, block_counters)
    _changes_seen(node, node, at_once=False)
    assert "kms.cache_staleness_ms only" in node.server.output()


def test_a_command_that_writes_is_seen_by_a_running_server_at_once(
    sqlite_node: Callable[..., Node],
) -> None:
    """``kms destroy-due``'s library function, run in this process (its clock moved past the
    deletion window, which the command itself never allows), against a server caching rows for a
    minute: the destroyed key is gone on every worker at once."""
    node = sqlite_node(LONG_BOUND_MS)
    key_id = unique_key_id("due")
    expect_json(node.client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
    node.warm(key_id)
    response = node.client.delete(f"/v1/kms/keys/{key_id}", params={"pending_days": 1})
    expect_json(response, 200)
    node.on_every_worker(
        "POST", ENCRYPT, _status(409), json={"key_id": key_id, "plaintext": "eA=="}
    )
    deployment = node.server.deployment
    destroyed = destroy_due_keys(
        Settings(
            database_dsn=str(deployment.database),
            master_passphrase_file=deployment.passphrase_file,
        ),
        on_destroyed=lambda _key: None,
        on_failure=lambda _key_id, error: pytest.fail(str(error)),
        now=utc_now() + timedelta(days=2),
    )
    assert destroyed == [key_id]
    node.on_every_worker(
        "POST", ENCRYPT, _status(404), json={"key_id": key_id, "plaintext": "eA=="}
    )


# -- PostgreSQL: two nodes ---------------------------------------------------------------------


@pytest.fixture
def pg_nodes(
    tmp_path: Path, postgres_url: str
) -> Iterator[Callable[[int | None], tuple[Node, Node]]]:
    shared = tmp_path / "shared"
    write_dev_certificates(shared)
    initialise_database(postgres_url, shared / "master.key")
    with ExitStack() as stack:

        def start(staleness_ms: int | None) -> tuple[Node, Node]:
            nodes = []
            for name in ("node-a", "node-b"):
                directory = tmp_path / f"{name}-{staleness_ms}"
                shutil.copytree(shared, directory)
                deployment = Deployment(directory=directory, port=free_port())
                _configure(deployment, postgres_url, staleness_ms)
                nodes.append(_start(stack, deployment))
            return nodes[0], nodes[1]

        yield start


def test_postgres_nodes_see_each_others_changes_through_notify(
    pg_nodes: Callable[[int | None], tuple[Node, Node]],
) -> None:
    """A bound of a minute: a change seen on the other node within the deadline came by NOTIFY."""
    a, b = pg_nodes(LONG_BOUND_MS)
    _changes_seen(a, b, at_once=False)
    _changes_seen(b, a, at_once=False)


def test_postgres_nodes_with_staleness_zero_see_changes_at_once(
    pg_nodes: Callable[[int | None], tuple[Node, Node]],
) -> None:
    a, b = pg_nodes(0)
    _changes_seen(a, b, at_once=True)


def test_postgres_nodes_see_changes_within_the_default_bound(
    pg_nodes: Callable[[int | None], tuple[Node, Node]],
) -> None:
    a, b = pg_nodes(None)
    _changes_seen(a, b, at_once=False)
