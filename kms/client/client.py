"""``KMSClient``: the kms HTTP API over mutual TLS, one method per endpoint.

One ``urllib3.PoolManager`` holds the HTTPS connections (kept alive, so a call does not pay a TLS
handshake); it is thread-safe, so one client serves every thread of a process. Every call has a
timeout. Retries: a connection that could not be made is retried for every call (the request
never reached the server); a 503 or a connection lost mid-call is retried only for calls that may
safely run twice (reads, encrypt, decrypt, rewrap, sign, verify, MACs, random, data keys, delete,
the state changes), never for create, rotate, recreate, scheduling or cancelling a deletion.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from urllib3.exceptions import HTTPError as URLLib3Error
from urllib3.util import Retry, Timeout

from kms.client.errors import ConnectionFailed, KeyNotFoundError, KMSClientError, error_for
from kms.client.files import (
    DEFAULT_CHUNK_SIZE,
    Source,
    decrypt_stream,
    encrypt_stream,
    opened_destination,
    opened_source,
    rewrap_stream,
)
from kms.client.models import MAC, DataKey, Encrypted, Key, KeyVersion, PublicKey, Signature

JSON = "application/json"
#: On a page of keys that is not the last: the ``after`` of the next page (lower case, as the
#: headers ``_call`` hands back).
NEXT_AFTER_HEADER = "kms-next-after"
DEFAULT_TIMEOUT = Timeout(connect=5.0, read=30.0)
DEFAULT_RETRIES = 3
_BACKOFF = 0.2


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class KMSClient:
    """A client of one kms server.

    ``cert`` is the client certificate and its key (PEM files), ``ca`` the CA file that signed
    the server's certificate. Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        base_url: str,
        cert: tuple[str | Path, str | Path],
        ca: str | Path,
        *,
        timeout: float | Timeout = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        pool_size: int = 10,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout if isinstance(timeout, Timeout) else Timeout(total=timeout)
        self._retries = retries
        certificate, key = cert
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(ca),
            cert_file=str(certificate),
            key_file=str(key),
            retries=False,
        )

    def __enter__(self) -> KMSClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.clear()

    def __repr__(self) -> str:
        return f"KMSClient({self.base_url!r})"

    # -- keys -------------------------------------------------------------------------------

    def create_key(
        self, key_id: str | None = None, purpose: str = "encrypt", algorithm: str | None = None
    ) -> Key:
        body: dict[str, Any] = {"purpose": purpose}
        if key_id is not None:
            body["key_id"] = key_id
        if algorithm is not None:
            body["algorithm"] = algorithm
        return Key.from_json(self._call("POST", "/v1/kms/keys", body, idempotent=False))

    def list_keys(
        self,
        limit: int = 100,
        after: str | None = None,
        *,
        state: str | None = None,
        label: tuple[str, str] | None = None,
    ) -> list[Key]:
        """One page, ordered by key_id; ``state`` and ``label`` (name, value) filter it."""
        return self.list_keys_page(limit, after, state=state, label=label)[0]

    def list_keys_page(
        self,
        limit: int = 100,
        after: str | None = None,
        *,
        state: str | None = None,
        label: tuple[str, str] | None = None,
    ) -> tuple[list[Key], str | None]:
        """One page and where the next one starts (None after the last page). A page may be
        short, even empty, and still not be the last: the server reads at most 1,000 keys per
        request."""
        query: dict[str, Any] = {"limit": limit}
        if after is not None:
            query["after"] = after
        if state is not None:
            query["state"] = state
        if label is not None:
            query["label"] = f"{label[0]}:{label[1]}"
        headers: dict[str, str] = {}
        items = self._call("GET", "/v1/kms/keys", query=query, response_headers=headers)
        return [Key.from_json(item) for item in items], headers.get(NEXT_AFTER_HEADER)

    def iter_keys(
        self,
        page_size: int = 100,
        *,
        state: str | None = None,
        label: tuple[str, str] | None = None,
    ) -> Iterator[Key]:
        """Every key the caller may read, page by page."""
        after: str | None = None
        while True:
            page, after = self.list_keys_page(page_size, after, state=state, label=label)
            yield from page
            if after is None:
                return

    def get_key(self, key_id: str) -> Key:
        return Key.from_json(self._call("GET", self._key_path(key_id)))

    def list_versions(
        self, key_id: str, limit: int = 100, after: int | None = None
    ) -> list[KeyVersion]:
        query = {"limit": limit, **({"after": after} if after is not None else {})}
        answer = self._call("GET", self._key_path(key_id, "versions"), query=query)
        return [KeyVersion.from_json(item) for item in answer]

    def public_key(self, key_id: str, version: int | None = None) -> PublicKey:
        query = {"version": version} if version is not None else None
        answer = self._call("GET", self._key_path(key_id, "public-key"), query=query)
        return PublicKey(**answer)

    def delete_key(self, key_id: str) -> None:
        """Destroy the key and every version now."""
        self._call("DELETE", self._key_path(key_id))

    def schedule_key_deletion(self, key_id: str, pending_days: int) -> Key:
        """``DELETE ?pending_days=N``: the key is ``pending_deletion`` (every use refused) and
        ``kms destroy-due`` destroys it once the window passed, unless it is cancelled."""
        query = {"pending_days": pending_days}
        answer = self._call("DELETE", self._key_path(key_id), query=query, idempotent=False)
        return Key.from_json(answer)

    def cancel_key_deletion(self, key_id: str) -> Key:
        """The key is then ``disabled``; ``enable_key`` makes it usable again."""
        answer = self._call("POST", self._key_path(key_id, "cancel-deletion"), idempotent=False)
        return Key.from_json(answer)

    def update_key(
        self,
        key_id: str,
        *,
        description: str | None = None,
        labels: Mapping[str, str] | None = None,
        min_decryption_version: int | None = None,
        deletion_allowed: bool | None = None,
    ) -> Key:
        """Change what is given (``labels`` replaces them all); leave the rest as it is."""
        given = {
            "description": description,
            "labels": dict(labels) if labels is not None else None,
            "min_decryption_version": min_decryption_version,
            "deletion_allowed": deletion_allowed,
        }
        body = {name: value for name, value in given.items() if value is not None}
        return Key.from_json(self._call("PATCH", self._key_path(key_id), body))

    def disable_key(self, key_id: str) -> Key:
        return Key.from_json(self._call("POST", self._key_path(key_id, "disable")))

    def enable_key(self, key_id: str) -> Key:
        return Key.from_json(self._call("POST", self._key_path(key_id, "enable")))

    def trim_key(self, key_id: str, min_available_version: int) -> Key:
        """Destroy the versions below ``min_available_version`` (at most min_decryption_version)."""
        body = {"min_available_version": min_available_version}
        return Key.from_json(self._call("POST", self._key_path(key_id, "trim"), body))

    def rotate_key(self, key_id: str) -> Key:
        return Key.from_json(self._call("POST", self._key_path(key_id, "rotate"), idempotent=False))

    def recreate_key(self, key_id: str) -> Key:
        answer = self._call("POST", self._key_path(key_id, "recreate"), idempotent=False)
        return Key.from_json(answer)

    # -- cryptography -----------------------------------------------------------------------

    def encrypt(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None = None
    ) -> str:
        """The ciphertext (``vN:...`` base64) of ``plaintext`` under the key's latest version."""
        return self.encrypt_detailed(key_id, plaintext, context).ciphertext

    def encrypt_detailed(
        self, key_id: str, plaintext: bytes, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        body = self._with_context({"key_id": key_id, "plaintext": _b64(plaintext)}, context)
        return Encrypted(**self._call("POST", "/v1/kms/encrypt", body))

    def decrypt(
        self,
        key_id: str,
        ciphertext: str,
        context: Mapping[str, str] | None = None,
        *,
        version: int | None = None,
    ) -> bytes:
        """``version``: RSA-OAEP keys only; ``ciphertext`` is then the base64 of a raw OAEP
        ciphertext made with that version's public key."""
        body = self._with_context({"key_id": key_id, "ciphertext": ciphertext}, context)
        if version is not None:
            body["version"] = version
        return _unb64(self._call("POST", "/v1/kms/decrypt", body)["plaintext"])

    def rewrap(
        self, key_id: str, ciphertext: str, context: Mapping[str, str] | None = None
    ) -> Encrypted:
        """``ciphertext`` decrypted and encrypted again under the key's latest version, inside
        kms: the plaintext never reaches the caller."""
        body = self._with_context({"key_id": key_id, "ciphertext": ciphertext}, context)
        return Encrypted(**self._call("POST", "/v1/kms/rewrap", body))

    def sign(
        self,
        key_id: str,
        message: bytes,
        *,
        signing_algorithm: str | None = None,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
    ) -> Signature:
        """``prehashed``: ``message`` is already a digest (``digest_algorithm`` names it)."""
        body = self._signing_body(
            key_id, message, signing_algorithm, prehashed, digest_algorithm, None
        )
        answer = self._call("POST", "/v1/kms/sign", body)
        return Signature(_unb64(answer["signature"]), answer["key_id"], answer["version"])

    def verify(
        self,
        key_id: str,
        message: bytes,
        signature: bytes,
        *,
        signing_algorithm: str | None = None,
        prehashed: bool = False,
        digest_algorithm: str | None = None,
        version: int | None = None,
        require_low_s: bool = False,
    ) -> bool:
        """True when ``signature`` is valid; with ``require_low_s`` (ECDSA keys), only in the
        low-s form kms signs in."""
        body = self._signing_body(
            key_id, message, signing_algorithm, prehashed, digest_algorithm, version
        )
        body["signature"] = _b64(signature)
        if require_low_s:
            body["require_low_s"] = True
        return self._call("POST", "/v1/kms/verify", body)["valid"] is True

    def mac(self, key_id: str, message: bytes) -> MAC:
        answer = self._call("POST", "/v1/kms/mac", {"key_id": key_id, "message": _b64(message)})
        return MAC(_unb64(answer["mac"]), answer["key_id"], answer["version"])

    def verify_mac(
        self, key_id: str, message: bytes, mac: bytes, *, version: int | None = None
    ) -> bool:
        body: dict[str, Any] = {"key_id": key_id, "message": _b64(message), "mac": _b64(mac)}
        if version is not None:
            body["version"] = version
        return self._call("POST", "/v1/kms/mac/verify", body)["valid"] is True

    def random(self, count: int) -> bytes:
        """``count`` (1..1024) bytes from the server's CSPRNG."""
        return _unb64(self._call("POST", "/v1/kms/random", {"bytes": count})["random"])

    def generate_data_key(
        self,
        key_id: str,
        *,
        bytes: int = 32,  # the API field's name, though it shadows the builtin
        context: Mapping[str, str] | None = None,
        include_plaintext: bool = True,
    ) -> DataKey:
        """A fresh data key from ``POST /v1/kms/datakey``: wrapped under ``key_id`` and, unless
        ``include_plaintext`` is false, in plaintext too."""
        body = self._with_context(
            {"key_id": key_id, "bytes": bytes, "include_plaintext": include_plaintext}, context
        )
        try:
            answer = self._call("POST", "/v1/kms/datakey", body)
        except KeyNotFoundError as error:
            if error.message == "not found":  # the route, not the key ("record not found")
                raise KMSClientError(
                    f"{self.base_url} does not serve POST /v1/kms/datakey (an older kms)", 404
                ) from None
            raise
        plaintext = answer.get("plaintext")
        return DataKey(
            ciphertext=answer["ciphertext"],
            key_id=answer["key_id"],
            version=answer["version"],
            plaintext=_unb64(plaintext) if plaintext is not None else None,
        )

    # -- files (see kms.client.files for the format) ------------------------------------------

    def encrypt_file(
        self,
        key_id: str,
        src: Source,
        dst: Source,
        context: Mapping[str, str] | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> int:
        """Encrypt a file (path or binary file object) locally under one data key from kms;
        the number of plaintext bytes. Memory use does not grow with the file."""
        with opened_source(src) as reader, opened_destination(dst) as writer:
            return encrypt_stream(
                self, key_id, reader, writer, context=context, chunk_size=chunk_size
            )

    def decrypt_file(
        self,
        src: Source,
        dst: Source,
        *,
        expected_key_id: str | None = None,
        expected_context: Mapping[str, str] | None = None,
    ) -> int:
        """Decrypt what ``encrypt_file`` wrote (format version 2, or 1 from an older client);
        raises ``InvalidCiphertextError`` for a file that was cut, reordered, spliced or changed
        (a path ``dst`` is then left untouched). Given ``expected_key_id`` or
        ``expected_context``, a header that names another key or context raises
        ``UnexpectedHeaderError`` before kms is asked: without them, the file chooses the key."""
        with opened_source(src) as reader, opened_destination(dst) as writer:
            return decrypt_stream(
                self,
                reader,
                writer,
                expected_key_id=expected_key_id,
                expected_context=expected_context,
            )

    def rewrap_file(
        self,
        path: str | os.PathLike[str],
        *,
        expected_key_id: str | None = None,
        expected_context: Mapping[str, str] | None = None,
    ) -> Encrypted:
        """Re-wrap the data key of the version 2 file at ``path`` under its key's latest version
        (``POST /v1/kms/rewrap``), in place and atomically: a new file is written beside it,
        with the chunks copied unread, and renamed over it only once the new wrapped key was
        checked to open this file (one ``/decrypt``). Afterwards the file no longer needs the
        version that wrapped it before, so that version can be trimmed. Returns the new wrapped
        key's version. A version 1 file raises ``FileFormatError`` and is left as it is."""
        target = Path(path)
        with (
            opened_source(target) as reader,
            opened_destination(target, mode_of=target) as writer,
        ):
            return rewrap_stream(
                self,
                reader,
                writer,
                expected_key_id=expected_key_id,
                expected_context=expected_context,
            )

    # -- health -----------------------------------------------------------------------------

    def health(self) -> bool:
        return self._call("GET", "/healthz")["status"] == "ok"

    def ready(self) -> bool:
        return self._call("GET", "/readyz")["status"] == "ready"

    def metrics(self) -> str:
        return self._call("GET", "/metrics", raw=True).decode("utf-8")

    def openapi(self) -> dict[str, Any]:
        return self._call("GET", "/v1/kms/openapi.json")

    # -- the wire ---------------------------------------------------------------------------

    @staticmethod
    def _signing_body(
        key_id: str,
        message: bytes,
        signing_algorithm: str | None,
        prehashed: bool,
        digest_algorithm: str | None,
        version: int | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"key_id": key_id, "message": _b64(message)}
        if signing_algorithm is not None:
            body["signing_algorithm"] = signing_algorithm
        if prehashed:
            body["prehashed"] = True
        if digest_algorithm is not None:
            body["digest_algorithm"] = digest_algorithm
        if version is not None:
            body["version"] = version
        return body

    @staticmethod
    def _key_path(key_id: str, *rest: str) -> str:
        return "/".join(("/v1/kms/keys", quote(key_id, safe=""), *rest))

    @staticmethod
    def _with_context(body: dict[str, Any], context: Mapping[str, str] | None) -> dict[str, Any]:
        if context is not None:
            body["context"] = dict(context)
        return body

    def _retry(self, idempotent: bool) -> Retry:
        if idempotent:
            return Retry(
                total=self._retries,
                connect=self._retries,
                read=self._retries,
                status=self._retries,
                other=0,
                allowed_methods=None,  # every method: the caller decided it may run twice
                status_forcelist=(503,),
                backoff_factor=_BACKOFF,
                respect_retry_after_header=True,
                raise_on_status=False,
                raise_on_redirect=False,
                redirect=0,
            )
        # Only a connection that was never made: the request cannot have been processed.
        return Retry(
            total=self._retries,
            connect=self._retries,
            read=0,
            status=0,
            other=0,
            backoff_factor=_BACKOFF,
            raise_on_status=False,
            raise_on_redirect=False,
            redirect=0,
        )

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        raw: bool = False,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        """The answer's JSON (``raw``: its bytes); ``response_headers``, if given, receives the
        answer's headers, their names in lower case."""
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": JSON}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = JSON
        try:
            response = self._pool.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=self._timeout,
                retries=self._retry(idempotent),
            )
        except URLLib3Error as error:
            raise ConnectionFailed(f"cannot reach {self.base_url}: {error}") from None
        if response.status >= 400:
            raise error_for(
                response.status, _error_message(response.data), response.headers.get("Retry-After")
            )
        if response_headers is not None:
            response_headers.update(
                (name.lower(), value) for name, value in response.headers.items()
            )
        if raw:
            return response.data
        if response.status == 204:
            return None
        try:
            return json.loads(response.data)
        except ValueError:
            raise KMSClientError("the server's answer is not JSON", response.status) from None


def _error_message(data: bytes) -> str:
    try:
        message = json.loads(data).get("error")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) and message else "error"
