"""newman runs the Postman collection against a live mTLS server, twice in a row.

newman comes from npm: ``npm ci --prefix deploy/postman`` (``.ci/run`` does it) installs the
pinned version into deploy/postman/node_modules; a ``newman`` on PATH works too. Without either,
the test is skipped and says so (in CI, where `.ci/run` installs it, it fails).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.harness import ServerProcess
from tests.helpers.machine import unavailable

pytestmark = pytest.mark.slow
POSTMAN = Path(__file__).parents[2] / "deploy" / "postman"
LOCAL_NEWMAN = POSTMAN / "node_modules" / ".bin" / "newman"
NEWMAN = str(LOCAL_NEWMAN) if LOCAL_NEWMAN.is_file() else shutil.which("newman")
NEWMAN_TIMEOUT_SECONDS = 300
#: Two per request at least (status and body), over more than 25 requests.
MIN_ASSERTIONS = 50


@pytest.mark.needs("node")
def test_newman_passes_the_collection_twice_on_the_same_server(server: ServerProcess) -> None:
    if NEWMAN is None:
        unavailable("newman is not installed: run `npm ci --prefix deploy/postman` (.ci/run does)")
    deployment = server.deployment
    command = [
        str(NEWMAN),
        "run",
        str(POSTMAN / "kms.postman_collection.json"),
        "--environment",
        str(POSTMAN / "kms.postman_environment.json"),
        "--env-var",
        f"baseUrl={deployment.base_url}",
        "--ssl-client-cert",
        str(deployment.client_cert),
        "--ssl-client-key",
        str(deployment.client_key),
        "--ssl-extra-ca-certs",
        str(deployment.ca_cert),
        "--color",
        "off",
        "--disable-unicode",
    ]
    for run in (1, 2):
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=NEWMAN_TIMEOUT_SECONDS,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"newman run {run} failed:\n{output}"
        # The summary table's row: assertions executed, and none failed.
        row = re.search(r"assertions\W+(\d+)\W+(\d+)", output)
        assert row, output
        assert (int(row.group(1)) >= MIN_ASSERTIONS, int(row.group(2))) == (True, 0), output
