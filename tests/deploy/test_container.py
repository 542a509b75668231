"""deploy/Dockerfile, built and run with podman: the image docs/operations.md describes.

The image is built as the document says (``make wheelhouse``, then a build from the repository
root) with the build's network switched off, from a build context holding what the Dockerfile
copies; then a container runs it as deploy/docker-compose.yml runs it (``kms init --if-needed``,
then ``kms serve``) with the dev certificates and a passphrase mounted under /run/secrets, and
answers an encryption and its decryption over mutual TLS. The container shares the host's
network (no bridge or port mapping, which need more of the machine than podman itself), bound to
127.0.0.1 on a free port. Podman runs with ``cgroup_manager = "cgroupfs"``, ``default_ulimits =
[]`` and the file events logger (its own ``containers.conf``), which work where systemd is not
init and where raising a limit is not allowed.

Where no registry is reachable, the base image comes from scripts/debian_base_image.sh (a
debootstrap'd bookworm under the registry's name); .ci/run makes it once, and podman's store
keeps it between runs. Without podman or the base image, the test is skipped (failed in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kms.devcerts import write_dev_certificates
from tests.helpers.harness import (
    COMMAND_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    b64,
    expect_json,
    free_port,
    unb64,
    wait_until,
)
from tests.helpers.machine import unavailable

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/kms-test:latest"
#: What deploy/Dockerfile copies from the build context, and the file that keeps the rest out.
CONTEXT = ("pyproject.toml", "README.md", "LICENSE", "kms", "migrations", "config", "deploy",
           ".dockerignore")  # fmt: skip
CONTAINERS_CONF = """[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
BUILD_SECONDS = 1800  # a limit that turns a hang into a failure, not a measurement


def podman(
    *arguments: str, timeout: float = COMMAND_TIMEOUT_SECONDS, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (arguments, result.stdout, result.stderr)
    return result


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """podman, configured for this machine, with the base image in its store."""
    if shutil.which("podman") is None:
        unavailable("podman is not installed (apt-get install podman buildah runc; .ci/run does)")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF, encoding="utf-8")
    previous = os.environ.get("CONTAINERS_CONF")
    os.environ["CONTAINERS_CONF"] = str(conf)
    try:
        info = podman("info", check=False)
        if info.returncode != 0:
            unavailable(f"podman cannot run here: {info.stderr.strip().splitlines()[-1:]}")
        if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
            unavailable(
                f"no {BASE_IMAGE} in podman's store and no registry was tried: "
                "scripts/debian_base_image.sh makes one (.ci/run does)"
            )
        yield
    finally:
        if previous is None:
            del os.environ["CONTAINERS_CONF"]
        else:
            os.environ["CONTAINERS_CONF"] = previous


@pytest.fixture(scope="module")
def image(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/Dockerfile built as docs/operations.md says, with ``KMS_UID=$(id -u)``."""
    context = tmp_path_factory.mktemp("context")
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, context / name)
    wheelhouse = subprocess.run(
        [str(ROOT / "scripts" / "wheelhouse.sh"), sys.executable,
         str(context / "build" / "wheelhouse")],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
    )  # fmt: skip
    assert wheelhouse.returncode == 0, wheelhouse.stderr
    before = podman("image", "ls", "--quiet", "--filter", f"reference={IMAGE}").stdout.split()
    podman(
        "build",
        "--network=none",  # the build installs from the wheelhouse, never from the network
        "--pull=never",
        "--file=deploy/Dockerfile",
        f"--build-arg=KMS_UID={os.getuid()}",
        f"--build-arg=KMS_GID={os.getgid()}",
        f"--tag={IMAGE}",
        str(context),
        timeout=BUILD_SECONDS,
    )
    # The image this build replaced, if any (the layers both share stay, under the new tag).
    built = podman("image", "inspect", "--format={{.Id}}", IMAGE).stdout.strip()
    for previous in before:
        if not built.startswith(previous):
            podman("image", "rm", previous, check=False)
    yield IMAGE


def container_uid(image: str) -> int:
    return int(podman("run", "--rm", image, "id", "-u").stdout)


def test_the_image_runs_as_a_non_root_user_whatever_the_host_uid(image: str) -> None:
    uid = container_uid(image)
    assert uid != 0
    assert uid == (os.getuid() or 10001)


@pytest.fixture
def secrets(image: str, tmp_path: Path) -> Deployment:
    """The dev certificates; the four the container reads, owned by its user, mode 0400."""
    everything = tmp_path / "dev-certs"
    write_dev_certificates(everything)
    mounted = tmp_path / "secrets"
    mounted.mkdir()
    uid = container_uid(image)
    for name in ("server.crt", "server.key", "ca.pem", "master.key"):
        shutil.copy(everything / name, mounted / name)
        (mounted / name).chmod(0o400)
        os.chown(mounted / name, uid, uid)
    mounted.chmod(0o500)
    os.chown(mounted, uid, uid)
    return Deployment(directory=everything, port=free_port())


def test_the_image_initialises_serves_mtls_and_stops_cleanly(
    image: str, secrets: Deployment, tmp_path: Path
) -> None:
    name = f"kms-test-{uuid.uuid4().hex[:12]}"
    podman(
        "run",
        "--detach",
        f"--name={name}",
        "--network=host",
        "--env=KMS_SERVER_HOST=127.0.0.1",
        f"--env=KMS_SERVER_PORT={secrets.port}",
        f"--volume={tmp_path / 'secrets'}:/run/secrets:ro",
        f"--volume={ROOT / 'config' / 'policy.example.yaml'}:/etc/kms/policy.yaml:ro",
        image,
        # deploy/docker-compose.yml's command
        "sh",
        "-c",
        "kms init --if-needed && exec kms serve",
    )
    client = KMSClient(secrets)
    try:

        def serving() -> bool:
            try:
                return client.get("/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                state = podman("inspect", "--format={{.State.Running}}", name).stdout.strip()
                logs = podman("logs", name)
                assert state == "true", logs.stdout + logs.stderr
                return False

        wait_until(serving, "the container to serve", seconds=120)
        key_id = f"container-{uuid.uuid4().hex[:8]}"
        expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
        sealed = expect_json(
            client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"hello")}),
            200,
        )
        opened = expect_json(
            client.post(
                "/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": sealed["ciphertext"]}
            ),
            200,
        )
        assert unb64(opened["plaintext"]) == b"hello"
        # PID 1 is tini (it forwards signals and reaps zombies), kms is not root.
        pid1 = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        assert pid1[0] == "/usr/bin/tini", pid1
        assert podman("exec", name, "id", "-u").stdout.strip() != "0"
    finally:
        client.close()
        podman("stop", "--time=30", name, check=False)
        logs = podman("logs", name, check=False)
        exit_code = podman("inspect", "--format={{.State.ExitCode}}", name, check=False).stdout
        podman("rm", "--volumes", "--force", name, check=False)
    output = logs.stdout + logs.stderr
    assert "kms: initialised /var/lib/kms/prod.db" in output, output
    assert "Traceback" not in output, output
    assert exit_code.strip() == "0", output


def test_the_image_initialises_a_postgresql_database_once(
    image: str, secrets: Deployment, tmp_path: Path, postgres_url: str
) -> None:
    """deploy/docker-compose.yml's kms-init service, twice: the second start changes nothing."""
    outputs = []
    for _ in range(2):
        result = podman(
            "run",
            "--rm",
            "--network=host",
            f"--env=KMS_DATABASE_DSN={postgres_url}",
            f"--volume={tmp_path / 'secrets'}:/run/secrets:ro",
            f"--volume={ROOT / 'config' / 'policy.example.yaml'}:/etc/kms/policy.yaml:ro",
            image,
            "kms",
            "init",
            "--if-needed",
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
    assert "kms: initialised" in outputs[0], outputs
    assert "kms: initialised" not in outputs[1], outputs


def user_step() -> str:
    """The Dockerfile's RUN instruction that makes the user kms, as one shell script."""
    text = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    instructions = re.split(r"\n(?=[A-Z]+ )", re.sub(r"\\\n\s*", " ", text))
    (step,) = [line for line in instructions if line.startswith("RUN ") and "useradd" in line]
    return step.removeprefix("RUN ").strip()


@pytest.mark.parametrize(
    ("uid", "gid", "expected"),
    [
        ("0", "0", "10001 10001"),  # built by root: never root in the image
        ("1000", "100", "1000 100"),  # a group the image has (users)
        ("1000", "1000", "1000 1000"),
        ("65534", "65534", "65534 65534"),  # a uid the image has (nobody)
    ],
)
def test_the_user_step_makes_a_non_root_kms_user_for_any_host_ids(
    engine: None, uid: str, gid: str, expected: str
) -> None:
    """The step alone, in the base image, with the ids a host passes as build arguments."""
    result = podman(
        "run", "--rm", "--network=none", f"--env=KMS_UID={uid}", f"--env=KMS_GID={gid}",
        BASE_IMAGE, "sh", "-c", f'set -e; {user_step()}; echo "$(id -u kms) $(id -g kms)"; '
        'stat -c "%u %g %a" /var/lib/kms',
    )  # fmt: skip
    lines = result.stdout.split("\n")
    assert lines[0] == expected, result.stdout + result.stderr
    assert lines[1] == f"{expected} 700", result.stdout
