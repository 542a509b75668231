"""Measure kms under the full hostile-client mix (issue 6): not a test, a figure.

Starts a private kms (dev certificates, a fresh database, gunicorn on 127.0.0.1 only), measures
well-behaved clients unloaded, then again while 500 hostile connections stay open (a quarter
each: silent TCP, one byte of ClientHello, a head one byte per second, a body one byte per
second; each reopened when the server closes it), and prints the worst latency of the kept-alive
client and of the one opening a connection per request, and the throughput ratio
(loaded / unloaded). ``--unread N`` adds N connections that pipeline 40 requests for the
OpenAPI document each and never read the answers (``--connections 0 --unread 24``: only those).
The hostile connections present a certificate of their own, from the same CA (no policy is
configured, so it may do everything). Run from the repository root with the project's
interpreter:

    .venv/bin/python scripts/hostile_clients.py [--connections 500] [--unread 0] [--seconds 10]

Everything stops within about a minute; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.harness import (
    KMSClient,
    ServerProcess,
    create_key,
    prepare_deployment,
)
from tests.helpers.hostile import (
    MIX,
    HostileLoad,
    Measurement,
    Target,
    measure,
    raise_file_limit,
)
from tests.helpers.identities import issue_client_certificate


def cpu_seconds(pids: set[int], children_of: set[int] = frozenset()) -> float:
    """User + system CPU time of ``pids`` and of the children of ``children_of``, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry.name), int(fields[1])
        if pid in pids or parent in children_of:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def server_cpu_seconds(master_pid: int) -> float:
    """The gunicorn master and its workers."""
    return cpu_seconds({master_pid}, {master_pid})


def describe(name: str, result: Measurement) -> str:
    return (
        f"{name}: {result.answers} answers in {result.seconds:.1f} s = "
        f"{result.throughput:.1f}/s; worst latency kept-alive {result.keepalive.worst:.3f} s "
        f"({len(result.keepalive.latencies)} requests, {len(result.keepalive.failures)} failed), "
        f"new connection per request {result.new_connection.worst:.3f} s "
        f"({len(result.new_connection.latencies)} requests, "
        f"{len(result.new_connection.failures)} failed)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--unread", type=int, default=0, help="connections that never read")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--extra-clients", type=int, default=2, help="counting kept-alive clients")
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=0,
        help="nice value for the attacking processes (their CPU is not the server's to lose)",
    )
    args = parser.parse_args()
    raise_file_limit(4 * args.connections + 1024)

    with tempfile.TemporaryDirectory(prefix="kms-hostile-") as directory:
        deployment = prepare_deployment(Path(directory))
        server = ServerProcess(deployment)
        attacker_cert, attacker_key = issue_client_certificate(deployment, "attacker", "attacker")
        target = Target(
            "127.0.0.1",
            deployment.port,
            deployment.ca_cert,
            deployment.client_cert,
            deployment.client_key,
            attacker_cert,
            attacker_key,
        )
        per_kind = args.connections // len(MIX)
        counts = {kind: per_kind for kind in MIX}
        counts["unread"] = args.unread
        load = HostileLoad(target, counts, nice=args.attacker_nice)
        try:
            with closing(KMSClient(deployment)) as client:
                server.wait_until_serving(client)
                key_id = create_key(client, key_id="hostile-bench")["key_id"]
            master = server.process.pid
            cpu = server_cpu_seconds(master)
            client_cpu = cpu_seconds({os.getpid()})
            unloaded = measure(target, key_id, args.seconds, args.extra_clients)
            unloaded_cpu = server_cpu_seconds(master) - cpu
            client_cpu = cpu_seconds({os.getpid()}) - client_cpu
            print(describe("unloaded", unloaded), flush=True)
            print(
                f"CPU while unloaded: server {unloaded_cpu:.1f} s, "
                f"measuring clients {client_cpu:.1f} s",
                flush=True,
            )
            load.start()
            before = load.wait_until_open(0.9, timeout=60)
            print(f"hostile connections open before measuring: {before}", flush=True)
            sampling = threading.Event()
            sampling.set()
            sampler = load.sample_while(sampling)
            attackers = {process.pid for process in load.processes}
            cpu = server_cpu_seconds(master)
            attacker_cpu = cpu_seconds(attackers)
            client_cpu = cpu_seconds({os.getpid()})
            loaded = measure(target, key_id, args.seconds, args.extra_clients)
            loaded_cpu = server_cpu_seconds(master) - cpu
            attacker_cpu = cpu_seconds(attackers) - attacker_cpu
            client_cpu = cpu_seconds({os.getpid()}) - client_cpu
            sampling.clear()
            sampler.join()
            after = load.open_connections()
            print(f"hostile connections open after measuring: {after}", flush=True)
            print(f"hostile connections opened in all: {load.opened_total.value}", flush=True)
            samples = load.samples
            print(
                f"hostile connections open while measuring: min {min(samples)}, "
                f"mean {sum(samples) / len(samples):.0f}, max {max(samples)} "
                f"({len(samples)} samples)",
                flush=True,
            )
            print(describe("loaded", loaded), flush=True)
            print(
                f"CPU while loaded: server {loaded_cpu:.1f} s, attackers {attacker_cpu:.1f} s, "
                f"measuring clients {client_cpu:.1f} s",
                flush=True,
            )
        finally:
            load.stop()
            server.stop()
        log = server.output()
    print(f"slow bodies dropped (log lines): {log.count('request body from ip=')}")
    print(f"tracebacks in the server log: {log.count('Traceback')}")
    print(f"worst latency under load: {loaded.worst:.3f} s (goal: under 1 s)")
    ratio = loaded.throughput / unloaded.throughput
    print(f"throughput ratio loaded/unloaded: {ratio:.2f} (goal: at least 0.5)")
    failures = loaded.keepalive.failures + loaded.new_connection.failures
    return 0 if loaded.worst < 1.0 and ratio >= 0.5 and not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
