"""A real SoftHSM2 token for the ``pkcs11`` backend's tests, made in a temporary directory.

SoftHSM2 reads its configuration from the file ``SOFTHSM2_CONF`` names, when the library is
initialised: each token here has a config and a token directory of its own, and the tests set
``SOFTHSM2_CONF`` (monkeypatch, so it is undone after each test; a ``kms`` process started by
the test inherits it). Without ``softhsm2`` or python-pkcs11 the tests are skipped, and fail in
CI (tests/helpers/machine.py), whose ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kms.settings import Settings
from tests.helpers.keystore import TEST_ITERATIONS
from tests.helpers.machine import unavailable

#: Where Debian's libsofthsm2 puts the module (the first is the package's own path).
MODULE_PATHS = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)
#: OpenSC's PKCS#11 spy: a module that logs every call, then passes it to ``PKCS11SPY``.
SPY_PATHS = (
    Path("/usr/lib/x86_64-linux-gnu/pkcs11-spy.so"),
    Path("/usr/lib/aarch64-linux-gnu/pkcs11-spy.so"),
    Path("/usr/lib/pkcs11-spy.so"),
)
TOKEN_LABEL = "kms-test"
KEY_LABEL = "kms-root"
USER_PIN = "1234-test-pin"
SO_PIN = "5678-test-so"


def softhsm_module() -> Path:
    if shutil.which("softhsm2-util") is None:
        unavailable("softhsm2 is not installed (apt-get install softhsm2)")
    for path in MODULE_PATHS:
        if path.is_file():
            return path
    unavailable("softhsm2-util is here but libsofthsm2.so is not where Debian puts it")


def pkcs11_library() -> Any:
    try:
        import pkcs11
    except ImportError:
        unavailable("python-pkcs11 is not installed (pip install -e '.[hsm]'; make test does)")
    return pkcs11


def spy_module() -> Path:
    for path in SPY_PATHS:
        if path.is_file():
            return path
    unavailable("OpenSC's pkcs11-spy.so is not installed (apt-get install opensc-pkcs11)")


@dataclass(frozen=True)
class Token:
    """A SoftHSM2 token: its config, its module, and a PIN file (mode 0600) for its user PIN."""

    directory: Path
    config: Path
    module: Path
    pin_file: Path
    label: str = TOKEN_LABEL

    def settings(self, database: Path | str, key_label: str = KEY_LABEL, **more: Any) -> Settings:
        """Test settings for a keystore on ``database`` sealed by this token's key."""
        values: dict[str, Any] = {
            "database_dsn": str(database),
            "master_key_backend": "pkcs11",
            "pkcs11_module": self.module,
            "pkcs11_token_label": self.label,
            "pkcs11_key_label": key_label,
            "pkcs11_pin_file": self.pin_file,
            "kdf_iterations": TEST_ITERATIONS,
            "insecure_test_kdf_floor": TEST_ITERATIONS,
        }
        values.update(more)
        return Settings(**values)

    def master_key_section(self, key_label: str = KEY_LABEL) -> dict[str, str]:
        """The ``kms.master_key`` section of a config file for this token."""
        return {
            "backend": "pkcs11",
            "module": str(self.module),
            "token_label": self.label,
            "key_label": key_label,
            "pin_file": str(self.pin_file),
        }

    @contextmanager
    def session(self, rw: bool = True) -> Iterator[Any]:
        """A logged-in python-pkcs11 session on the token, for what a test does behind kms's
        back (a second key with the same label, a weak key); the library is finalised after."""
        pkcs11 = pkcs11_library()
        lib = pkcs11.lib(str(self.module))
        try:
            with lib.get_token(token_label=self.label).open(rw=rw, user_pin=USER_PIN) as opened:
                yield opened
        finally:
            lib.finalize()


def make_token(directory: Path, label: str = TOKEN_LABEL) -> Token:
    """A new, empty token in ``directory`` (its own SoftHSM2 config and token store)."""
    module = softhsm_module()
    pkcs11_library()
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    config = directory / "softhsm2.conf"
    config.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(config)},
        capture_output=True,
        check=True,
    )
    pin_file = directory / "user.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    return Token(directory=directory, config=config, module=module, pin_file=pin_file, label=label)


def add_token(token: Token, label: str) -> None:
    """Initialise another token in ``token``'s store, labelled ``label`` (it may repeat a
    label: SoftHSM2 allows two tokens of the same label)."""
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ],
        env={**os.environ, "SOFTHSM2_CONF": str(token.config)},
        capture_output=True,
        check=True,
    )


def pin_locked_module(directory: Path) -> Path:
    """A PKCS#11 module that is SoftHSM2 in every call but ``C_Login``, which answers
    ``CKR_PIN_LOCKED`` (tests/helpers/pin_locked_pkcs11.c), built in ``directory``."""
    module = softhsm_module()
    compiler = shutil.which("cc")
    if compiler is None:
        unavailable("no C compiler (cc) to build the PIN-locked PKCS#11 module")
    built = directory / "libpinlocked.so"
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O1",
            f'-DREAL_MODULE="{module}"',
            "-o",
            str(built),
            str(Path(__file__).with_name("pin_locked_pkcs11.c")),
            "-ldl",
        ],
        capture_output=True,
        check=True,
    )
    return built


@pytest.fixture(scope="session")
def session_token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    """One token per test session (per xdist worker), made once."""
    return make_token(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def token(session_token: Token, monkeypatch: pytest.MonkeyPatch) -> Token:
    """The session's token, with ``SOFTHSM2_CONF`` naming its config for this test."""
    monkeypatch.setenv("SOFTHSM2_CONF", str(session_token.config))
    return session_token
