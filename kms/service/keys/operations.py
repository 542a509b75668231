"""The cryptographic operations, single and batch, on a cached key row.

Each operation has a single form and a batch form. The batch form takes a sequence of items,
each the single call's keyword arguments but key_id (as the API's item schema loaded them), or
the error an item's parsing raised, which keeps its place in the results. The key row is read
and checked once per batch and each version's material loaded at most once; a missing key, a
purpose mismatch or a disabled key raises for the whole batch, while an item's own failure
(InvalidRequest, InvalidCiphertext) becomes its result and the other items go on.

The one ambient input of the service is ``CURRENT_REQUESTER``: the API layer sets it around each
request, and it is read only to record who still tries to use a key pending deletion. Nothing is
decided by it; passing it through every call for that bookkeeping alone would put the caller in
every signature of the service.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from kms.crypto.algorithms import PUBLIC_KEY_ALGORITHMS, Purpose, public_key_pem
from kms.errors import (
    InvalidCiphertext,
    InvalidRequest,
    KeyChanged,
    KeyNotFound,
    KeyPendingDeletion,
    KMSError,
    PurposeMismatch,
    StoreUnavailable,
    VersionBelowMinimum,
)
from kms.service.keys import rules
from kms.service.keys.items import Items
from kms.service.keys.limits import UseLimits
from kms.service.keys.material import KeyMaterial, RequestMaterial
from kms.service.keys.results import (
    DataKey,
    Decrypted,
    Encrypted,
    MACed,
    PublicKeyInfo,
    Signed,
    Verified,
)
from kms.service.keys.rules import AlgorithmFit
from kms.service.keys.trust import StaleRow, TrustedRows
from kms.service.keys.validation import validate_key_id, validate_random_bytes
from kms.store.records import KeyRecord, KeyRepository

lifecycle_log = logging.getLogger("kms.lifecycle")

#: One item of a batch: the single call's keyword arguments but key_id, or the error its
#: parsing raised (kept as that item's result).
BatchItem = Mapping[str, Any] | KMSError


@dataclass(frozen=True)
class Requester:
    """Who is asking, and for which operation, as the API's policy names them."""

    caller: str
    operation: str


CURRENT_REQUESTER: ContextVar[Requester | None] = ContextVar("kms_requester", default=None)

T = TypeVar("T")
#: What an operation on a cached key row may fail with only because the row was stale: a
#: ciphertext or signature of a version (or incarnation) the cached row does not know, or a
#: version the cached row still names but the database no longer holds.
STALE_SYMPTOMS = (StaleRow, KeyNotFound, InvalidCiphertext, VersionBelowMinimum, KeyChanged)


