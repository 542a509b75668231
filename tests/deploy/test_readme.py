"""The README's three-request session, run as printed against a real server.

The README promises that, with ``make run`` serving, each command of its "Try it" session prints
what follows it under ``#``. The session is taken from the README itself and run with bash, one
command at a time, in a directory whose ``./secrets`` is this server's, against this server's
port, under a key id of its own (the server is shared). The README's ``<the ciphertext above>``
becomes the ciphertext the previous command printed, as a reader would paste it. Each answer
must hold every field the README's line shows, with that value: a string ending in ``...`` is a
prefix, and a lone ``...`` any value.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.harness import (
    PROCESS_TIMEOUT_SECONDS,
    Deployment,
    KMSClient,
    clean_environment,
    expect_no_content,
    unique_key_id,
)

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"
SECTION = "## Try it"
#: What the README's session uses, and what this test runs it with instead.
PORT = "localhost:8080"
KEY_ID = "device123"
PASTED = "<the ciphertext above>"
#: A field the README shows, as `"name":value`; the value is JSON or a string ending in "...".
SHOWN_FIELD = re.compile(r'"(\w+)":("[^"]*"|-?\d+|true|false|null)')


@dataclass(frozen=True)
class Step:
    command: str
    shown: str  # the README's line after the command, without its "# "


def readme_session() -> tuple[str, list[Step]]:
    """The session's shell helper and its commands, each with the line the README shows."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"the README has no {SECTION!r} section"
    block = text.split(SECTION, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    logical: list[str] = []  # a command continued with a backslash is one line, as bash reads it
    for line in block.splitlines():
        if logical and logical[-1].endswith("\\"):
            logical[-1] += "\n" + line
        elif line.strip():
            logical.append(line)
    helper = [line for line in logical if line.startswith("kms_curl() {")]
    assert len(helper) == 1, logical
    steps = []
    for index, line in enumerate(logical):
        if line.startswith("kms_curl -"):
            following = logical[index + 1] if index + 1 < len(logical) else ""
            assert following.startswith("# {"), f"no answer shown after {line!r}"
            steps.append(Step(command=line, shown=following.removeprefix("# ")))
    return helper[0], steps


def check_shown_fields(shown: str, answer: dict[str, Any]) -> None:
    fields = SHOWN_FIELD.findall(shown)
    assert len(fields) >= 3, f"the README shows too little to check: {shown}"
    for name, value in fields:
        assert name in answer, (name, shown, answer)
        if value.startswith('"') and value.endswith('..."'):
            prefix = value[1:-4]
            assert isinstance(answer[name], str), (name, answer)
            assert answer[name].startswith(prefix), (name, prefix, answer)
        else:
            assert answer[name] == json.loads(value), (name, value, answer)


def test_the_readme_has_a_three_request_session() -> None:
    _helper, steps = readme_session()
    assert len(steps) == 3, [step.command for step in steps]
    assert [PASTED in step.command for step in steps] == [False, False, True]


@pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("bash") is None, reason="no curl or bash"
)
def test_the_readme_session_prints_what_the_readme_shows(
    client: KMSClient, deployment: Deployment, tmp_path: Path
) -> None:
    helper, steps = readme_session()
    (tmp_path / "secrets").symlink_to(deployment.directory, target_is_directory=True)
    key_id = unique_key_id("readme")
    environ = clean_environment()
    environ["NO_PROXY"] = environ["no_proxy"] = "*"  # localhost, never through a proxy
    previous: dict[str, Any] = {}
    try:
        for step in steps:
            command = step.command.replace(PORT, f"localhost:{deployment.port}")
            command = command.replace(KEY_ID, key_id)
            if PASTED in command:
                command = command.replace(PASTED, previous["ciphertext"])
            result = subprocess.run(
                ["bash", "-c", f"{helper}\n{command}"],
                cwd=tmp_path,
                env=environ,
                capture_output=True,
                text=True,
                timeout=PROCESS_TIMEOUT_SECONDS,
                check=False,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            previous = json.loads(result.stdout)
            check_shown_fields(step.shown.replace(KEY_ID, key_id), previous)
    finally:
        response = client.delete(f"/v1/kms/keys/{key_id}")
        if response.status_code != 404:  # the first command failed: nothing to clean up
            expect_no_content(response)
