"""kms.client: a Python client of the kms HTTP API (``KMSClient``) and its typed results.

    from kms.client import KMSClient

    with KMSClient("https://localhost:8080", cert=("client.crt", "client.key"), ca="ca.pem") as kms:
        kms.create_key("orders")
        ciphertext = kms.encrypt("orders", b"hello")
        assert kms.decrypt("orders", ciphertext) == b"hello"
        kms.encrypt_file("orders", "big.tar", "big.tar.kms")
        kms.rewrap_file("big.tar.kms")  # after a rotation: the data key under the new version
        kms.decrypt_file("big.tar.kms", "big.tar", expected_key_id="orders")

It imports nothing from the server side of kms (no Flask, SQLAlchemy or settings).
"""

from kms.client.client import KMSClient
from kms.client.errors import (
    ConflictError,
    ConnectionFailed,
    FileFormatError,
    ForbiddenError,
    InvalidCiphertextError,
    InvalidRequestError,
    KeyChangedError,
    KeyExistsError,
    KeyNotFoundError,
    KMSClientError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    UnavailableError,
    UnexpectedHeaderError,
    UnsupportedMediaTypeError,
)
from kms.client.models import MAC, DataKey, Encrypted, Key, KeyVersion, PublicKey, Signature

__all__ = [
    "ConflictError",
    "ConnectionFailed",
    "DataKey",
    "Encrypted",
    "FileFormatError",
    "ForbiddenError",
    "InvalidCiphertextError",
    "InvalidRequestError",
    "KMSClient",
    "KMSClientError",
    "Key",
    "KeyChangedError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyVersion",
    "MAC",
    "PayloadTooLargeError",
    "PublicKey",
    "RateLimitedError",
    "ServerError",
    "Signature",
    "UnavailableError",
    "UnexpectedHeaderError",
    "UnsupportedMediaTypeError",
]
