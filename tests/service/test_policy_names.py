"""The policy file's names, duplicates, deny list and file checks (docs/configuration.md, The
policy file): on ``load_policy`` itself and through the app's own hooks (Flask's test client, a
fake TLS socket; the same attacks on a real server are in tests/http/test_certificate_identity.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from kms.api.audit import AUDIT_SUMMARY
from kms.api.policy import MAX_POLICY_BYTES, Policy, load_policy
from kms.app import REPOSITORY, create_app
from kms.errors import ConfigurationError
from kms.server.identity import Caller, caller_from_peer_certificate
from kms.service.keyring import RootKeyring
from kms.settings import Settings
from tests.helpers.tls import FakeTLSSocket

DENIED_DER = b"a certificate whose fingerprint is denied"
TYPED = f"""\
clients:
  "cn:orchestrator":
    - operations: ["*"]
      keys: ["*"]
  "uri:spiffe://prod/billing":
    - operations: ["encrypt", "keys:read"]
      keys: ["billing-*"]
  "DNS:billing.internal":
    - operations: ["keys:read"]
      keys: ["billing-*"]
deny:
  serials: ["0A:FF"]
  sha256_fingerprints: ["{hashlib.sha256(DENIED_DER).hexdigest().upper()}"]
"""
UNTYPED = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  "spiffe://prod/billing":
    - operations: ["encrypt"]
      keys: ["billing-*"]
"""


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(content, encoding="utf-8")
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigurationError) as raised:
        load_policy(path)
    message = raised.value.public_message
    assert message.startswith(f"authorization.policy_file {path}: "), message
    assert "\n" not in message
    return message


@pytest.fixture
def typed(tmp_path: Path) -> Policy:
    return load_policy(write(tmp_path, TYPED))


# -- names ------------------------------------------------------------------------------------


def test_a_typed_name_matches_only_a_name_of_its_type(typed: Policy) -> None:
    assert typed.warnings == ()
    assert typed.identity_of(Caller(("orchestrator",), ())) == "cn:orchestrator"
    # A CN spelled like the SPIFFE URI is not that URI: it is an unlisted CN.
    spelled = Caller(("spiffe://prod/billing",), ())
    assert typed.identity_of(spelled) == "cn:spiffe://prod/billing"
    assert not typed.allows(typed.identity_of(spelled), "encrypt", "billing-1")
    # A DNS or URI SAN equal to the administrator's CN is not the administrator.
    for san in ("DNS:orchestrator", "URI:orchestrator"):
        impostor = Caller(("someone",), (san,))
        assert typed.identity_of(impostor) == "cn:someone"
        assert not typed.allows(typed.identity_of(impostor), "keys:delete", "x")
    billing = Caller(("billing-7",), ("DNS:billing.internal", "URI:spiffe://prod/billing"))
    assert typed.identity_of(billing) == "DNS:billing.internal"  # the first listed name, as written
    assert typed.identity_of(Caller((), ("URI:spiffe://prod/billing",))) == (
        "uri:spiffe://prod/billing"
    )
    assert typed.identity_of(Caller((), ("IP Address:10.0.0.1",))) == "-"


