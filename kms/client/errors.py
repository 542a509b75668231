"""The client's exceptions: one per kind of answer the server gives, chosen by status and message.

The server answers every error as ``{"error": "<message>"}``; ``error_for`` turns that into the
most specific exception below, so callers can ``except KeyNotFoundError`` instead of comparing
status codes. Messages are the server's public messages, which never hold key material.
"""

from __future__ import annotations


class KMSClientError(Exception):
    """Base of everything the client raises on purpose."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ConnectionFailed(KMSClientError):
    """The server could not be reached (after the retries allowed for the call)."""


class InvalidRequestError(KMSClientError):
    """400: the request was malformed or does not fit the key."""


class InvalidCiphertextError(InvalidRequestError):
    """400 ``invalid ciphertext``: every decryption failure, whatever its cause; also a file
    from ``decrypt_file`` that is truncated, reordered, spliced or otherwise changed."""


class UnexpectedHeaderError(InvalidCiphertextError):
    """An encrypted file whose header names another key or encryption context than the caller
    said it expects (``expected_key_id``, ``expected_context``); kms was not asked anything."""


class FileFormatError(KMSClientError):
    """An encrypted file's format version does not allow the operation (re-wrapping a version 1
    file in place)."""


class ForbiddenError(KMSClientError):
    """403: the policy does not allow this caller this operation on this key."""


class KeyNotFoundError(KMSClientError):
    """404: no such key (or a path the server does not serve)."""


class ConflictError(KMSClientError):
    """409: the request conflicts with the key's state."""


class KeyExistsError(ConflictError):
    """409 ``key already exists``."""


class KeyChangedError(ConflictError):
    """409: the key was deleted, re-created or recreated meanwhile; nothing was written."""


class PayloadTooLargeError(KMSClientError):
    """413: the body is over the server's ``server.max_body_bytes``."""


class UnsupportedMediaTypeError(InvalidRequestError):
    """415: the body was not declared as JSON."""


class RateLimitedError(KMSClientError):
    """429: over the caller's rate limit; ``retry_after`` in seconds."""

    def __init__(self, message: str, status: int | None = None, retry_after: int = 1) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerError(KMSClientError):
    """500: the server failed (the cause is in its log only)."""


class UnavailableError(KMSClientError):
    """503: storage or audit log unavailable, or not ready (after the retries allowed)."""


_BY_STATUS: dict[int, type[KMSClientError]] = {
    400: InvalidRequestError,
    403: ForbiddenError,
    404: KeyNotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitedError,
    500: ServerError,
    503: UnavailableError,
}


def error_for(status: int, message: str, retry_after: str | None = None) -> KMSClientError:
    """The exception for an error answer."""
    if status == 400 and message == "invalid ciphertext":
        return InvalidCiphertextError(message, status)
    if status == 409 and message == "key already exists":
        return KeyExistsError(message, status)
    if status == 409 and message.startswith("the key changed"):
        return KeyChangedError(message, status)
    if status == 429:
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else 1
        return RateLimitedError(message, status, retry_after=seconds)
    error_class = _BY_STATUS.get(status)
    if error_class is None:
        error_class = ServerError if status >= 500 else InvalidRequestError
    return error_class(message, status)
