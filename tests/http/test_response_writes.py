"""The worker's per-request work on a kept-alive mTLS connection (issue 12): a response goes out
in one write (one TLS record for a small answer), and a request the event loop has parsed is
served without being parsed again, whether it arrives whole, in pieces or pipelined."""

from __future__ import annotations

import base64
import json
import os
import ssl

from tests.helpers.harness import KMSClient, ServerProcess, expect_json, unique_key_id
from tests.helpers.raw import parse_response, read_response, tls_connection


def first_read(tls: ssl.SSLSocket) -> bytes:
    """What one ``recv`` returns: the plaintext of a single TLS record."""
    return tls.recv(1024 * 1024)


def post(path: str, document: dict[str, object]) -> bytes:
    body = json.dumps(document).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_a_small_response_is_one_tls_record(server: ServerProcess, client: KMSClient) -> None:
    key_id = unique_key_id("one-write")
    expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
    plaintext = base64.b64encode(os.urandom(256)).decode()
    with tls_connection(server.deployment) as tls:
        for request in (
            GET_HEALTHZ,
            post("/v1/kms/encrypt", {"key_id": key_id, "plaintext": plaintext}),
        ) * 3:
            tls.sendall(request)
            # gunicorn alone writes the head and the body apart: the first record is the head.
            response = parse_response(first_read(tls))
            assert response.status == 200
            assert len(response.body) == int(response.headers["content-length"]) > 0
            json.loads(response.body)


def test_requests_in_pieces_and_pipelined_are_each_answered_once(
    server: ServerProcess, client: KMSClient
) -> None:
    key_id = unique_key_id("pieces")
    expect_json(client.post("/v1/kms/keys", json={"key_id": key_id}), 201)
    plaintexts = [os.urandom(size) for size in (0, 300, 64 * 1024)]
    requests = [
        post("/v1/kms/encrypt", {"key_id": key_id, "plaintext": base64.b64encode(p).decode()})
        for p in plaintexts
    ]
    with tls_connection(server.deployment) as tls:
        # A large body in several writes (several TLS records, several reads for the server).
        large = requests[2]
        for start in range(0, len(large), 20_000):
            tls.sendall(large[start : start + 20_000])
        ciphertexts = [parse_response(read_response(tls)).json()["ciphertext"]]
        # Three requests in one write: each answered, in order, on the same connection.
        tls.sendall(requests[0] + GET_HEALTHZ + requests[1])
        answers = [parse_response(read_response(tls)) for _ in range(3)]
        assert [answer.status for answer in answers] == [200, 200, 200]
        assert answers[1].json() == {"status": "ok"}
        ciphertexts += [answers[0].json()["ciphertext"], answers[2].json()["ciphertext"]]
    for ciphertext, plaintext in zip(
        ciphertexts, [plaintexts[2], plaintexts[0], plaintexts[1]], strict=True
    ):
        decrypted = expect_json(
            client.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext}), 200
        )
        assert base64.b64decode(decrypted["plaintext"]) == plaintext
