"""The kms exception tree.

Every exception carries a ``public_message`` that is safe to show a client: it never holds key
material, plaintext, a passphrase or a stored blob. Detail meant for operators goes to the log,
never into the message. How an exception becomes an HTTP status is decided in ``kms.api.errors``
and nowhere else; this module imports nothing from kms.
"""

from __future__ import annotations

import json


class KMSError(Exception):
    """Base of every error kms raises on purpose."""

    public_message = "internal error"

    def __init__(self, public_message: str | None = None) -> None:
        if public_message is not None:
            self.public_message = public_message
        super().__init__(self.public_message)


class InvalidRequest(KMSError):
    """Raise when a request is malformed or asks for something that makes no sense."""

    public_message = "invalid request"


class KeyNotFound(KMSError):
    """Raise if a key (or another caller's key) does not exist.

    Given the key id the caller asked for (and the version, for a version that does not
    exist), the message names them: ``record not found: key "billing-7" version 3``. The id
    comes from the client, so it is quoted as a JSON string (quotes, backslashes, control
    characters and non-ASCII text escaped) and cut at ``SHOWN_KEY_ID_CHARS``: the message stays
    one printable line wherever it is shown (a response, the ``kms`` client's stderr, a log).
    """

    public_message = "record not found"
    #: Longer than any valid key id (128), short enough for one line of any message.
    SHOWN_KEY_ID_CHARS = 160

    def __init__(self, key_id: str | None = None, version: int | None = None) -> None:
        self.key_id = key_id
        self.version = version
        message = None
        if key_id is not None:
            shown = key_id[: self.SHOWN_KEY_ID_CHARS]
            cut = "..." if len(key_id) > len(shown) else ""
            message = f"{self.public_message}: key {json.dumps(shown)}{cut}"
            if version is not None:
                message += f" version {int(version)}"
        super().__init__(message)


class KeyExists(KMSError):
    """Raise when creating a key whose key_id is taken."""

    public_message = "key already exists"


class AliasNotFound(KeyNotFound):
    """Raise if an alias does not exist (or names a key the caller may not see)."""

    public_message = "alias not found"


class AliasExists(KeyExists):
    """Raise when creating an alias whose name is taken (by an alias, or by a key's own id)."""

    public_message = "alias already exists"


class InvalidAliasName(InvalidRequest):
    """Raise for an alias name that is malformed or reserved."""

    public_message = "invalid alias name"


class PurposeMismatch(InvalidRequest):
    """Raise when an operation does not fit the key's purpose or algorithm."""

    public_message = "operation not allowed for this key's purpose"


class InvalidCiphertext(KMSError):
    """Raise for every decryption failure, whatever its cause: the message never says which."""

    public_message = "invalid ciphertext"


class FencedCiphertext(InvalidCiphertext):
    """Raise when a ciphertext that authenticates was made by a version below the key's
    ``min_decryption_version``.

    Answered exactly as ``InvalidCiphertext`` (same status, same message): the fence is checked
    only after the ciphertext authenticates, so a client cannot tell a genuine fenced ciphertext
    from a forged one naming a fenced version, nor learn where the fence stands by forging. Only
    the operator is told which it was (the audit line, the metrics).
    """

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version


class IncorrectKey(KMSError):
    """Raise when a ciphertext names another key than the one the request says made it."""

    public_message = "the ciphertext was not made by the key the request names"


class KeyDisabled(KMSError):
    """Raise when a key exists but may not be used."""

    public_message = "key is disabled"


class KeyPendingDeletion(KMSError):
    """Raise when a key scheduled for deletion is asked to do anything but be read or cancelled."""

    public_message = "key is pending deletion"


class KeyStateConflict(KMSError):
    """Raise when a key's state or version policy forbids the request; the message says which."""

    public_message = "the key's state does not allow this"


class VersionBelowMinimum(KeyStateConflict):
    """Raise when a version below the key's ``min_decryption_version`` is asked to verify (or to
    give its public key); a decryption answers ``FencedCiphertext`` instead."""

    public_message = "key version is below min_decryption_version"


class DeletionNotAllowed(KeyStateConflict):
    """Raise when a key with ``deletion_allowed`` false is asked to delete or recreate."""

    public_message = "deletion is not allowed for this key (deletion_allowed is false)"


class TooManyVersions(KMSError):
    """Raise when a rotation would give a key more versions than ``kms.max_versions`` allows."""

    public_message = "key has reached the maximum number of versions"


class Unauthenticated(KMSError):
    """Raise when a request carries no verified client identity."""

    public_message = "client certificate required"


class Forbidden(KMSError):
    """Raise when the caller is known but not allowed to do this."""

    public_message = "forbidden"


class AmbiguousCertificate(Forbidden):
    """Raise when a client certificate names more than one subject CN: no one of them is the
    caller, and choosing one would let whoever had the certificate issued choose its rights."""

    public_message = "client certificate has more than one subject CN"


class PayloadTooLarge(KMSError):
    """Raise when a request body is over the configured limit."""

    public_message = "request body too large"


class ConfigurationError(KMSError):
    """Raise at startup for a missing or invalid setting; the message names the setting."""

    public_message = "invalid configuration"


class KeystoreError(KMSError):
    """Base for problems opening or initialising the keystore (startup only)."""

    public_message = "keystore error"


