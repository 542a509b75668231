"""deploy/Dockerfile built and run with podman, and deploy/docker-compose.yml run with
podman-compose: the image and the stack docs/operations.md describes.

The image is built as the document says (``make wheelhouse``, then a build from the repository
root) with the build's network switched off, from a build context holding what the Dockerfile
copies; then a container runs it as deploy/docker-compose.yml runs it (``kms init --if-needed``,
then ``kms serve``) with the dev certificates and a passphrase mounted under /run/secrets, and
answers an encryption and its decryption over mutual TLS. The container shares the host's
network (no bridge or port mapping, which need more of the machine than podman itself), bound to
127.0.0.1 on a free port. Podman runs with ``cgroup_manager = "cgroupfs"``, ``default_ulimits =
[]`` and the file events logger (its own ``containers.conf``), which work where systemd is not
init and where raising a limit is not allowed.

Then deploy/docker-compose.yml itself runs, with podman-compose, from a copy of the repository
with the dev certificates in secrets/: PostgreSQL, the one-shot kms-init, kms serving mTLS on the
published port, the stack brought down and up again (kms-init a no-op, the data kept), and two
passphrase failures; under a project name, image name and port of its own, so that it collides
with nothing another test or a developer runs, and torn down (containers, network, volumes, pod,
image) whatever happens.

Where no registry is reachable, the base image comes from scripts/debian_base_image.sh (a
debootstrap'd bookworm under the registry's name), and the compose file's PostgreSQL image from
scripts/postgres_image.sh (a stand-in under the official image's name); .ci/run makes both once,
and podman's store keeps them between runs. Without podman, the base image, the PostgreSQL image
or the CNI dnsname plugin, the tests that need them are skipped (failed in CI).
"""

from __future__ import annotations