def test_an_untyped_name_still_loads_with_a_warning_and_keeps_its_old_matches(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, UNTYPED)
    legacy = load_policy(path)
    assert len(legacy.warnings) == 1
    warning = legacy.warnings[0]
    assert str(path) in warning and "deprecated" in warning
    assert "'orchestrator' (matches cn:orchestrator or dns:orchestrator)" in warning
    assert "'spiffe://prod/billing' (matches uri:spiffe://prod/billing)" in warning
    # As before: the CN or a DNS SAN, and the URI SAN.
    assert legacy.identity_of(Caller(("orchestrator",), ())) == "orchestrator"
    assert legacy.identity_of(Caller(("x",), ("DNS:orchestrator",))) == "orchestrator"
    assert legacy.identity_of(Caller(("x",), ("URI:spiffe://prod/billing",))) == (
        "spiffe://prod/billing"
    )
    # A name shaped like a URI stands for a URI SAN only: a CN or DNS name spelled so is not it.
    assert legacy.identity_of(Caller(("spiffe://prod/billing",), ())) == (
        "cn:spiffe://prod/billing"
    )
    # Nor is a URI SAN equal to an untyped CN name.
    assert legacy.identity_of(Caller(("x",), ("URI:orchestrator",))) == "cn:x"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        # The same client twice: PyYAML alone would keep the second entry and drop the first.
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\n"
            "  cn:b:\n    - operations: [encrypt]\n      keys: ['b']\n"
            "  cn:a:\n    - operations: [encrypt]\n      keys: ['a']\n",
            "line 8: duplicate key 'cn:a'",
        ),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      operations: [encrypt]\n"
            "      keys: ['a']\n",
            "line 4: duplicate key 'operations'",
        ),
        ("clients: {}\nclients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\n", "line 2"),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\n"
            "deny:\n  serials: ['01']\n  serials: ['02']\n",
            "line 7: duplicate key 'serials'",
        ),
        # Two spellings of one name.
        (
            "clients:\n  orchestrator:\n    - operations: ['*']\n      keys: ['*']\n"
            "  cn:orchestrator:\n    - operations: [encrypt]\n      keys: ['a']\n",
            "'orchestrator' and 'cn:orchestrator' both name 'cn:orchestrator'",
        ),
        (
            "clients:\n  dns:a.b:\n    - operations: ['*']\n      keys: ['*']\n"
            "  DNS:a.b:\n    - operations: [encrypt]\n      keys: ['a']\n",
            "both name 'dns:a.b'",
        ),
        ("clients:\n  'cn:':\n    - operations: ['*']\n      keys: ['*']\n", "'cn:'"),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\ndeny:\n"
            "  serials: ['12G4']\n",
            "deny.serials: '12G4'",
        ),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\ndeny:\n"
            "  serials: [4660]\n",
            "deny",
        ),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\ndeny:\n"
            "  sha256_fingerprints: ['AB:CD']\n",
            "deny.sha256_fingerprints: 'AB:CD'",
        ),
        (
            "clients:\n  cn:a:\n    - operations: ['*']\n      keys: ['*']\ndeny:\n  crls: ['x']\n",
            "crls",
        ),
    ],
)
def test_a_repeated_or_malformed_entry_is_refused(
    tmp_path: Path, content: str, problem: str
) -> None:
    assert problem in refusal(write(tmp_path, content))


def test_an_untyped_name_with_a_colon_is_a_uri_and_cn_prefix_is_its_type(tmp_path: Path) -> None:
    """A scheme-like prefix other than the three types keeps the untyped meaning: a URI."""
    policy = load_policy(
        write(tmp_path, "clients:\n  'urn:x:y':\n    - operations: ['*']\n      keys: ['*']\n")
    )
    assert policy.names == {("uri", "urn:x:y"): "urn:x:y"}


# -- the file itself ---------------------------------------------------------------------------


def test_a_fifo_as_the_policy_file_is_refused_at_once(tmp_path: Path) -> None:
    """Read with a plain open, a FIFO with no writer blocks the reader for ever (start-up hangs,
    a reload blocks the master). The load runs in a thread so that the old behaviour fails the
    test instead of hanging it; the bound is a safety limit, not a measure of speed."""
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def load() -> None:
        try:
            load_policy(fifo)
        except ConfigurationError as error:
            outcome.append(error.public_message)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=30)
    if loader.is_alive():  # unblock the old code's open, so that the thread ends
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
    assert outcome == [f"authorization.policy_file {fifo}: not a regular file (a FIFO)"]


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a character device"), (".", "")])
def test_a_device_or_directory_is_refused(tmp_path: Path, path: str, kind: str) -> None:
    target = tmp_path if path == "." else Path(path)
    message = refusal(target)
    assert "not a regular file" in message and kind in message


