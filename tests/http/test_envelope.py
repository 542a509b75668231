"""Envelope encryption over a real gunicorn server with mutual TLS (issue 9): the encryption
context, data keys, rewrap and the batch form of every crypto call."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms.crypto.ciphertext import parse_ciphertext
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    create_key,
    expect_error,
    expect_json,
    prepare_deployment,
    unb64,
    unique_key_id,
)
from tests.helpers.identities import (
    audit_records,
    running_server,
)
from tests.http.test_metrics import sample, samples

pytestmark = pytest.mark.slow

INVALID = "invalid ciphertext"
CONTEXT = {"tenant": "acme", "table": "orders", "row": "42"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return prepare_deployment(tmp_path_factory.mktemp("kms-envelope"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    # A server of this module's own, so that its log and audit log hold only these requests.
    with running_server(deployment) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[KMSClient]:
    client = KMSClient(server.deployment)
    yield client
    client.close()


@pytest.fixture
def key_id(client: KMSClient) -> str:
    return create_key(client, key_id=unique_key_id("envelope"))["key_id"]


@pytest.fixture
def sign_key_id(client: KMSClient) -> str:
    created = create_key(
        client, key_id=unique_key_id("envelope-sign"), purpose="sign", algorithm="Ed25519"
    )
    return created["key_id"]


def post(client: KMSClient, operation: str, status: int = 200, **body: Any) -> Any:
    return expect_json(client.post(f"/v1/kms/{operation}", json=body), status)


def encrypt(client: KMSClient, key_id: str, plaintext: bytes, **extra: Any) -> dict[str, Any]:
    return post(client, "encrypt", key_id=key_id, plaintext=b64(plaintext), **extra)


def decrypt_status(client: KMSClient, key_id: str, ciphertext: str, **extra: Any) -> Any:
    return client.post(
        "/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext, **extra}
    )


# -- encryption context ---------------------------------------------------------------------


def test_the_right_context_decrypts_in_any_key_order(client: KMSClient, key_id: str) -> None:
    encrypted = encrypt(client, key_id, b"row 42", context=CONTEXT)
    for context in (CONTEXT, dict(reversed(list(CONTEXT.items())))):
        body = expect_json(
            decrypt_status(client, key_id, encrypted["ciphertext"], context=context), 200
        )
        assert unb64(body["plaintext"]) == b"row 42"
    # The pairs really reach the server in the other order (requests keeps dict order).
    assert list(dict(reversed(list(CONTEXT.items())))) != list(CONTEXT)


@pytest.mark.parametrize(
    "context",
    [
        {**CONTEXT, "row": "43"},  # a wrong value
        {**CONTEXT, "column": "total"},  # an extra pair
        {"tenant": "acme", "table": "orders"},  # a missing pair
        {"tenant": "acme", "table": "orders", "row ": "42"},  # another key
        {"tenantacme": "", "table": "orders", "row": "42"},  # the same characters, split apart
        None,  # no context at all
        {},
    ],
)
def test_any_other_context_is_invalid_ciphertext(
    client: KMSClient, key_id: str, context: dict[str, str] | None
) -> None:
    ciphertext = encrypt(client, key_id, b"row 42", context=CONTEXT)["ciphertext"]
    extra = {} if context is None else {"context": context}
    expect_error(decrypt_status(client, key_id, ciphertext, **extra), 400, INVALID)


def test_a_context_on_a_ciphertext_made_without_one_is_invalid_ciphertext(
    client: KMSClient, key_id: str
) -> None:
    ciphertext = encrypt(client, key_id, b"no context")["ciphertext"]
    expect_error(decrypt_status(client, key_id, ciphertext, context={"a": "b"}), 400, INVALID)
    # An empty context is no context: both make the same associated data.
    body = expect_json(decrypt_status(client, key_id, ciphertext, context={}), 200)
    assert unb64(body["plaintext"]) == b"no context"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({f"k{i}": "v" for i in range(65)}, "context: at most 64 pairs"),
        ({"k": "v" * 5 * 1024}, "context: at most 4096 bytes in its canonical encoding"),
        ({"k": 1}, "context: must be an object of string keys to string values"),
        ({"k": None}, "context: must be an object of string keys to string values"),
        ({"k": ["v"]}, "context: must be an object of string keys to string values"),
        ({"k": {"v": "w"}}, "context: must be an object of string keys to string values"),
        (["k", "v"], "context: must be an object of string keys to string values"),
        ("k=v", "context: must be an object of string keys to string values"),
    ],
)
@pytest.mark.parametrize("operation", ["encrypt", "decrypt", "datakey", "rewrap"])
def test_a_bad_context_is_400_on_every_operation(
    client: KMSClient, key_id: str, operation: str, context: Any, message: str
) -> None:
    fields: dict[str, Any] = {"key_id": key_id, "context": context}
    if operation == "encrypt":
        fields["plaintext"] = b64(b"x")
    elif operation in ("decrypt", "rewrap"):
        fields["ciphertext"] = encrypt(client, key_id, b"x")["ciphertext"]
    expect_error(client.post(f"/v1/kms/{operation}", json=fields), 400, message)


def test_64_pairs_and_4096_bytes_are_allowed(client: KMSClient, key_id: str) -> None:
    many = {f"k{i:02d}": "v" for i in range(64)}
    # One pair: 4 + 1 (key) + 4 + 4087 (value) = 4096 bytes of canonical encoding.
    large = {"k": "v" * 4087}
    for context in (many, large):
        ciphertext = encrypt(client, key_id, b"x", context=context)["ciphertext"]
        assert expect_json(decrypt_status(client, key_id, ciphertext, context=context), 200)
    expect_error(
        client.post(
            "/v1/kms/encrypt",
            json={"key_id": key_id, "plaintext": b64(b"x"), "context": {"k": "v" * 4088}},
        ),
        400,
        "context: at most 4096 bytes in its canonical encoding",
    )


def test_context_keys_and_values_may_be_any_unicode(client: KMSClient, key_id: str) -> None:
    context = {"": "", "Grüße": "日本語", "emoji": "\U0001f511", "nul": "a\x00b"}
    ciphertext = encrypt(client, key_id, b"x", context=context)["ciphertext"]
    assert expect_json(decrypt_status(client, key_id, ciphertext, context=context), 200)
    expect_error(
        decrypt_status(client, key_id, ciphertext, context={**context, "nul": "a\x00c"}),
        400,
        INVALID,
    )


# -- data keys ----------------------------------------------------------------------------


def test_a_data_key_encrypts_a_file_locally_and_its_ciphertext_decrypts_through_kms(
    client: KMSClient, key_id: str, tmp_path: Path
) -> None:
    document = tmp_path / "report.pdf"
    document.write_bytes(os.urandom(100_000))
    data_key = post(client, "datakey", key_id=key_id, context={"file": "report.pdf"})
    assert set(data_key) == {"ciphertext", "plaintext", "key_id", "version"}
    assert (data_key["key_id"], data_key["version"]) == (key_id, 1)
    plaintext_key = unb64(data_key["plaintext"])
    assert len(plaintext_key) == 32

    # Encrypt the file locally; keep only the wrapped key beside it.
    nonce = os.urandom(12)
    sealed = AESGCM(plaintext_key).encrypt(nonce, document.read_bytes(), b"report.pdf")
    (tmp_path / "report.pdf.enc").write_bytes(nonce + sealed)
    (tmp_path / "report.pdf.key").write_text(data_key["ciphertext"], encoding="ascii")
    del plaintext_key

    # Later: kms unwraps the data key, the file decrypts locally.
    unwrapped = expect_json(
        decrypt_status(
            client,
            key_id,
            (tmp_path / "report.pdf.key").read_text(encoding="ascii"),
            context={"file": "report.pdf"},
        ),
        200,
    )
    assert unwrapped["plaintext"] == data_key["plaintext"]
    stored = (tmp_path / "report.pdf.enc").read_bytes()
    recovered = AESGCM(unb64(unwrapped["plaintext"])).decrypt(
        stored[:12], stored[12:], b"report.pdf"
    )
    assert recovered == document.read_bytes()
    # Without its context the data key stays wrapped.
    expect_error(decrypt_status(client, key_id, data_key["ciphertext"]), 400, INVALID)


def test_data_keys_are_fresh_each_time(client: KMSClient, key_id: str) -> None:
    keys = {post(client, "datakey", key_id=key_id)["plaintext"] for _ in range(5)}
    assert len(keys) == 5


def test_include_plaintext_false_returns_only_the_wrapped_key(
    client: KMSClient, key_id: str
) -> None:
    body = post(client, "datakey", key_id=key_id, bytes=16, include_plaintext=False)
    assert set(body) == {"ciphertext", "key_id", "version"}
    unwrapped = expect_json(decrypt_status(client, key_id, body["ciphertext"]), 200)
    assert len(unb64(unwrapped["plaintext"])) == 16


@pytest.mark.parametrize("size", [16, 24, 32])
def test_data_keys_of_16_24_and_32_bytes(client: KMSClient, key_id: str, size: int) -> None:
    body = post(client, "datakey", key_id=key_id, bytes=size)
    plaintext_key = unb64(body["plaintext"])
    assert len(plaintext_key) == size
    AESGCM(plaintext_key)  # a valid AES key of that size
    unwrapped = expect_json(decrypt_status(client, key_id, body["ciphertext"]), 200)
    assert unwrapped["plaintext"] == body["plaintext"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bytes": 15}, "bytes: must be between 16 and 32"),
        ({"bytes": 33}, "bytes: must be between 16 and 32"),
        ({"bytes": 20}, "bytes: must be 16, 24 or 32"),
        ({"bytes": 0}, "bytes: must be between 16 and 32"),
        ({"bytes": "32"}, "bytes: must be an integer"),
        ({"bytes": 32.0}, "bytes: must be an integer"),
        ({"bytes": True}, "bytes: must be an integer"),
        ({"include_plaintext": 1}, "include_plaintext: must be true or false"),
        ({"include_plaintext": "false"}, "include_plaintext: must be true or false"),
        ({"include_plaintext": None}, "include_plaintext: Field may not be null."),
        ({"plaintext": "AAAA"}, "plaintext: Unknown field."),
    ],
)
def test_bad_datakey_requests_are_400(
    client: KMSClient, key_id: str, fields: dict[str, Any], message: str
) -> None:
    expect_error(client.post("/v1/kms/datakey", json={"key_id": key_id, **fields}), 400, message)


def test_datakey_on_a_sign_key_or_a_missing_key(client: KMSClient, sign_key_id: str) -> None:
    expect_error(client.post("/v1/kms/datakey", json={"key_id": sign_key_id}), 400)
    missing = unique_key_id("missing")
    expect_error(
        client.post("/v1/kms/datakey", json={"key_id": missing}),
        404,
        f'record not found: key "{missing}"',
    )


# -- rewrap -------------------------------------------------------------------------------


def test_rewrap_after_two_rotations_moves_a_ciphertext_to_the_latest_version(
    client: KMSClient, key_id: str
) -> None:
    original = encrypt(client, key_id, b"old secret", context=CONTEXT)
    assert original["version"] == 1
    for version in (2, 3):
        rotated = expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
        assert rotated["version"] == version
    rewrapped = post(
        client, "rewrap", key_id=key_id, ciphertext=original["ciphertext"], context=CONTEXT
    )
    assert set(rewrapped) == {"ciphertext", "key_id", "version"}
    assert (rewrapped["key_id"], rewrapped["version"]) == (key_id, 3)
    assert parse_ciphertext(rewrapped["ciphertext"]).version == 3
    decrypted = expect_json(
        decrypt_status(client, key_id, rewrapped["ciphertext"], context=CONTEXT), 200
    )
    assert (unb64(decrypted["plaintext"]), decrypted["version"]) == (b"old secret", 3)
    # The context stays bound to the new ciphertext too.
    expect_error(decrypt_status(client, key_id, rewrapped["ciphertext"]), 400, INVALID)


@pytest.mark.parametrize("context", [{**CONTEXT, "row": "43"}, None, {"x": "y"}])
def test_rewrap_with_a_wrong_context_is_invalid_ciphertext(
    client: KMSClient, key_id: str, context: dict[str, str] | None
) -> None:
    ciphertext = encrypt(client, key_id, b"old secret", context=CONTEXT)["ciphertext"]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    extra = {} if context is None else {"context": context}
    response = client.post(
        "/v1/kms/rewrap", json={"key_id": key_id, "ciphertext": ciphertext, **extra}
    )
    expect_error(response, 400, INVALID)


@pytest.mark.parametrize(
    "ciphertext", ["", "garbage", b64(b"v1:" + bytes(40)), b64(b"v9:" + bytes(40))]
)
def test_rewrap_of_a_tampered_or_foreign_ciphertext_is_invalid_ciphertext(
    client: KMSClient, key_id: str, ciphertext: str
) -> None:
    response = client.post("/v1/kms/rewrap", json={"key_id": key_id, "ciphertext": ciphertext})
    expect_error(response, 400, INVALID)


def test_rewrap_of_another_keys_ciphertext_is_invalid_ciphertext(
    client: KMSClient, key_id: str
) -> None:
    other = create_key(client, key_id=unique_key_id("envelope-other"))["key_id"]
    ciphertext = encrypt(client, other, b"not yours")["ciphertext"]
    response = client.post("/v1/kms/rewrap", json={"key_id": key_id, "ciphertext": ciphertext})
    expect_error(response, 400, INVALID)


# -- batches ------------------------------------------------------------------------------


def batch(client: KMSClient, operation: str, key_id: str, items: list[Any]) -> Any:
    response = client.post(f"/v1/kms/{operation}", json={"key_id": key_id, "batch": items})
    body = expect_json(response, 200)
    assert set(body) == {"results"}
    assert len(body["results"]) == len(items)
    return body["results"]


def test_encrypt_batch_mixes_good_and_bad_items_in_order(client: KMSClient, key_id: str) -> None:
    items = [
        {"plaintext": b64(b"first")},
        {"plaintext": "not base64!"},
        {"plaintext": b64(b"third"), "context": CONTEXT},
        {"plaintext": b64(b"x"), "context": {"k": 1}},
        {"plaintext": b64(b"x"), "key_id": key_id},
        "not an object",
        {},
        {"plaintext": b64(b"last")},
    ]
    results = batch(client, "encrypt", key_id, items)
    assert results[1] == {"error": "plaintext: must be valid standard base64"}
    assert results[3] == {"error": "context: must be an object of string keys to string values"}
    assert results[4] == {"error": "key_id: Unknown field."}
    assert results[5] == {"error": "batch item must be a JSON object"}
    assert results[6] == {"error": "plaintext: Missing data for required field."}
    # Each bad item's message is the single call's.
    for index in (1, 3):
        single = client.post("/v1/kms/encrypt", json={"key_id": key_id, **items[index]})
        assert expect_error(single, 400) == results[index]["error"]
    for index, plaintext, context in (
        (0, b"first", None),
        (2, b"third", CONTEXT),
        (7, b"last", None),
    ):
        assert set(results[index]) == {"ciphertext", "key_id", "version"}
        assert (results[index]["key_id"], results[index]["version"]) == (key_id, 1)
        extra = {} if context is None else {"context": context}
        body = expect_json(
            decrypt_status(client, key_id, results[index]["ciphertext"], **extra), 200
        )
        assert unb64(body["plaintext"]) == plaintext


def test_decrypt_batch_mixes_good_and_bad_items_in_order(client: KMSClient, key_id: str) -> None:
    v1 = encrypt(client, key_id, b"one")["ciphertext"]
    with_context = encrypt(client, key_id, b"two", context=CONTEXT)["ciphertext"]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    v2 = encrypt(client, key_id, b"three")["ciphertext"]
    tampered = b64(bytearray(unb64(v2))[:-1] + bytes([unb64(v2)[-1] ^ 1]))
    results = batch(
        client,
        "decrypt",
        key_id,
        [
            {"ciphertext": v1},
            {"ciphertext": tampered},
            {"ciphertext": with_context, "context": CONTEXT},
            {"ciphertext": with_context},
            {"ciphertext": v2},
            {"ciphertext": 42},
            {"ciphertext": v1, "context": {f"k{i}": "v" for i in range(65)}},
        ],
    )
    assert results[0] == {"plaintext": b64(b"one"), "key_id": key_id, "version": 1}
    assert results[1] == {"error": INVALID}
    assert results[2] == {"plaintext": b64(b"two"), "key_id": key_id, "version": 1}
    assert results[3] == {"error": INVALID}
    assert results[4] == {"plaintext": b64(b"three"), "key_id": key_id, "version": 2}
    assert results[5] == {"error": "ciphertext: Not a valid string."}
    assert results[6] == {"error": "context: at most 64 pairs"}


def test_datakey_batch_mixes_good_and_bad_items_in_order(client: KMSClient, key_id: str) -> None:
    results = batch(
        client,
        "datakey",
        key_id,
        [
            {},
            {"bytes": 15},
            {"bytes": 16, "include_plaintext": False, "context": CONTEXT},
            {"include_plaintext": "yes"},
            {"bytes": 24},
        ],
    )
    assert results[1] == {"error": "bytes: must be between 16 and 32"}
    assert results[3] == {"error": "include_plaintext: must be true or false"}
    assert set(results[0]) == set(results[4]) == {"ciphertext", "plaintext", "key_id", "version"}
    assert set(results[2]) == {"ciphertext", "key_id", "version"}
    for index, size, context in ((0, 32, None), (2, 16, CONTEXT), (4, 24, None)):
        extra = {} if context is None else {"context": context}
        unwrapped = expect_json(
            decrypt_status(client, key_id, results[index]["ciphertext"], **extra), 200
        )
        assert len(unb64(unwrapped["plaintext"])) == size
        if "plaintext" in results[index]:
            assert unwrapped["plaintext"] == results[index]["plaintext"]
    assert results[0]["plaintext"] != results[4]["plaintext"]


def test_rewrap_batch_mixes_good_and_bad_items_in_order(client: KMSClient, key_id: str) -> None:
    old = encrypt(client, key_id, b"old")["ciphertext"]
    old_with_context = encrypt(client, key_id, b"bound", context=CONTEXT)["ciphertext"]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    results = batch(
        client,
        "rewrap",
        key_id,
        [
            {"ciphertext": old},
            {"ciphertext": old_with_context, "context": {"tenant": "other"}},
            {"ciphertext": old_with_context, "context": CONTEXT},
            {"ciphertext": "garbage"},
            {"context": CONTEXT},
        ],
    )
    assert results[1] == {"error": INVALID}
    assert results[3] == {"error": INVALID}
    assert results[4] == {"error": "ciphertext: Missing data for required field."}
    for index, plaintext, context in ((0, b"old", None), (2, b"bound", CONTEXT)):
        assert (results[index]["key_id"], results[index]["version"]) == (key_id, 3)
        extra = {} if context is None else {"context": context}
        body = expect_json(
            decrypt_status(client, key_id, results[index]["ciphertext"], **extra), 200
        )
        assert (unb64(body["plaintext"]), body["version"]) == (plaintext, 3)


def test_sign_batch_mixes_good_and_bad_items_in_order(client: KMSClient, sign_key_id: str) -> None:
    results = batch(
        client,
        "sign",
        sign_key_id,
        [{"message": b64(b"one")}, {"message": "!!"}, {"message": b64(b"three")}, {"msg": "AA=="}],
    )
    assert results[1] == {"error": "message: must be valid standard base64"}
    assert results[3] == {"error": "message: Missing data for required field.; msg: Unknown field."}
    for index, message in ((0, b"one"), (2, b"three")):
        assert (results[index]["key_id"], results[index]["version"]) == (sign_key_id, 1)
        verified = post(
            client,
            "verify",
            key_id=sign_key_id,
            message=b64(message),
            signature=results[index]["signature"],
        )
        assert verified == {"valid": True}


def test_verify_batch_mixes_good_and_bad_items_in_order(
    client: KMSClient, sign_key_id: str
) -> None:
    signature = post(client, "sign", key_id=sign_key_id, message=b64(b"signed"))["signature"]
    results = batch(
        client,
        "verify",
        sign_key_id,
        [
            {"message": b64(b"signed"), "signature": signature},
            {"message": b64(b"forged"), "signature": signature},
            {"message": b64(b"signed")},
            {"message": b64(b"signed"), "signature": signature},
        ],
    )
    assert results == [
        {"valid": True},
        {"valid": False, "error": "signature invalid"},
        {"error": "signature: Missing data for required field."},
        {"valid": True},
    ]


BATCH_ITEMS = {
    "encrypt": {"plaintext": b64(b"x")},
    "decrypt": {"ciphertext": "garbage"},
    "datakey": {},
    "rewrap": {"ciphertext": "garbage"},
    "sign": {"message": b64(b"x")},
    "verify": {"message": b64(b"x"), "signature": b64(b"y")},
}
SIGNING = {"sign", "verify"}


@pytest.mark.parametrize("operation", sorted(BATCH_ITEMS))
def test_an_empty_batch_or_one_over_1000_items_is_400(
    client: KMSClient, key_id: str, sign_key_id: str, operation: str
) -> None:
    target = sign_key_id if operation in SIGNING else key_id
    item = BATCH_ITEMS[operation]
    for items, message in (
        ([], "batch: must hold at least one item"),
        ([item] * 1001, "batch: at most 1000 items (server.max_batch_items)"),
    ):
        response = client.post(f"/v1/kms/{operation}", json={"key_id": target, "batch": items})
        expect_error(response, 400, message)
    # 1,000 is allowed.
    assert len(batch(client, operation, target, [item] * 1000)) == 1000


@pytest.mark.parametrize("operation", sorted(BATCH_ITEMS))
def test_a_batch_on_a_missing_key_is_404(client: KMSClient, operation: str) -> None:
    missing = unique_key_id("missing")
    response = client.post(
        f"/v1/kms/{operation}", json={"key_id": missing, "batch": [BATCH_ITEMS[operation], "x"]}
    )
    expect_error(response, 404, f'record not found: key "{missing}"')


@pytest.mark.parametrize("operation", sorted(BATCH_ITEMS))
def test_a_purpose_mismatch_fails_the_whole_batch_as_the_single_call_does(
    client: KMSClient, key_id: str, sign_key_id: str, operation: str
) -> None:
    wrong = key_id if operation in SIGNING else sign_key_id
    item = BATCH_ITEMS[operation]
    single = client.post(f"/v1/kms/{operation}", json={"key_id": wrong, **item})
    message = expect_error(single, 400)
    response = client.post(f"/v1/kms/{operation}", json={"key_id": wrong, "batch": [item]})
    expect_error(response, 400, message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"batch": [{}]}, "key_id: Missing data for required field."),
        ({"key_id": "k", "batch": {"plaintext": "AA=="}}, "batch: Not a valid list."),
        ({"key_id": "k", "batch": None}, "batch: Field may not be null."),
        (
            {"key_id": "k", "batch": [{}], "plaintext": "AA=="},
            "plaintext: Unknown field.",
        ),
    ],
)
def test_a_malformed_batch_is_400(client: KMSClient, body: dict[str, Any], message: str) -> None:
    expect_error(client.post("/v1/kms/encrypt", json=body), 400, message)


# -- what the logs see ----------------------------------------------------------------------


def test_no_plaintext_data_key_or_context_value_reaches_a_log(
    deployment: Deployment, server: ServerProcess, client: KMSClient, key_id: str
) -> None:
    marker = uuid.uuid4().hex
    plaintext = f"plaintext-{marker}".encode()
    context_value = f"context-value-{marker}"
    context = {"owner": context_value}
    secrets = [plaintext.decode(), b64(plaintext), context_value]

    encrypted = encrypt(client, key_id, plaintext, context=context)
    decrypt_status(client, key_id, encrypted["ciphertext"], context=context)
    decrypt_status(client, key_id, encrypted["ciphertext"], context={"owner": context_value + "!"})
    rewrapped = post(
        client, "rewrap", key_id=key_id, ciphertext=encrypted["ciphertext"], context=context
    )
    data_key = post(client, "datakey", key_id=key_id, context=context)
    secrets += [data_key["plaintext"], unb64(data_key["plaintext"]).hex()]
    batch_request = {
        "key_id": key_id,
        "batch": [
            {"plaintext": b64(plaintext), "context": context},
            {"plaintext": "bad", "context": context},
        ],
    }
    response = client.post("/v1/kms/encrypt", json=batch_request)
    results = expect_json(response, 200)["results"]
    batch_keys = batch(client, "datakey", key_id, [{"context": context}] * 3)
    secrets += [item["plaintext"] for item in batch_keys]
    # A refused request must not echo its context either.
    expect_error(
        client.post(
            "/v1/kms/encrypt",
            json={
                "key_id": key_id,
                "plaintext": b64(plaintext),
                "context": {"k": context_value * 200},
            },
        ),
        400,
    )

    logs = server.output() + deployment.audit_log.read_text(encoding="utf-8")
    assert marker in response.request.body.decode()  # the marker did travel
    for secret in secrets:
        assert secret not in logs
    assert rewrapped["ciphertext"] not in logs
    assert results[0]["ciphertext"] not in logs

    # The audit log names the batch's key and its item count, never the items.
    request_id = response.headers["X-Request-Id"]
    lines = [r for r in audit_records(deployment) if r["request_id"] == request_id]
    assert [r["type"] for r in lines] == ["response"]  # a use of a key: one line
    for record in lines:
        assert (record["operation"], record["key_id"], record["item_count"]) == (
            "encrypt",
            key_id,
            2,
        )


def test_datakey_and_rewrap_are_audited_under_their_own_operations(
    deployment: Deployment, client: KMSClient, key_id: str
) -> None:
    ciphertext = encrypt(client, key_id, b"x")["ciphertext"]
    responses = {
        "datakey": client.post("/v1/kms/datakey", json={"key_id": key_id}),
        "rewrap": client.post("/v1/kms/rewrap", json={"key_id": key_id, "ciphertext": ciphertext}),
    }
    records = audit_records(deployment)
    for operation, response in responses.items():
        assert response.status_code == 200, response.text
        request_id = response.headers["X-Request-Id"]
        lines = [r for r in records if r["request_id"] == request_id]
        assert [(r["type"], r["operation"], r["key_id"]) for r in lines] == [
            ("response", operation, key_id),
        ]
        assert "item_count" not in lines[0]
        assert lines[0]["key_version"] == 1


# -- the batch benchmark ------------------------------------------------------------------


def test_the_batch_benchmark_script_runs(deployment: Deployment, server: ServerProcess) -> None:
    """scripts/bench_batch.py keeps working (its figures are in docs/performance.md; none is
    asserted)."""
    script = Path(__file__).parents[2] / "scripts" / "bench_batch.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--url",
            deployment.base_url,
            "--secrets",
            str(deployment.directory),
            "--connections",
            "2",
            "--seconds",
            "0.2",
            "--batch",
            "10",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("single-call encrypt: ") and lines[1].endswith(" items/s")
    assert lines[2].startswith("batch of 10 encrypt: ") and lines[2].endswith(" items/s")
    assert lines[3].startswith("ratio: ") and lines[3].endswith("x")


# -- metrics ------------------------------------------------------------------------------


def test_metrics_count_a_batchs_successful_items(client: KMSClient, key_id: str) -> None:
    def crypto_operations() -> dict[str, float]:
        found = samples(expect_json_text(client.get("/metrics")))
        return {
            operation: sample(
                found, "kms_crypto_operations_total", operation=operation, algorithm="AES-256-GCM"
            )
            for operation in ("encrypt", "datakey", "rewrap")
        }

    before = crypto_operations()
    items = [{"plaintext": b64(b"a")}, {"plaintext": "bad"}, {"plaintext": b64(b"c")}]
    batch(client, "encrypt", key_id, items)
    batch(client, "datakey", key_id, [{}] * 5)
    post(client, "datakey", key_id=key_id)
    expect_error(client.post("/v1/kms/encrypt", json={"key_id": key_id, "batch": []}), 400)
    after = crypto_operations()
    assert after["encrypt"] - before["encrypt"] == 2
    assert after["datakey"] - before["datakey"] == 6
    assert after["rewrap"] == before["rewrap"]


def expect_json_text(response: Any) -> str:
    assert response.status_code == 200, response.text
    return response.text


# -- with the key types of issue 10 ---------------------------------------------------------


def test_sign_and_verify_batches_take_the_single_calls_options(client: KMSClient) -> None:
    key_id = unique_key_id("envelope-ecdsa")
    create_key(client, key_id=key_id, purpose="sign", algorithm="ECDSA-P256")
    data = b"release 2.0"
    digest = hashlib.sha256(data).digest()
    signed = batch(
        client,
        "sign",
        key_id,
        [
            {"message": b64(data)},
            {"message": b64(digest), "prehashed": True, "digest_algorithm": "SHA-256"},
            {"message": b64(digest[:-1]), "prehashed": True, "digest_algorithm": "SHA-256"},
        ],
    )
    assert "error" in signed[2] and "is 32 bytes, got 31" in signed[2]["error"]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    verified = batch(
        client,
        "verify",
        key_id,
        [
            {"message": b64(data), "signature": signed[0]["signature"], "version": 1},
            {"message": b64(data), "signature": signed[1]["signature"]},
            {"message": b64(data), "signature": signed[0]["signature"], "version": 2},
            {"message": b64(data), "signature": signed[0]["signature"], "version": 0},
        ],
    )
    assert verified[:3] == [
        {"valid": True},
        {"valid": True},  # prehashed over the digest = a signature over the data
        {"valid": False, "error": "signature invalid"},
    ]
    assert set(verified[3]) == {"error"} and verified[3]["error"].startswith("version: ")


def test_data_keys_and_rewrap_on_an_rsa_oaep_key(client: KMSClient) -> None:
    key_id = unique_key_id("envelope-oaep")
    create_key(client, key_id=key_id, purpose="encrypt", algorithm="RSA-OAEP-2048")
    data_key = post(client, "datakey", key_id=key_id, bytes=32)
    unwrapped = expect_json(decrypt_status(client, key_id, data_key["ciphertext"]), 200)
    assert unwrapped["plaintext"] == data_key["plaintext"]
    refused = client.post("/v1/kms/datakey", json={"key_id": key_id, "context": {"a": "b"}})
    assert "do not support an encryption context" in expect_error(refused, 400)
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    results = batch(
        client,
        "rewrap",
        key_id,
        [
            {"ciphertext": data_key["ciphertext"]},
            {"ciphertext": data_key["ciphertext"], "context": {"a": "b"}},
        ],
    )
    assert results[0]["version"] == 2
    assert "do not support an encryption context" in results[1]["error"]
    again = expect_json(decrypt_status(client, key_id, results[0]["ciphertext"]), 200)
    assert again["plaintext"] == data_key["plaintext"]


# -- with the key states of issue 8 -----------------------------------------------------------


def test_a_disabled_key_fails_the_whole_batch_and_an_old_version_fails_its_item(
    client: KMSClient, key_id: str
) -> None:
    old = encrypt(client, key_id, b"old")["ciphertext"]
    expect_json(client.post(f"/v1/kms/keys/{key_id}/rotate"), 200)
    new = encrypt(client, key_id, b"new")["ciphertext"]
    fenced = client.request("PATCH", f"/v1/kms/keys/{key_id}", json={"min_decryption_version": 2})
    expect_json(fenced, 200)
    # Answered as any ciphertext that does not decrypt (tests/http/test_decryption_refusals.py).
    single = expect_error(decrypt_status(client, key_id, old), 400, "invalid ciphertext")
    results = batch(client, "decrypt", key_id, [{"ciphertext": old}, {"ciphertext": new}])
    assert results == [
        {"error": single},
        {"plaintext": b64(b"new"), "key_id": key_id, "version": 2},
    ]
    # Moving the old ciphertext forward is what rewrap is for; it too refuses a fenced version.
    assert batch(client, "rewrap", key_id, [{"ciphertext": old}]) == [{"error": single}]

    expect_json(client.post(f"/v1/kms/keys/{key_id}/disable"), 200)
    message = expect_error(decrypt_status(client, key_id, new), 409)
    for operation, item in (("decrypt", {"ciphertext": new}), ("encrypt", {"plaintext": "AA=="})):
        response = client.post(f"/v1/kms/{operation}", json={"key_id": key_id, "batch": [item]})
        expect_error(response, 409, message)
    expect_json(client.post(f"/v1/kms/keys/{key_id}/enable"), 200)
    assert batch(client, "encrypt", key_id, [{"plaintext": "AA=="}])[0]["version"] == 2
