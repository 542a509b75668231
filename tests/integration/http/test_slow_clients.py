"""Clients that hold connections open without finishing a request cannot take kms down.

The one test here with a timed assertion, because the issue asks for a latency deadline: while
about 100 hostile connections stay open (silent TCP, one byte of ClientHello, a head or a body
sent one byte per second), a client on a kept-alive connection and one opening a new connection
per request get every answer within 2 seconds. With gunicorn's plain gthread worker (2 workers x
4 threads) these requests time out.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.http.harness import (
    KMSClient,
    ServerProcess,
    create_key,
    prepare_deployment,
)
from tests.integration.http.hostile import KINDS, HostileLoad, Target, measure, raise_file_limit

DEADLINE_SECONDS = 2.0
PER_KIND = 25
MEASURE_SECONDS = 6.0


@pytest.mark.slow
@pytest.mark.alone  # the latency deadline is about kms, not the other tests' load
def test_well_behaved_clients_are_answered_while_hostile_connections_stay_open(
    tmp_path: Path,
) -> None:
    raise_file_limit(1024)
    deployment = prepare_deployment(tmp_path)
    server = ServerProcess(deployment)
    target = Target(
        host="127.0.0.1",
        port=deployment.port,
        ca_cert=deployment.ca_cert,
        client_cert=deployment.client_cert,
        client_key=deployment.client_key,
    )
    load = HostileLoad(target, {kind: PER_KIND for kind in KINDS})
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
            key_id = create_key(client, key_id="slow-clients")["key_id"]
        load.start()
        before = load.wait_until_open(0.8, timeout=20)
        result = measure(target, key_id, MEASURE_SECONDS)
        after = load.open_connections()
    finally:
        load.stop()
        returncode = server.stop()
    output = server.output()

    for record in (result.keepalive, result.new_connection):
        assert not record.failures, record.failures[:5]
        assert len(record.latencies) >= 3, record
    assert result.worst < DEADLINE_SECONDS, (
        f"worst latency {result.worst:.3f} s (kept-alive {result.keepalive.worst:.3f} s, "
        f"new connections {result.new_connection.worst:.3f} s)"
    )
    # The attack was really there, all along the measurement.
    for seen in (before, after):
        assert sum(seen.values()) >= 0.7 * PER_KIND * len(KINDS), seen
    assert load.opened_total.value >= PER_KIND * len(KINDS)
    assert returncode == 0, output
    assert "Traceback" not in output, output
    # Slow bodies are dropped with a log line.
    assert "request body from ip=127.0.0.1 dropped" in output