class WrongPassphrase(KeystoreError):
    """Raise when the derived master key does not unwrap the init marker."""

    public_message = "wrong master passphrase: the init marker does not unwrap"


class NotInitialised(KeystoreError):
    """Raise when the database holds no keystore yet."""

    public_message = "the database is not initialised: run `kms init` first"


class DatabaseNotEmpty(KeystoreError):
    """Raise when ``kms init`` meets a database holding tables but no keystore: another
    application's, or one a failed init left behind. Nothing is written to it."""

    public_message = "the database already holds tables; kms init needs an empty database"


class DatabaseUnusable(KeystoreError):
    """Raise at startup or init when the database cannot be opened or written (missing or
    read-only directory, full disk, not a SQLite file, damaged, server refusing the connection).

    The message names the database and the cause; these faults do not fix themselves, so it
    never says "retry later".
    """

    public_message = "the database cannot be used"


class DatabaseInUse(KeystoreError):
    """Raise when an operator command that must run alone finds a kms server on the database."""

    public_message = "a kms server is using the database; stop it first"


class UnsafeSideFile(KeystoreError):
    """Raise when a file kms keeps beside its SQLite database (``<database>.serving``,
    ``<database>.changes``, ``<database>.generations`` or ``kms.state_file``) is a symbolic
    link, not a regular file, or owned by another user:
    kms never opens it, so nobody can make kms write into another file through it."""

    public_message = "a file beside the database is not kms's own regular file"


class BackupError(KeystoreError):
    """Raise when a backup file cannot be written or read."""

    public_message = "cannot write or read the backup file"


class InvalidBackup(KeystoreError):
    """Raise when a backup file is truncated, edited, reordered or from another keystore."""

    public_message = "the backup is not intact; nothing was written"


class AlreadyInitialised(KeystoreError):
    """Raise when ``kms init`` meets a database that already holds a keystore."""

    public_message = "the database is already initialised; nothing was changed"


class InvalidKDFParameters(KeystoreError):
    """Raise when KDF parameters, stored or requested, are malformed or outside the bounds."""

    public_message = "invalid KDF parameters"


class UpgradeNeeded(KeystoreError):
    """Raise at startup when the database was made by an earlier kms and `kms upgrade` is due."""

    public_message = (
        "the database was made by an earlier kms release: stop kms and run `kms upgrade`"
    )


class KeystoreTampered(KeystoreError):
    """Raise when the keystore's own rows contradict each other (an older init marker put back
    on a database that carries MACs): an integrity alarm, never an upgrade prompt."""

    public_message = "the keystore was tampered with: its init marker is older than its rows"


class PassphraseError(KeystoreError):
    """Raise when the passphrase cannot be obtained safely (open file mode, empty, no tty)."""

    public_message = "cannot read the master passphrase"


class InvalidSignature(KMSError):
    """Raise when a signature does not verify under the given public key."""

    public_message = "signature invalid"


class InvalidMAC(KMSError):
    """Raise when a MAC does not verify, for the callers that need an error rather than a
    ``valid: false`` answer (AWS KMS's VerifyMac)."""

    public_message = "mac invalid"


class UnwrapFailed(KMSError):
    """Raise when a stored wrapped key fails its integrity check (moved, edited or corrupted).

    Clients see only "internal error": the detail is for the operator's log.
    """


class IntegrityFailure(KMSError):
    """Raise when a stored row fails its MAC, or stored material does not fit its algorithm.

    Means the database was changed behind kms's back. Clients see only "internal error";
    ``detail`` (which key, which row, what failed: never material) is for the operator's log.
    """

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail


class RolledBack(IntegrityFailure):
    """Raise when a key row (or the keystore epoch) is older than one this node has seen: the
    database was rolled back behind kms's back. Never obeyed; answered 503, ``detail`` logged."""

    public_message = "storage integrity failure: a stored key is older than one already seen"


class KeyChanged(KMSError):
    """Raise when a key was deleted, re-created or recreated while an operation prepared for it.

    Nothing was written; the client may retry against the key as it is now.
    """

    public_message = "the key changed during the operation; nothing was written, retry"


class UnsupportedMediaType(InvalidRequest):
    """Raise when a request body is not declared as JSON."""

    public_message = "Content-Type must be application/json"


class StoreUnavailable(KMSError):
    """Raise when the database fails (locked past the busy timeout, unreachable, disk full).

    Clients may retry; the cause goes to the operator's log.
    """

    public_message = "storage unavailable, retry later"


class ListingTimedOut(KMSError):
    """Raise when a key listing runs past its deadline (``kms.list_deadline_ms``)."""

    public_message = (
        "the listing ran past its deadline and was stopped; list fewer keys (a smaller limit, "
        "a narrower state or label) or retry later"
    )


class AuditUnavailable(KMSError):
    """Raise when a request's audit line cannot be written: no audit, no service."""

    public_message = "audit log unavailable, request refused"


class RateLimited(KMSError):
    """Raise when a caller is over its rate limit; ``retry_after`` is in whole seconds."""

    public_message = "rate limit exceeded"

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = retry_after


class NotReady(KMSError):
    """Raise from the readiness check; the message says what is missing."""

    public_message = "not ready"
