"""The one error map (kms.api.errors): each refusal's status and message, as docs/api.md's endpoint
tables and key-state rules give them. A status changed here would change every endpoint's."""

from __future__ import annotations

import pytest

from kms import errors
from kms.api.errors import batch_item_error, status_for

README = [
    (errors.InvalidRequest(), 400, "invalid request"),
    # A subclass of InvalidRequest, yet its own status: the map's order keeps it first.
    (errors.UnsupportedMediaType(), 415, "Content-Type must be application/json"),
    (errors.KeyNotFound(), 404, "record not found"),
    (errors.KeyExists(), 409, "key already exists"),
    (errors.KeyDisabled(), 409, "key is disabled"),
    (errors.KeyPendingDeletion(), 409, "key is pending deletion"),
    (errors.KeyStateConflict(), 409, "the key's state does not allow this"),
    (errors.VersionBelowMinimum(), 409, "key version is below min_decryption_version"),
    (
        errors.DeletionNotAllowed(),
        409,
        "deletion is not allowed for this key (deletion_allowed is false)",
    ),
    (
        errors.KeyChanged(),
        409,
        "the key changed during the operation; nothing was written, retry",
    ),
    (errors.TooManyVersions(), 409, "key has reached the maximum number of versions"),
    (errors.Unauthenticated(), 401, "client certificate required"),
    (errors.Forbidden(), 403, "forbidden"),
    (errors.AmbiguousCertificate(), 403, "client certificate has more than one subject CN"),
    (errors.PayloadTooLarge(), 413, "request body too large"),
    (errors.RateLimited(retry_after=1), 429, "rate limit exceeded"),
    (errors.StoreUnavailable(), 503, "storage unavailable, retry later"),
    (errors.AuditUnavailable(), 503, "audit log unavailable, request refused"),
]


@pytest.mark.parametrize(
    ("error", "status", "message"), README, ids=[type(row[0]).__name__ for row in README]
)
def test_each_refusal_has_its_status_and_message(
    error: errors.KMSError, status: int, message: str
) -> None:
    """The message as a batch item shows it, the body the single call answers; a server's
    refusal (5xx) fails a whole batch instead, and shows no message of its own in an item."""
    assert status_for(error) == status
    assert error.public_message == message
    shown = message if status < 500 else "internal error"
    assert batch_item_error(error) == {"error": shown}


def test_a_server_fault_is_an_internal_error_in_a_batch_item() -> None:
    assert status_for(errors.IntegrityFailure("detail for the log only")) == 500
    assert batch_item_error(errors.IntegrityFailure("detail")) == {"error": "internal error"}


def test_a_key_not_found_names_the_key_and_version_it_was_asked_for() -> None:
    assert errors.KeyNotFound("billing-7").public_message == 'record not found: key "billing-7"'
    missing_version = errors.KeyNotFound("billing-7", 3)
    assert missing_version.public_message == 'record not found: key "billing-7" version 3'
    assert batch_item_error(missing_version) == {"error": missing_version.public_message}


def test_the_key_id_in_a_not_found_message_is_quoted_escaped_and_cut() -> None:
    """The id is the client's: quotes, backslashes, line breaks, escape sequences and non-ASCII
    text are escaped, so the message stays one printable line and never closes its quotes."""
    hostile = 'x" version 9\n\x1b[2Jcaf\u00e9\\'
    message = errors.KeyNotFound(hostile).public_message
    assert message == 'record not found: key "x\\" version 9\\n\\u001b[2Jcaf\\u00e9\\\\"'
    assert message.isprintable() and message.isascii()
    long = errors.KeyNotFound("k" * 5000).public_message
    assert long == f'record not found: key "{"k" * 160}"...'
