"""The walkthrough of the README and docs/api.md, run top to bottom as a reader runs it.

The documents promise that, on a fresh ``make run``, their examples run in order and print what
they show. This test takes every ``bash`` and ``python`` block of the README's "Try it" section
and of docs/api.md from its "Walkthrough" on, in order, and runs them against a fresh server
started as ``make run`` starts it: ``config/config.dev.yaml`` unchanged but for the port, in a
directory laid out as a checkout after ``make run`` (``./secrets`` from ``kms dev-certs``,
``./data``, ``.venv``, ``README.md``).

What a block says, and how it is checked:

- A shell command (a line, with its backslash continuations) is followed by the lines it prints,
  each under ``# `` (a line that goes on with more spaces after ``#`` continues the one above),
  or by one ``   # ...`` comment on its own line. Its output must match that text entirely;
  ``...`` stands for anything (times, ciphertexts, random values, the fields not shown). A
  command that shows nothing must print nothing and exit 0.
- ``<the X above>`` in a command is the placeholder the documents explain: the value of field X
  in the latest answer that had one, as a reader would paste it.
- A ``python`` block is saved to a file and run with ``.venv/bin/python``; it must exit 0 (its
  ``assert`` lines are its checks).

The only changes a command undergoes: ``localhost:8080`` becomes this server's port (the kms
client commands get it through ``KMS_CLIENT_URL``, as the documents allow), and placeholders are
filled. Every command runs with ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` and ``SSL_CERT_FILE``
naming the system's CA bundle, as on many corporate machines: the examples name their CA
explicitly, and that must win.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from kms.devcerts import write_dev_certificates
from tests.helpers.harness import (
    COMMAND_TIMEOUT_SECONDS,
    Deployment,
    ServerProcess,
    clean_environment,
    free_port,
    run_kms,
)
from tests.helpers.harness import KMSClient as ProbeClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("curl"),
    pytest.mark.needs("openssl"),
    pytest.mark.needs("jq"),
]

ROOT = Path(__file__).parents[2]
#: (document, the heading the walkthrough starts at, the heading it stops before or None)
DOCUMENTS = [
    (ROOT / "README.md", "## Try it", "## What else it does"),
    (ROOT / "docs" / "api.md", "## Walkthrough", None),
]
PORT = "localhost:8080"
PLACEHOLDER = re.compile(r"<the (\w+) above>")
INLINE_SHOWN = re.compile(r"^(?P<command>.*?\S)\s{2,}# (?P<shown>.+)$")
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Step:
    where: str  # document:line, for the failure message
    language: str  # "bash" or "python"
    code: str
    shown: str | None = None  # bash only: what the document shows it prints


def blocks(document: Path, start: str, stop: str | None) -> Iterator[tuple[int, str, str]]:
    """(line number, language, code) of each fenced block between the two headings."""
    lines = document.read_text(encoding="utf-8").splitlines()
    first = lines.index(start)
    last = lines.index(stop) if stop is not None else len(lines)
    index = first
    while index < last:
        fence = re.fullmatch(r"```(\w*)", lines[index])
        if fence is None:
            index += 1
            continue
        end = lines.index("```", index + 1)
        yield index + 2, fence.group(1), "\n".join(lines[index + 1 : end])
        index = end + 1


def bash_steps(where: str, line_number: int, code: str) -> Iterator[Step]:
    logical: list[tuple[int, str]] = []
    for offset, line in enumerate(code.splitlines()):
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1] + "\n" + line)
        elif line.strip():
            logical.append((line_number + offset, line))
    steps: list[Step] = []
    for number, line in logical:
        if line.startswith("#"):
            assert steps, f"{where}:{number}: a # line before any command: {line!r}"
            text = line[1:]
            previous = steps[-1]
            if text.startswith("  "):  # continues the shown line above
                assert previous.shown is not None, f"{where}:{number}"
                steps[-1] = Step(
                    previous.where, "bash", previous.code, previous.shown + text.strip()
                )
            else:
                assert previous.shown is None, f"{where}:{number}: a second answer for one command"
                steps[-1] = Step(previous.where, "bash", previous.code, text.strip())
            continue
        inline = INLINE_SHOWN.match(line) if "\n" not in line else None
        if inline and not line.lstrip().startswith("kms_curl() {"):
            steps.append(Step(f"{where}:{number}", "bash", inline["command"], inline["shown"]))
        else:
            steps.append(Step(f"{where}:{number}", "bash", line))
    yield from steps


def walkthrough() -> list[Step]:
    steps: list[Step] = []
    for document, start, stop in DOCUMENTS:
        where = str(document.relative_to(ROOT))
        for line_number, language, code in blocks(document, start, stop):
            if language == "bash":
                steps.extend(bash_steps(where, line_number, code))
            elif language == "python":
                steps.append(Step(f"{where}:{line_number}", "python", code))
    return steps


def pattern(shown: str) -> re.Pattern[str]:
    """``shown`` as a pattern of the whole output: ``...`` stands for anything."""
    return re.compile(".*".join(re.escape(part) for part in shown.split("...")), re.DOTALL)


# -- the checkout and its server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A directory as ``make run`` leaves a checkout, and the port its server serves on."""
    directory = tmp_path_factory.mktemp("checkout")
    write_dev_certificates(directory / "secrets")
    (directory / ".venv").symlink_to(Path(sys.executable).parents[1], target_is_directory=True)
    shutil.copy(ROOT / "README.md", directory / "README.md")
    port = free_port()
    dev = (ROOT / "config" / "config.dev.yaml").read_text(encoding="utf-8")
    assert re.search(r"^  port: +8080$", dev, re.MULTILINE), "config.dev.yaml serves on 8080"
    config = directory / "config.yaml"
    config.write_text(re.sub(r"^  port: +8080$", f"  port: {port}", dev, flags=re.MULTILINE))
    init = run_kms("init", config=config, cwd=directory)
    assert init.returncode == 0, init.stderr
    # The harness's probe reads the deployment's files from its directory.
    for name in ("ca.pem", "client.crt", "client.key"):
        (directory / name).symlink_to(directory / "secrets" / name)
    deployment = Deployment(directory=directory, port=port)
    server = ServerProcess(deployment)
    probe = ProbeClient(deployment)
    try:
        server.wait_until_serving(probe)
        yield directory, port
    finally:
        probe.close()
        returncode = server.stop()
    assert returncode == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def environment(port: int) -> dict[str, str]:
    environ = clean_environment()
    environ["NO_PROXY"] = environ["no_proxy"] = "*"
    environ["KMS_CLIENT_URL"] = f"https://localhost:{port}"
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        environ[name] = SYSTEM_CA_BUNDLE
    return environ