class KeyOperations:
    def __init__(
        self,
        repository: KeyRepository,
        trust: TrustedRows,
        material: KeyMaterial,
        limits: UseLimits,
        *,
        verify_max_versions: int,
        max_batch_items: int,
        clock: Callable[[], datetime],
    ) -> None:
        self._repository = repository
        self._trust = trust
        self._material = material
        self._limits = limits
        self._items = Items(limits, verify_max_versions)
        self._max_batch_items = max_batch_items
        self._clock = clock

    # -- the operations ---------------------------------------------------------------------

    def encrypt(
        self,
        key_id: str,
        plaintext: bytes,
        context: Mapping[str, str] | None = None,
        *,
        fit: AlgorithmFit | None = None,
    ) -> Encrypted:
        """Encrypt under the latest version, counted against its limit. ``fit`` (every
        operation takes it): the key algorithms the request's own algorithm fits, checked
        before anything is counted or computed (``rules.require_usable``)."""

        def run(key: KeyRecord) -> Encrypted:
            key = self._limits.encrypting(key, 1)
            return self._items.encrypt(key, self._request(key), plaintext, context)

        return self._on_key(key_id, Purpose.ENCRYPT, run, fit=fit)

    def encrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._items.encrypt, encrypting=True)

    def decrypt(
        self,
        key_id: str,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
        version: int | None = None,
        *,
        fit: AlgorithmFit | None = None,
    ) -> Decrypted:
        """Decrypt a ``vN:`` ciphertext, or (RSA-OAEP keys only) a raw OAEP ciphertext made
        offline with the exported public key of ``version``. Counted in the version's
        decryptions (flushed every few seconds)."""
        return self._on_key(
            key_id,
            Purpose.ENCRYPT,
            lambda key: self._items.decrypt(key, self._request(key), ciphertext, context, version),
            fit=fit,
        )

    def decrypt_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Decrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._items.decrypt)

    def generate_data_key(
        self,
        key_id: str,
        key_bytes: int = 32,
        context: Mapping[str, str] | None = None,
        include_plaintext: bool = True,
        *,
        fit: AlgorithmFit | None = None,
    ) -> DataKey:
        """A fresh random data key, encrypted under the latest version (as ``encrypt`` would).

        Its ciphertext decrypts through ``decrypt`` with the same context. Without
        ``include_plaintext`` only the ciphertext is returned.
        """

        def run(key: KeyRecord) -> DataKey:
            key = self._limits.encrypting(key, 1)
            return self._items.data_key(
                key, self._request(key), key_bytes, context, include_plaintext
            )

        return self._on_key(key_id, Purpose.ENCRYPT, run, fit=fit)

    def generate_data_key_batch(
        self, key_id: str, items: Sequence[BatchItem]
    ) -> list[DataKey | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._items.data_key, encrypting=True)

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        """Decrypt and encrypt again under the latest version, with the same context.

        The plaintext never leaves the service: this is how ciphertexts move forward after a
        rotation. A ciphertext that does not decrypt (wrong context, tampered) is
        ``InvalidCiphertext``, as for ``decrypt``.
        """

        def run(key: KeyRecord) -> Encrypted:
            key = self._limits.encrypting(key, 1)
            return self._items.rewrap(key, self._request(key), ciphertext, context)

        return self._on_key(key_id, Purpose.ENCRYPT, run)

    def re_encrypt(
        self,
        source_key_id: str,
        ciphertext: str,
        source_context: Mapping[str, str] | None,
        key_id: str,
        context: Mapping[str, str] | None,
        *,
        source_fit: AlgorithmFit | None = None,
        fit: AlgorithmFit | None = None,
    ) -> tuple[Decrypted, Encrypted]:
        """Decrypt under ``source_key_id`` and encrypt under ``key_id`` (another key, or the
        same), inside the service: the plaintext never leaves it (AWS KMS's ReEncrypt).

        The destination is checked (state, purpose, ``fit``) before the source ciphertext is
        decrypted, so a destination that would refuse leaves no decryption made or counted;
        ``encrypt`` checks it again on the row it encrypts under."""
        self._usable(self._row(validate_key_id(key_id)), Purpose.ENCRYPT, fit)
        opened = self.decrypt(source_key_id, ciphertext, source_context, fit=source_fit)
        return opened, self.encrypt(key_id, opened.plaintext, context, fit=fit)

    def rewrap_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Encrypted | KMSError]:
        return self._batch(key_id, Purpose.ENCRYPT, items, self._items.rewrap, encrypting=True)

    def sign(
        self,
        key_id: str,
        message: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        fit: AlgorithmFit | None = None,
    ) -> Signed:
        """Sign with the newest version. ``prehashed``: ``message`` is the ``digest_algorithm``
        digest of the data, and the signature is the one over the data itself."""
        return self._on_key(
            key_id,
            Purpose.SIGN,
            lambda key: self._items.sign(
                key,
                self._request(key),
                message,
                signing_algorithm,
                prehashed=prehashed,
                digest_algorithm=digest_algorithm,
            ),
            fit=fit,
        )

    def sign_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Signed | KMSError]:
        return self._batch(key_id, Purpose.SIGN, items, self._items.sign)

    def verify(
        self,
        key_id: str,
        message: bytes,
        signature: bytes,
        signing_algorithm: str | None = None,
        *,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        version: int | None = None,
        require_low_s: bool = False,
        fit: AlgorithmFit | None = None,
    ) -> Verified:
        """Check the signature against ``version`` only, or else the newest
        ``verify_max_versions`` versions, newest first (``Items.verified_by_some_version``).

        A caller who kept the version from ``sign`` names it and pays for one check, whatever
        its age. Only public keys are used: verification never unwraps a private key. With
        ``require_low_s`` (ECDSA keys only) the second form of an ECDSA signature, ``(r, n-s)``
        with ``s`` above ``n/2``, is invalid: kms signs only the first.
        """
        verified: Verified = self._on_key(
            key_id,
            Purpose.SIGN,
            lambda key: self._items.verify(
                key,
                self._request(key),
                message,
                signature,
                signing_algorithm,
                prehashed=prehashed,
                digest_algorithm=digest_algorithm,
                version=version,
                require_low_s=require_low_s,
            ),
            failed=stale_result,
            fit=fit,
        )
        return verified

    def verify_batch(self, key_id: str, items: Sequence[BatchItem]) -> list[Verified | KMSError]:
        return self._batch(key_id, Purpose.SIGN, items, self._items.verify)

    def mac(self, key_id: str, message: bytes, *, fit: AlgorithmFit | None = None) -> MACed:
        return self._on_key(
            key_id,
            Purpose.MAC,
            lambda key: self._items.mac(key, self._request(key), message),
            fit=fit,
        )

    def verify_mac(
        self,
        key_id: str,
        message: bytes,
        mac: bytes,
        version: int | None = None,
        *,
        fit: AlgorithmFit | None = None,
    ) -> Verified:
        """Check a MAC against ``version`` only, or the newest ``verify_max_versions`` versions."""
        verified: Verified = self._on_key(
            key_id,
            Purpose.MAC,
            lambda key: self._items.verify_mac(key, self._request(key), message, mac, version),
            failed=stale_result,
            fit=fit,
        )
        return verified

    def public_key(self, key_id: str, version: int | None = None) -> PublicKeyInfo:
        """The public half of a signing key or an RSA-OAEP encryption key. Handing it out is a
        use of the key (whoever fetches it means to verify or encrypt with it): refused while
        disabled or pending deletion, and below ``min_decryption_version``."""
        key = self._usable(self._trust.get(key_id), None)
        if key.algorithm not in PUBLIC_KEY_ALGORITHMS:
            raise PurposeMismatch(f"key {key.key_id} ({key.algorithm}) has no public key")
        version = key.latest_version if version is None else version
        if version < key.min_decryption_version:
            raise VersionBelowMinimum()
        return PublicKeyInfo(
            key_id=key.key_id,
            version=version,
            algorithm=key.algorithm,
            public_key=public_key_pem(self._material.public_key_der(key, version)),
        )

    @staticmethod
    def random_bytes(count: int) -> bytes:
        """``count`` bytes (1..MAX_RANDOM_BYTES) from the operating system's CSPRNG."""
        return secrets.token_bytes(validate_random_bytes(count))

    def check_batch_size(self, count: int) -> None:
        """Raise ``InvalidRequest`` unless a batch of ``count`` items is allowed.

        The API calls it before parsing the items, so an oversized batch costs no more than
        reading its body; every batch method calls it again.
        """
        if count < 1:
            raise InvalidRequest("batch: must hold at least one item")
        if count > self._max_batch_items:
            raise InvalidRequest(
                f"batch: at most {self._max_batch_items} items (server.max_batch_items)"
            )

    # -- the key row of an operation, cached ------------------------------------------------

    def _request(self, key: KeyRecord) -> RequestMaterial:
        return RequestMaterial(self._material, key)

    def _on_key(
        self,
        key_id: str,
        purpose: Purpose,
        operation: Callable[[KeyRecord], T],
        failed: Callable[[T], bool] | None = None,
        again: Callable[[KeyRecord, T], T] | None = None,
        *,
        fit: AlgorithmFit | None = None,
    ) -> T:
        """``operation`` on the key's row: the cached row if there is one still valid
        (``KeyRowCache``), else the row read now.

        A cached row may be up to ``kms.cache_staleness_ms`` old. Encrypting or signing under it
        is safe (an older latest version still decrypts and verifies everywhere); failing is
        not: when ``operation`` fails the way a stale row would make it fail (a version the row
        does not know yet, a version row of another incarnation, or a result ``failed`` calls a
        failure), the row is read again and, if it changed, the operation is done once more
        on the new row (``again``, given the first result, redoes only what failed). So a
        client never sees "invalid" only because this worker had not yet seen a change.
        """
        key_id = validate_key_id(key_id)
        cached = self._trust.cached(key_id)
        key = self._usable(cached if cached is not None else self._trust.read(key_id), purpose, fit)
        try:
            result = operation(key)
        except STALE_SYMPTOMS as error:
            if cached is None and not isinstance(error, StaleRow):
                raise
            fresh = self._changed_row(key, purpose, fit)
            if fresh is None:
                if isinstance(error, StaleRow):
                    raise KeyChanged() from None
                raise
            return self._once_more(operation, fresh)
        if cached is not None and failed is not None and failed(result):
            fresh = self._changed_row(key, purpose, fit)
            if fresh is not None:
                if again is None:
                    return self._once_more(operation, fresh)
                return self._once_more(lambda current: again(current, result), fresh)
        return result

    @staticmethod
    def _once_more(operation: Callable[[KeyRecord], T], key: KeyRecord) -> T:
        try:
            return operation(key)
        except StaleRow:  # changed again meanwhile: the client retries
            raise KeyChanged() from None

    def _row(self, key_id: str) -> KeyRecord:
        """The key's cached row if there is one still valid, else the row read now."""
        cached = self._trust.cached(key_id)
        return cached if cached is not None else self._trust.read(key_id)

    def _changed_row(
        self, key: KeyRecord, purpose: Purpose | None, fit: AlgorithmFit | None
    ) -> KeyRecord | None:
        fresh = self._trust.reread(key)
        return None if fresh is None else self._usable(fresh, purpose, fit)

    def _batch(
        self,
        key_id: str,
        purpose: Purpose,
        items: Sequence[BatchItem],
        one: Callable[..., Any],
        *,
        encrypting: bool = False,
    ) -> list[Any]:
        """A batch on one key row: ``one(key, material, **item)`` per item (see ``each``);
        items that failed as a stale row would make them fail are redone on the new row."""
        self.check_batch_size(len(items))

        def run(key: KeyRecord, subset: Sequence[BatchItem]) -> list[Any]:
            if encrypting:
                key = self._limits.encrypting(key, len(subset))
            material = self._request(key)
            return each(subset, lambda item: one(key, material, **item))

        def failed(results: list[Any]) -> bool:
            return any(stale_result(result) for result in results)

        def again(fresh: KeyRecord, results: list[Any]) -> list[Any]:
            redo = [index for index, result in enumerate(results) if stale_result(result)]
            merged = list(results)
            for index, result in zip(redo, run(fresh, [items[i] for i in redo]), strict=True):
                merged[index] = result
            return merged

        return self._on_key(key_id, purpose, lambda key: run(key, items), failed, again)

    def _usable(
        self, key: KeyRecord, purpose: Purpose | None, fit: AlgorithmFit | None = None
    ) -> KeyRecord:
        """A checked key row, for a cryptographic operation (``rules.require_usable``); a use
        while pending deletion is recorded on the key before it is refused."""
        try:
            return rules.require_usable(key, purpose, fit)
        except KeyPendingDeletion:
            self._record_use_attempt(key)
            raise

    def _record_use_attempt(self, key: KeyRecord) -> None:
        requester = CURRENT_REQUESTER.get()
        attempt = {
            "at": self._clock().isoformat(),
            "caller": "-" if requester is None else requester.caller,
            "operation": "-" if requester is None else requester.operation,
        }
        try:
            self._repository.record_use_attempt(key.key_id, key.incarnation, json.dumps(attempt))
        except StoreUnavailable:
            # The refusal matters more than its bookkeeping: still answer 409.
            lifecycle_log.warning("could not record a use attempt of key %r", key.key_id)
        # INFO, not WARNING: a caller retrying in a loop must not flood the log; the count and
        # the last attempt are on the key, and the audit log has every request.
        lifecycle_log.info(
            "key %r is pending deletion and was asked to %s by %s",
            key.key_id,
            attempt["operation"],
            attempt["caller"],
        )


def stale_result(result: Any) -> bool:
    """A result a stale key row may have caused: an invalid signature or MAC, a ciphertext
    refused (a batch: any item so)."""
    if isinstance(result, list):
        return any(stale_result(item) for item in result)
    if isinstance(result, Verified):
        return not result.valid
    return isinstance(result, InvalidCiphertext | VersionBelowMinimum)


def each(items: Sequence[BatchItem], one: Callable[[Mapping[str, Any]], Any]) -> list[Any]:
    """``one`` for every item, in order; an item's own failure becomes its result.

    Only the errors a single call answers with a 4xx about its own input are kept per item; a
    state of the key (disabled, pending deletion) or a fault of the server or the database
    (integrity failure, storage unavailable) still fails the whole batch, as it would the
    single call.
    """
    results: list[Any] = []
    for item in items:
        if isinstance(item, KMSError):
            results.append(item)
            continue
        try:
            results.append(one(item))
        except (InvalidRequest, InvalidCiphertext, VersionBelowMinimum) as error:
            # VersionBelowMinimum is the item's own: its signature is that old.
            results.append(error)
    return results
