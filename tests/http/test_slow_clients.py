"""Clients that hold connections open without finishing a request cannot take kms down.

While about 100 hostile connections stay open (silent TCP, one byte of ClientHello, a head or a
body sent one byte per second), a client on a kept-alive connection and one opening a new
connection per request get every answer. With gunicorn's plain gthread worker (2 workers x 4
threads) the hostile connections hold every request thread and these requests time out (30 s
each). How fast the answers come under attack is measured by scripts/hostile_clients.py (README,
Slow and hostile clients), not asserted here.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers.harness import (
    KMSClient,
    ServerProcess,
    create_key,
    prepare_deployment,
)
from tests.helpers.hostile import (
    MIX,
    HostileLoad,
    Target,
    raise_file_limit,
    send_requests,
)

PER_KIND = 25
REQUESTS_EACH = 10


@pytest.mark.slow
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
    load = HostileLoad(target, {kind: PER_KIND for kind in MIX})
    try:
        with closing(KMSClient(deployment)) as client:
            server.wait_until_serving(client)
            key_id = create_key(client, key_id="slow-clients")["key_id"]
        load.start()
        before = load.wait_until_open(0.8, timeout=20)
        results = [send_requests(target, key_id, REQUESTS_EACH)]
        # Again once kms has begun dropping slow bodies, which the attackers reopen at once.
        server.wait_for_log("request body from ip=127.0.0.1 dropped")
        results.append(send_requests(target, key_id, REQUESTS_EACH))
        after = load.open_connections()
    finally:
        load.stop()
        returncode = server.stop()
    output = server.output()

    for result in results:
        for record in (result.keepalive, result.new_connection):
            assert not record.failures, record.failures[:5]
        assert result.answers == 2 * REQUESTS_EACH, result
    # The attack was really there, all along.
    for seen in (before, after):
        assert sum(seen.values()) >= 0.7 * PER_KIND * len(MIX), seen
    assert load.opened_total.value >= PER_KIND * len(MIX)
    assert returncode == 0, output
    assert "Traceback" not in output, output
