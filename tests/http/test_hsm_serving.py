"""``kms serve`` on the ``pkcs11`` backend, over real gunicorn and mTLS, with a real SoftHSM2
token: made with ``kms hsm init`` and ``kms init``, it creates, encrypts, rotates, decrypts and
signs, and decrypts again after a restart; no request calls the HSM; and each startup fault is
one ``kms:`` line, exit 1, nothing written.

The PKCS#11 calls are counted by OpenSC's ``pkcs11-spy.so``, configured as the module: it logs
every call to a file and passes it on to SoftHSM2 (``PKCS11SPY``).
"""

from __future__ import annotations

import base64
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.helpers.config import write_config
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    expect_json,
    free_port,
    run_kms,
    write_dev_certificates,
)
from tests.helpers.softhsm import (
    KEY_LABEL,
    Token,
    add_token,
    make_token,
    pin_locked_module,
    pkcs11_library,
    session_token,  # noqa: F401 - a fixture
    spy_module,
    token,  # noqa: F401 - a fixture
)
from tests.system.test_startup_faults import one_line_failure

pytestmark = pytest.mark.slow


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hsm_deployment(
    directory: Path,
    token: Token,  # noqa: F811
    key_label: str,
    module: Path,
    dsn: str | None = None,
) -> Deployment:
    """Dev certificates and a config on the token's ``key_label`` through ``module`` (and the
    database ``dsn``: the deployment's SQLite file if None); the key and the keystore made by the
    commands an operator runs."""
    write_dev_certificates(directory)
    deployment = Deployment(directory=directory, port=free_port())
    section = token.master_key_section(key_label)
    section["module"] = str(module)
    write_config(
        deployment.config,
        directory=directory,
        port=deployment.port,
        dsn=dsn,
        kms={"master_key": section},
    )
    made = run_kms("hsm", "init", config=deployment.config, cwd=directory)
    assert made.returncode == 0, made.stderr
    assert f"created the key {key_label!r} of token 'kms-test'" in made.stdout
    initialised = run_kms("init", config=deployment.config, cwd=directory)
    assert initialised.returncode == 0, initialised.stderr
    return deployment


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_server_on_the_hsm_serves_without_calling_it_and_after_a_restart(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """Issue 23: end to end on the pkcs11 backend, on SQLite and on PostgreSQL."""
    dsn = None if database == "sqlite" else request.getfixturevalue("postgres_url")
    spy_log = tmp_path / "pkcs11-spy.log"
    monkeypatch.setenv("PKCS11SPY", str(token.module))
    monkeypatch.setenv("PKCS11SPY_OUTPUT", str(spy_log))
    deployment = hsm_deployment(tmp_path / "node", token, f"served-{database}", spy_module(), dsn)
    assert "C_GenerateKey" in spy_log.read_text()  # the control: the spy sees kms's calls
    spy_log.unlink()

    started_at = time.time()
    server = ServerProcess(deployment)
    client = KMSClient(deployment)
    try:
        server.wait_until_serving(client)
        at_start = spy_log.read_text()
        assert "C_Decrypt" in at_start and "C_Finalize" in at_start  # opened once, then done
        # The start says how long opening the root secret took (library, login, unseal).
        assert re.search(
            r"kms: root secret opened by the pkcs11 backend in \d+\.\d ms$",
            server.output(),
            re.MULTILINE,
        ), server.output()
        calls_at_start = at_start.count("\nC_")

        expect_json(client.post("/v1/kms/keys", json={"key_id": "orders"}), 201)
        first = expect_json(
            client.post("/v1/kms/encrypt", json={"key_id": "orders", "plaintext": b64(b"one")}),
            200,
        )["ciphertext"]
        expect_json(client.post("/v1/kms/keys/orders/rotate"), 200)
        second = expect_json(
            client.post("/v1/kms/encrypt", json={"key_id": "orders", "plaintext": b64(b"two")}),
            200,
        )["ciphertext"]
        for ciphertext, plaintext in ((first, b"one"), (second, b"two")):
            decrypted = expect_json(
                client.post("/v1/kms/decrypt", json={"key_id": "orders", "ciphertext": ciphertext}),
                200,
            )
            assert base64.b64decode(decrypted["plaintext"]) == plaintext
        expect_json(
            client.post(
                "/v1/kms/keys", json={"key_id": "signer", "purpose": "sign", "algorithm": "Ed25519"}
            ),
            201,
        )
        signed = expect_json(
            client.post("/v1/kms/sign", json={"key_id": "signer", "message": b64(b"m")}), 200
        )
        assert expect_json(
            client.post(
                "/v1/kms/verify",
                json={"key_id": "signer", "message": b64(b"m"), "signature": signed["signature"]},
            ),
            200,
        )["valid"]
        assert expect_json(client.get("/readyz"), 200) == {
            "status": "ready",
            "master_key_backend": "pkcs11",
        }
        scraped = client.get("/metrics")
        assert scraped.status_code == 200
        opened = re.search(
            r'^kms_master_key_opened_timestamp_seconds\{backend="pkcs11"\} (\S+)$',
            scraped.text,
            re.MULTILINE,
        )
        assert opened is not None, scraped.text
        assert started_at <= float(opened.group(1)) <= time.time()

        # Every request above was served without one PKCS#11 call.
        assert spy_log.read_text().count("\nC_") == calls_at_start
    finally:
        client.close()
        assert server.stop() == 0

    restarted = ServerProcess(deployment)
    client = KMSClient(deployment)
    try:
        restarted.wait_until_serving(client)
        decrypted = expect_json(
            client.post("/v1/kms/decrypt", json={"key_id": "orders", "ciphertext": first}), 200
        )
        assert base64.b64decode(decrypted["plaintext"]) == b"one"
    finally:
        client.close()
        assert restarted.stop() == 0


def _tamper(deployment: Deployment) -> None:
    with closing(sqlite3.connect(deployment.database)) as conn, conn:
        (sealed,) = conn.execute(
            "SELECT value FROM kms_metadata WHERE name = 'root_secret'"
        ).fetchone()
        altered = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
        conn.execute("UPDATE kms_metadata SET value = ? WHERE name = 'root_secret'", (altered,))


#: A fault, the ``kms.master_key`` setting that makes it (None: the sealed root secret is
#: altered instead), and what the one line must say. ``{tmp}``: the test's directory.
FAULTS = [
    ("module", "{tmp}/missing.so", "the PKCS#11 module {tmp}/missing.so does not exist"),
    ("module", "{tmp}/libfake.so", "{tmp}/libfake.so is not a PKCS#11 library"),
    ("token_label", "no-such-token", "no token labelled 'no-such-token'"),
    ("pin_file", "{tmp}/wrong.pin", "the PIN in {tmp}/wrong.pin is wrong for token 'kms-test'"),
    ("key_label", "no-such-key", "holds no secret key labelled 'no-such-key'"),
    (None, None, "the keystore's root secret does not open with the key 'faults'"),
]


def test_each_startup_fault_is_one_line_exit_1_and_writes_nothing(
    token: Token,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    deployment = hsm_deployment(tmp_path / "node", token, "faults", token.module)
    (tmp_path / "libfake.so").write_bytes(b"not an ELF file")
    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("0000\n")
    wrong_pin.chmod(0o600)
    for setting, value, expected in FAULTS:
        section = token.master_key_section("faults")
        if setting is None:
            _tamper(deployment)
        else:
            section[setting] = str(value).format(tmp=tmp_path)
        write_config(
            deployment.config,
            directory=deployment.directory,
            port=deployment.port,
            kms={"master_key": section},
        )
        before = deployment.database.read_bytes()
        line = one_line_failure(
            run_kms("serve", config=deployment.config, cwd=deployment.directory)
        )
        assert expected.format(tmp=tmp_path) in line
        assert deployment.database.read_bytes() == before


def test_an_ambiguous_key_a_locked_pin_and_two_tokens_of_one_label_each_stop_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a token of this test's own (these faults would spoil the session's): each is one
    ``kms:`` line, exit 1, before the port is bound, nothing written.

    SoftHSM2 never locks a user PIN (it counts no failed logins), so the locked PIN comes from
    a module that is SoftHSM2 in every call but ``C_Login``, which answers ``CKR_PIN_LOCKED``
    (tests/helpers/pin_locked_pkcs11.c): python-pkcs11 and kms meet the real return code."""
    own = make_token(tmp_path / "hsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(own.config))
    deployment = hsm_deployment(tmp_path / "node", own, KEY_LABEL, own.module)
    locked = pin_locked_module(tmp_path)

    def refused(module: Path, expected: str) -> None:
        section = own.master_key_section(KEY_LABEL)
        section["module"] = str(module)
        write_config(
            deployment.config,
            directory=deployment.directory,
            port=deployment.port,
            kms={"master_key": section},
        )
        before = deployment.database.read_bytes()
        line = one_line_failure(
            run_kms("serve", config=deployment.config, cwd=deployment.directory)
        )
        assert expected in line
        assert deployment.database.read_bytes() == before

    pkcs11 = pkcs11_library()
    with own.session() as session:  # a second secret key with the label of kms's
        session.generate_key(pkcs11.KeyType.AES, 256, label=KEY_LABEL, store=True)
    refused(own.module, f"token 'kms-test' holds more than one secret key labelled {KEY_LABEL!r}")
    refused(locked, "the user PIN of token 'kms-test' is locked (too many wrong PINs)")
    add_token(own, own.label)
    refused(own.module, "more than one token is labelled 'kms-test'")
