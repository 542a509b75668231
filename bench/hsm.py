"""``--backend pkcs11``: a SoftHSM2 token in the run's temporary directory, sealing a copy of the
seeded keystore, so that kms serves on the ``pkcs11`` master-key backend.

The token is made with ``softhsm2-util`` (its own config and token directory, named by
``SOFTHSM2_CONF``, which every kms command and the server get), its AES key with ``kms hsm
init``, and the copy's root secret is moved onto it with ``kms rekey --to pkcs11``: the commands
an operator runs. Only the root secret is re-sealed, so the keys and the hot path are the same
as on the passphrase backend; no request calls the HSM (the root secret is unwrapped once in the
gunicorn master), so the ratio pkcs11 / passphrase should be 1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.load import BenchError
from bench.server import ServerOptions, environment, free_port, kms_command, write_config

#: Where Debian's libsofthsm2 puts the PKCS#11 module.
MODULE_PATHS = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)
TOKEN_LABEL = "kms-bench"  # noqa: S105 - a label, not a secret
KEY_LABEL = "kms-bench-root"


@dataclass(frozen=True)
class Token:
    config: Path
    module: Path
    pin_file: Path

    def master_key(self) -> tuple[tuple[str, str], ...]:
        return (
            ("backend", "pkcs11"),
            ("module", str(self.module)),
            ("token_label", TOKEN_LABEL),
            ("key_label", KEY_LABEL),
            ("pin_file", str(self.pin_file)),
        )

    def environment(self) -> tuple[tuple[str, str], ...]:
        return (("SOFTHSM2_CONF", str(self.config)),)


def softhsm_module() -> Path:
    if shutil.which("softhsm2-util") is None:
        raise BenchError("--backend pkcs11 needs SoftHSM2 (apt-get install softhsm2)")
    for path in MODULE_PATHS:
        if path.is_file():
            return path
    raise BenchError("softhsm2-util is installed but libsofthsm2.so is not where Debian puts it")


def make_token(directory: Path) -> Token:
    """A new token in ``directory``, its user PIN (random) in an owner-only file."""
    module = softhsm_module()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    pin = secrets.token_hex(16)
    pin_file = directory / "user.pin"
    pin_file.touch(mode=0o600)
    pin_file.write_text(pin + "\n", encoding="ascii")
    # Our own command with our own arguments; the PINs are throwaway, for this run's token.
    made = subprocess.run(  # noqa: S603
        [  # noqa: S607 - softhsm2-util from PATH, checked above
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(16),
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(config)},
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise BenchError(f"softhsm2-util --init-token failed: {made.stderr.strip()}")
    return Token(config=config, module=module, pin_file=pin_file)


def seal_with_token(tls_directory: Path, token: Token, options: ServerOptions) -> ServerOptions:
    """Move the root secret of ``options``' database (on the passphrase) onto ``token``'s key;
    the options of a server on the pkcs11 backend."""
    sealing = ServerOptions(
        database_dsn=options.database_dsn,
        passphrase_file=options.passphrase_file,
        master_key=tuple((name, value) for name, value in token.master_key() if name != "backend"),
        environment=token.environment(),
    )
    config = write_config(tls_directory, free_port(), sealing)
    for command in (["hsm", "init"], ["rekey", "--to", "pkcs11"]):
        done = subprocess.run(  # noqa: S603 - our command, our arguments
            [kms_command(), *command],
            env=environment(config, sealing),
            cwd=tls_directory,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"kms {' '.join(command)} failed: {done.stderr.strip()}")
    return ServerOptions(
        database_dsn=options.database_dsn,
        passphrase_file=options.passphrase_file,
        workers=options.workers,
        threads=options.threads,
        master_key=token.master_key(),
        environment=token.environment(),
    )
