"""The passphrase prompt: with no passphrase file configured, ``kms init`` asks on the terminal.

The command runs on a real pseudo-terminal that is its controlling terminal, as in an operator's
shell; the test types the passphrase and checks that the terminal never echoed it.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

from kms.master import open_master_keyring
from kms.settings import Settings
from tests.helpers.harness import initialise_database
from tests.helpers.keystore import TEST_ITERATIONS, write_passphrase_file

PASSPHRASE = b"typed at the prompt 42"
PROMPT = b"kms master passphrase: "
TIMEOUT_SECONDS = 30


def _become_terminal_owner() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_terminal(
    args: list[str], cwd: Path, env: dict[str, str], answer: bytes, status: int = 0
) -> bytes:
    """Run ``args`` on a new pty, type ``answer`` + newline at the prompt, return all output;
    the command must exit with ``status``."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=_become_terminal_owner,  # getpass reads the controlling terminal
    )
    os.close(terminal)
    output = b""
    answered = False
    deadline = time.monotonic() + TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if not answered and PROMPT in output:
                os.write(controller, answer + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        process.wait(timeout=TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    assert answered, output
    assert process.returncode == status, output
    return output


def terminal_environment(config: Path) -> dict[str, str]:
    """This environment without any ``KMS_*`` override (no passphrase file can come from it),
    plus ``KMS_CONFIG``. PYTHONPATH and the rest pass through, so a checkout run by
    scripts/mutants.py is the code the child runs."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ["KMS_CONFIG"] = str(config)
    return environ


def test_init_asks_for_the_passphrase_without_echo(tmp_path: Path) -> None:
    database = tmp_path / "kms.db"
    config = tmp_path / "kms.yaml"
    # No kms.master_passphrase_file: the passphrase must come from the terminal.
    config.write_text(f'database:\n  dsn: "{database}"\n', encoding="utf-8")
    env = terminal_environment(config)
    kms = str(Path(sys.executable).with_name("kms"))

    output = run_on_terminal([kms, "init"], tmp_path, env, PASSPHRASE)

    assert PROMPT in output
    assert PASSPHRASE not in output  # the terminal did not echo it
    assert b"initialised" in output
    # What was typed became the passphrase: a file holding it opens the keystore.
    settings = Settings(
        database_dsn=str(database),
        master_passphrase_file=write_passphrase_file(tmp_path / "typed.key", PASSPHRASE),
        kdf_iterations=TEST_ITERATIONS,
    )
    open_master_keyring(settings).close()


def test_an_empty_passphrase_at_the_prompt_is_refused_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    """A bare Enter at the prompt is not a passphrase: ``kms init`` exits 1 naming it, and the
    database is not initialised (a later init with a real passphrase succeeds)."""
    database = tmp_path / "kms.db"
    config = tmp_path / "kms.yaml"
    config.write_text(f'database:\n  dsn: "{database}"\n', encoding="utf-8")
    env = terminal_environment(config)
    kms = str(Path(sys.executable).with_name("kms"))

    output = run_on_terminal([kms, "init"], tmp_path, env, b"", status=1)

    assert b"the passphrase is empty" in output
    assert b"initialised" not in output
    output = run_on_terminal([kms, "init"], tmp_path, env, PASSPHRASE)
    assert b"initialised" in output


def test_init_without_a_terminal_refuses_to_prompt(tmp_path: Path) -> None:
    """No passphrase file and stdin not a terminal (a service, a pipe): ``kms init`` exits 1
    saying so instead of waiting for a passphrase nobody can type; nothing is initialised.
    A session of its own, so that no controlling terminal is there to be opened either."""
    database = tmp_path / "kms.db"
    config = tmp_path / "kms.yaml"
    config.write_text(f'database:\n  dsn: "{database}"\n', encoding="utf-8")
    kms = str(Path(sys.executable).with_name("kms"))

    result = subprocess.run(
        [kms, "init"],
        cwd=tmp_path,
        env=terminal_environment(config),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        start_new_session=True,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert "stdin is not a terminal to prompt on" in result.stderr
    assert "initialised" not in result.stdout + result.stderr


def test_rekey_without_a_terminal_asks_for_the_new_passphrase_file(tmp_path: Path) -> None:
    """The configured passphrase file holds the current passphrase; the new one is typed or
    read from --new-passphrase-file. Without a terminal, ``kms rekey`` says that, and does not
    blame ``kms.master_passphrase_file``, which is set; the keystore still opens as before."""
    database = tmp_path / "kms.db"
    passphrase_file = write_passphrase_file(tmp_path / "master.key", PASSPHRASE)
    initialise_database(database, passphrase_file)
    before = database.read_bytes()
    config = tmp_path / "kms.yaml"
    config.write_text(
        f'database:\n  dsn: "{database}"\nkms:\n  master_passphrase_file: "{passphrase_file}"\n',
        encoding="utf-8",
    )
    kms = str(Path(sys.executable).with_name("kms"))

    result = subprocess.run(
        [kms, "rekey"],
        cwd=tmp_path,
        env=terminal_environment(config),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        start_new_session=True,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "kms: the new passphrase must be typed on a terminal (stdin is not one) or read from a "
        "file: pass --new-passphrase-file FILE\n"
    )
    assert database.read_bytes() == before
