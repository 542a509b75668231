"""kms.client: a Python client of the kms HTTP API (``KMSClient``) and its typed results.

    from kms.client import KMSClient

    with KMSClient("https://localhost:8080", cert=("client.crt", "client.key"), ca="ca.pem") as kms:
        kms.create_key("orders")
        ciphertext = kms.encrypt("orders", b"hello")
        assert kms.decrypt("orders", ciphertext) == b"hello"
        kms.encrypt_file("orders", "big.tar", "big.tar.kms")

It imports nothing from the server side of kms (no Flask, SQLAlchemy or settings).
"""

from kms.client.client import KMSClient
from kms.client.errors import (
    ConflictError,
    ConnectionFailed,
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
    UnsupportedMediaTypeError,
)
from kms.client.models import MAC, DataKey, Encrypted, Key, KeyVersion, PublicKey, Signature

__all__ = [
    "ConflictError",
    "ConnectionFailed",
    "DataKey",
    "Encrypted",
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
    "UnsupportedMediaTypeError",
]