import graphlib
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
import yaml

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
def context(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build context as ``make wheelhouse`` leaves the repository: what the Dockerfile copies,
    build/wheelhouse, and deploy/ (the compose file builds from here too)."""
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
    return context


@pytest.fixture(scope="module")
def image(context: Path) -> Iterator[str]:
    """deploy/Dockerfile built as docs/operations.md says, with ``KMS_UID=$(id -u)``."""
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
    mount_secrets(everything, tmp_path / "secrets", container_uid(image))
    return Deployment(directory=everything, port=free_port())


def mount_secrets(everything: Path, mounted: Path, uid: int) -> None:
    """The four files the container reads, from ``everything``, in a new directory ``mounted``
    owned by ``uid`` (mode 0500, the files 0400): the kms user's, as docs/operations.md says."""
    mounted.mkdir()
    for name in ("server.crt", "server.key", "ca.pem", "master.key"):
        shutil.copy(everything / name, mounted / name)
        (mounted / name).chmod(0o400)
        os.chown(mounted / name, uid, uid)
    mounted.chmod(0o500)
    os.chown(mounted, uid, uid)


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


# -- deploy/docker-compose.yml ------------------------------------------------------------------

POSTGRES_IMAGE = "docker.io/library/postgres:15-bookworm"  # the compose file's db
#: Where podman looks for CNI plugins (its default cni_plugin_dirs).
CNI_PLUGIN_DIRECTORIES = ("/usr/local/libexec/cni", "/usr/libexec/cni", "/usr/local/lib/cni",
                          "/usr/lib/cni", "/opt/cni/bin")  # fmt: skip
COMPOSE_SECONDS = 300  # a limit that turns a hang into a failure, not a measurement
#: gunicorn's own log lines ("[2026-01-01 00:00:00 +0000] [6] [INFO] Starting gunicorn 27.0.1").
GUNICORN_LOG = re.compile(r"^\[[\d: -]+ [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")


class Stack:
    """deploy/docker-compose.yml, run by podman-compose from ``tree`` (a copy of the repository
    laid out as the file expects: ../secrets, ../config, the build context) as the project
    ``project``, publishing kms on ``port``: nothing it makes (containers, network, volumes, the
    image) shares a name with another test's or with a developer's ``kms`` project."""

    def __init__(self, tree: Path, port: int) -> None:
        self.tree = tree
        self.port = port
        self.project = f"kms-test-{uuid.uuid4().hex[:12]}"
        self.image = f"localhost/{self.project}:latest"
        self.environment = {
            **os.environ,
            "KMS_UID": str(os.getuid()),
            "KMS_GID": str(os.getgid()),
            "KMS_PUBLISHED_PORT": str(port),
            "KMS_IMAGE": self.image,
        }

    def compose(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [podman_compose(), f"--project-name={self.project}",
             f"--file={self.tree / 'deploy' / 'docker-compose.yml'}", *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=COMPOSE_SECONDS,
            check=False,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, (arguments, result.stdout, result.stderr)
        return result

    def container(self, service: str) -> str:
        (name,) = podman(
            "ps", "--all", "--format={{.Names}}",
            f"--filter=label=com.docker.compose.project={self.project}",
            f"--filter=label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        return name

    def up(self) -> list[str]:
        """The file's services, each started (``up --detach --no-deps SERVICE``) in the order its
        ``depends_on`` gives and only once its dependencies meet the conditions it names, as
        Compose does; the services started, up to the first whose dependency failed.

        One ``up`` of the whole stack cannot do it with podman 4.3, Debian bookworm's: podman-
        compose ignores ``service_healthy`` before podman 4.6 (it says so), podman runs
        healthchecks only from systemd timers, and podman 4.3 refuses to start a container that
        requires an exited one-shot that requires a running container (``generating dependency
        graph``). So the healthcheck is run as the timer would run it, the one-shot's exit code
        is read, and each service is started without podman's own dependencies."""
        services = self.document()["services"]
        order = graphlib.TopologicalSorter(
            {name: set(service.get("depends_on", {})) for name, service in services.items()}
        ).static_order()
        started = []
        for service in order:
            for dependency, rule in services[service].get("depends_on", {}).items():
                if not self.meets(dependency, rule["condition"]):
                    return started
            self.compose("up", "--detach", "--no-deps", service)
            started.append(service)
        return started

    def meets(self, service: str, condition: str) -> bool:
        if condition == "service_healthy":
            name = self.container(service)
            wait_until(
                lambda: podman("healthcheck", "run", name, check=False).returncode == 0,
                f"{service}'s healthcheck",
                seconds=120,
                detail=lambda: self.logs(service),
            )
            return True
        if condition == "service_completed_successfully":
            return self.exit_code(service) == 0
        assert condition == "service_started", condition
        return self.running(service)

    def document(self) -> dict:
        text = (self.tree / "deploy" / "docker-compose.yml").read_text(encoding="utf-8")
        document = yaml.safe_load(text)
        assert isinstance(document, dict)
        return document

    def exit_code(self, service: str) -> int:
        name = self.container(service)
        podman("wait", name, timeout=COMPOSE_SECONDS)
        return int(podman("inspect", "--format={{.State.ExitCode}}", name).stdout)

    def running(self, service: str) -> bool:
        name = self.container(service)
        return podman("inspect", "--format={{.State.Running}}", name).stdout.strip() == "true"

    def logs(self, service: str) -> str:
        """What the service's container wrote, stdout and stderr in the order it wrote them."""
        return subprocess.run(
            ["podman", "logs", self.container(service)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        ).stdout

    def leftovers(self) -> list[str]:
        label = f"--filter=label=com.docker.compose.project={self.project}"
        found = [
            *podman("ps", "--all", "--quiet", label).stdout.split(),
            *podman("volume", "ls", "--quiet", label).stdout.split(),
            *podman("network", "ls", "--quiet", label).stdout.split(),
        ]
        if podman("pod", "exists", f"pod_{self.project}", check=False).returncode == 0:
            found.append(f"pod_{self.project}")
        images = podman("image", "ls", "--quiet", f"--filter=reference={self.image}")
        return found + images.stdout.split()

    def remove(self) -> None:
        """Containers, network and volumes (``down --volumes``), then the image it built."""
        self.compose("down", "--volumes", "--timeout=30", check=False)
        # By name: only the tag goes when the image is also another's (test_image's build).
        podman("image", "rm", self.image, check=False)


def podman_compose() -> str:
    beside = Path(sys.executable).with_name("podman-compose")  # the test dependency
    return str(beside) if beside.exists() else shutil.which("podman-compose") or "podman-compose"


@pytest.fixture
def stack(context: Path, image: str, tmp_path: Path) -> Iterator[Stack]:
    """The compose file's stack with the dev certificates in ../secrets, as ``make run`` leaves
    them; torn down (containers, network, volumes, image) whatever the test did."""
    if shutil.which(podman_compose()) is None:
        unavailable("podman-compose is not installed (make install: a test dependency)")
    backend = podman("info", "--format={{.Host.NetworkBackend}}").stdout.strip()
    if backend == "cni" and not any(Path(d, "dnsname").exists() for d in CNI_PLUGIN_DIRECTORIES):
        unavailable(
            "podman's CNI networks lack the dnsname plugin, which names the compose file's "
            "services on its network (apt-get install "
            "golang-github-containernetworking-plugin-dnsname; .ci/run does)"
        )
    if podman("image", "exists", POSTGRES_IMAGE, check=False).returncode != 0:
        unavailable(
            f"no {POSTGRES_IMAGE} in podman's store and no registry was tried: "
            "scripts/postgres_image.sh makes a stand-in (.ci/run does)"
        )
    write_dev_certificates(tmp_path / "dev-certs")
    secrets = context / "secrets"
    shutil.rmtree(secrets, ignore_errors=True)
    mount_secrets(tmp_path / "dev-certs", secrets, container_uid(image))
    stack = Stack(context, free_port())
    try:
        yield stack
    finally:
        stack.remove()
        shutil.rmtree(secrets, ignore_errors=True)
    assert stack.leftovers() == [], "podman-compose down --volumes left these behind"


def test_compose_initialises_postgresql_once_and_serves_mtls(stack: Stack, tmp_path: Path) -> None:
    """deploy/docker-compose.yml for real, with podman-compose. A passphrase too short: kms-init
    exits 1 with one line and kms is never started. The right one: kms-init (``kms init
    --if-needed``) initialises the database and exits 0, and kms serves mTLS on the published
    port. Down (the volumes kept) and up again: kms-init is a no-op, the key is still there and
    its old ciphertext still decrypts. Down and up with another passphrase: kms-init is still a
    no-op, kms stops with one line and never serves."""
    master_key = stack.tree / "secrets" / "master.key"
    passphrase = master_key.read_bytes()
    stack.compose("build")

    replace_secret(master_key, b"too short\n")
    assert stack.up() == ["db", "kms-init"]
    assert stack.exit_code("kms-init") == 1
    assert "passphrase" in one_line_failure(stack.logs("kms-init"))

    replace_secret(master_key, passphrase)  # the database was not written: kms-init again
    assert stack.up() == ["db", "kms-init", "kms"]
    assert stack.exit_code("kms-init") == 0, stack.logs("kms-init")
    # The same container's second run: its line follows the first run's.
    initialised = stack.logs("kms-init").splitlines()[-1]
    assert initialised == "kms: initialised postgresql+psycopg://kms:***@db:5432/kms"
    client = KMSClient(Deployment(directory=tmp_path / "dev-certs", port=stack.port))
    try:
        serve(stack, client)
        key_id = f"compose-{uuid.uuid4().hex[:8]}"
        expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
        sealed = expect_json(
            client.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"hello")}),
            200,
        )["ciphertext"]
        assert decrypt(client, key_id, sealed) == b"hello"

        stack.compose("down", "--timeout=30")
        client.close()
        assert stack.up() == ["db", "kms-init", "kms"]
        assert stack.exit_code("kms-init") == 0, stack.logs("kms-init")
        assert stack.logs("kms-init").strip() == ""  # already initialised: nothing done
        serve(stack, client)
        assert decrypt(client, key_id, sealed) == b"hello"
        assert "Traceback" not in stack.logs("kms")

        stack.compose("down", "--timeout=30")
        client.close()
        replace_secret(master_key, b"another passphrase, not the one that sealed it\n")
        assert stack.up() == ["db", "kms-init", "kms"]
        assert stack.exit_code("kms-init") == 0, stack.logs("kms-init")
        assert stack.exit_code("kms") == 1, stack.logs("kms")
        assert "wrong master passphrase" in one_line_failure(stack.logs("kms"))
        with pytest.raises(requests.ConnectionError):
            client.get("/healthz", timeout=5)
    finally:
        client.close()


def one_line_failure(output: str) -> str:
    """The one ``kms:`` line a failed start leaves; besides it, only gunicorn's own log lines
    ("Starting gunicorn"), no worker booted and no traceback."""
    assert "Traceback" not in output and "Booting worker" not in output, output
    lines = [line for line in output.splitlines() if not GUNICORN_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith("kms: "), output
    return lines[0]


def replace_secret(path: Path, content: bytes) -> None:
    """A secret file given new content, its owner and mode kept."""
    path.chmod(0o600)
    path.write_bytes(content)
    path.chmod(0o400)


def serve(stack: Stack, client: KMSClient) -> None:
    """Wait until kms answers on the published port, failing at once if its container exits."""

    def serving() -> bool:
        try:
            return client.get("/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            assert stack.running("kms"), stack.logs("kms")
            return False

    wait_until(serving, "kms to serve on the published port", seconds=120)


def decrypt(client: KMSClient, key_id: str, ciphertext: str) -> bytes:
    body = {"key_id": key_id, "ciphertext": ciphertext}
    return unb64(expect_json(client.post("/v1/kms/decrypt", json=body), 200)["plaintext"])
