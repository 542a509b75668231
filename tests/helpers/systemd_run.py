"""A stand-in for ``systemd-run``, for hosts where systemd is not init: what systemd does with
the options ``deploy/systemd/kms-admin`` passes, done by hand.

Run as a script: ``python systemd_run.py [OPTIONS] COMMAND [ARGUMENTS]``. For ``--unit=NAME``
it makes the credentials directory ``/run/credentials/NAME.service`` holding a copy (mode 0400)
of each ``-p LoadCredential=ID:PATH`` and names it in ``$CREDENTIALS_DIRECTORY``, sets each
``-E NAME=VALUE`` in an environment without the caller's ``KMS_*`` variables, changes to
``-p WorkingDirectory=``, runs the command and exits with its status. It does not switch users
(``--uid``, ``--gid``) nor apply other properties. Every path of the host layout (``/etc/kms``,
``/var/...``, ``/run/...``) is taken under ``$HOST_ROOT``, and ``/opt/kms/venv/bin/kms`` is
``$KMS``; each call's arguments are appended, one JSON line each, to the file ``$CALLS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ["HOST_ROOT"])
INSTALLED_KMS = "/opt/kms/venv/bin/kms"
IGNORED = ("--quiet", "--wait", "--collect", "--pty", "--pipe", "--uid=kms", "--gid=kms")


def on_host(path: str) -> str:
    if path.startswith(("/etc/kms", "/var/", "/run/")):
        return str(ROOT / path.lstrip("/"))
    return path


def main(arguments: list[str]) -> int:
    with open(os.environ["CALLS"], "a", encoding="utf-8") as calls:
        calls.write(json.dumps(arguments) + "\n")
    properties: list[tuple[str, str]] = []
    environment: dict[str, str] = {}
    unit = "run-stand-in"
    while arguments and arguments[0].startswith("-"):
        option = arguments.pop(0)
        if option in ("-p", "-E"):
            name, _, setting = arguments.pop(0).partition("=")
            if option == "-p":
                properties.append((name, setting))
            else:
                environment[name] = setting
        elif option.startswith("--unit="):
            unit = option.split("=", 1)[1]
        elif option not in IGNORED:
            sys.exit(f"systemd-run stand-in: unexpected option {option}")
    credentials = Path(on_host(f"/run/credentials/{unit}.service"))
    credentials.mkdir(parents=True, mode=0o700)
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ.update({name: on_host(value) for name, value in environment.items()})
    environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    cwd = None
    try:
        for name, setting in properties:
            if name == "LoadCredential":
                credential, _, source = setting.partition(":")
                shutil.copy(on_host(source), credentials / credential)
                (credentials / credential).chmod(0o400)
            elif name == "WorkingDirectory":
                cwd = on_host(setting)
        command = [os.environ["KMS"] if arguments[0] == INSTALLED_KMS else arguments[0]]
        command += [on_host(argument) for argument in arguments[1:]]
        return subprocess.run(command, env=environ, cwd=cwd, check=False).returncode
    finally:
        shutil.rmtree(credentials)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