def test_a_policy_file_over_the_size_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"#" * (MAX_POLICY_BYTES + 1))
    assert f"longer than {MAX_POLICY_BYTES} bytes" in refusal(path)
    path.write_bytes(b"#" * (MAX_POLICY_BYTES - 1) + b"\n")  # at the bound: read (and refused
    assert "clients section" in refusal(path)  # for what it says, not for its size)


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    target = write(tmp_path, TYPED)
    link = tmp_path / "current.yaml"
    link.symlink_to(target)
    assert load_policy(link).names == load_policy(target).names


# -- the certificate -----------------------------------------------------------------------------


def test_the_certificate_gives_every_cn_its_serial_and_fingerprint() -> None:
    caller = caller_from_peer_certificate(
        {
            "subject": ((("commonName", "billing-workload"),), (("commonName", "orchestrator"),)),
            "subjectAltName": (("DNS", "a"), ("IP Address", "10.0.0.1"), ("URI", "u:1")),
            "serialNumber": "0AFF",
        },
        b"der",
    )
    assert caller.common_names == ("billing-workload", "orchestrator")
    assert caller.names() == (
        ("cn", "billing-workload"),
        ("cn", "orchestrator"),
        ("dns", "a"),
        ("uri", "u:1"),
    )
    assert (caller.serial, caller.sha256) == (0xAFF, hashlib.sha256(b"der").digest())
    assert str(caller) == (
        "CN=billing-workload,CN=orchestrator;SAN=DNS:a,IP Address:10.0.0.1,URI:u:1"
    )


@pytest.fixture
def app(initialised: Settings, keyring: RootKeyring, tmp_path: Path) -> Iterator[Flask]:
    settings = initialised.with_overrides(
        policy_file=write(tmp_path, TYPED), audit_path=tmp_path / "audit.log"
    )
    app = create_app(settings, keyring=keyring)
    yield app
    app.extensions[REPOSITORY].close()


def request_as(app: Flask, socket: FakeTLSSocket, path: str = "/v1/kms/keys") -> tuple[int, str]:
    client = app.test_client()
    client.environ_base["gunicorn.socket"] = socket
    response = client.get(path)
    return response.status_code, response.get_json()["error"] if response.status_code >= 400 else ""


def test_a_certificate_with_two_cns_is_refused_whichever_comes_last(
    app: Flask, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CN=billing-workload, CN=orchestrator once got the last CN's rights: everything."""
    two = FakeTLSSocket(("billing-workload", "orchestrator"), alt_names=())
    with caplog.at_level("WARNING", logger="kms"):
        assert request_as(app, two) == (403, "client certificate has more than one subject CN")
        assert request_as(app, two, "/healthz") == (
            403,
            "client certificate has more than one subject CN",
        )
    assert request_as(app, FakeTLSSocket("orchestrator")) == (200, "")
    refused = [r.getMessage() for r in caplog.records if "subject CNs" in r.getMessage()]
    assert refused[0] == (
        "kms: refused a client certificate with 2 subject CNs (CN=billing-workload,CN=orchestrator)"
    )
    # Refused before its arrival line: counted in the identity's summary line, not one by one.
    app.extensions[AUDIT_SUMMARY].flush()
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    summaries = [(r["identity"], r["statuses"]) for r in records if r["type"] == "summary"]
    assert summaries == [("-", {"403": 2})]


@pytest.mark.parametrize(
    "socket",
    [
        FakeTLSSocket("orchestrator", serial=0x0AFF),
        FakeTLSSocket("orchestrator", der=DENIED_DER),
    ],
    ids=["serial", "fingerprint"],
)
def test_a_denied_certificate_is_refused_whatever_its_rules_allow(
    app: Flask, socket: FakeTLSSocket, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="kms"):
        assert request_as(app, socket) == (403, "forbidden")
        assert request_as(app, socket, "/readyz") == (403, "forbidden")
    assert any("refused a denied client certificate" in r.getMessage() for r in caplog.records)
    # The same name on another certificate from the same CA keeps its rights.
    assert request_as(app, FakeTLSSocket("orchestrator", serial=0x0B00)) == (200, "")