def fill_placeholders(code: str, answers: list[Any], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        field = match.group(1)
        for answer in reversed(answers):
            if isinstance(answer, dict) and isinstance(answer.get(field), str):
                return str(answer[field])
        pytest.fail(f"{where}: no answer above has a {field!r} for {match.group(0)}")

    return PLACEHOLDER.sub(value, code)


# -- the tests ----------------------------------------------------------------------------------


def test_the_walkthrough_shows_an_answer_for_every_call() -> None:
    steps = walkthrough()
    assert len(steps) > 50, len(steps)
    for step in steps:
        answers_on_screen = not re.search(r"\s[|>]\s", step.code)  # not piped or redirected
        if step.language == "bash" and re.search(r"\bkms_curl\s", step.code) and answers_on_screen:
            assert step.shown is not None, f"{step.where}: no answer shown for {step.code!r}"
        if step.language == "bash":
            for placeholder in PLACEHOLDER.findall(step.code):
                assert placeholder in ("ciphertext", "signature", "mac"), step.where


def test_the_python_examples_need_only_what_make_run_installs() -> None:
    """``make run`` installs kms and its runtime dependencies, without extras."""
    installed: set[str] = set()
    pending = ["kms"]
    while pending:
        name = pending.pop()
        if name in installed:
            continue
        installed.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name.lower())
    providers = importlib.metadata.packages_distributions()
    for step in walkthrough():
        if step.language != "python":
            continue
        for node in ast.walk(ast.parse(step.code)):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for module in (name.split(".")[0] for name in names):
                if module in sys.stdlib_module_names:
                    continue
                distributions = {d.lower() for d in providers.get(module, [])}
                assert distributions & installed, (
                    f"{step.where}: {module} is not installed by make run"
                )


def test_the_walkthrough_runs_in_order_and_prints_what_it_shows(
    checkout: tuple[Path, int],
) -> None:
    directory, port = checkout
    environ = environment(port)
    definitions: list[str] = []  # shell functions defined so far (the kms_curl helper)
    answers: list[Any] = []
    failures: list[str] = []
    for step in walkthrough():
        code = fill_placeholders(step.code.replace(PORT, f"localhost:{port}"), answers, step.where)
        if step.language == "python":
            script = directory / "example.py"
            script.write_text(code, encoding="utf-8")
            argv = [str(directory / ".venv" / "bin" / "python"), str(script)]
        else:
            argv = ["bash", "-c", "\n".join([*definitions, code])]
        result = subprocess.run(
            argv,
            cwd=directory,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # both, as a terminal shows them
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
        output = result.stdout.rstrip("\n")
        if step.language == "bash" and re.match(r"^\w+\(\) \{", step.code):
            definitions.append(step.code)
        try:
            answers.append(json.loads(output))
        except ValueError:
            answers.append(output)
        if result.returncode != 0:
            failures.append(f"{step.where}: exit {result.returncode}: {code}\n{output}")
        elif step.shown is None and output and step.language == "bash":
            failures.append(f"{step.where}: printed what the document does not show: {output}")
        elif step.shown is not None and not pattern(step.shown).fullmatch(output):
            failures.append(f"{step.where}: {code}\n  shown:   {step.shown}\n  printed: {output}")
    assert not failures, f"{len(failures)} steps differ:\n" + "\n".join(failures)
