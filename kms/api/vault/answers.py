"""How the Vault routes answer: Vault's envelope, its key description, and its batches.

Every answer with a body is Vault's envelope (``envelope``), ``Content-Type: application/json``::

    {"request_id": "<uuid>", "lease_id": "", "renewable": false, "lease_duration": 0,
     "data": {...}, "wrap_info": null, "warnings": null, "auth": null, "mount_type": "transit"}

A batch (``batch_input``) answers ``{"batch_results": [...]}`` in the order of its items, each
the single call's data plus the item's ``reference``, or ``{"error", "reference"}``; when an item
failed the whole answer is 400, with the same body (Vault's ``batch_results`` on a 400).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Response, g, jsonify
from marshmallow import Schema, ValidationError

from kms.api.context import note_algorithm
from kms.api.errors import describe_validation_error, vault_item_error
from kms.api.vault.wire import (
    PUBLIC_KEY_NAMES,
    TYPE_OF_ALGORITHM,
    period_seconds,
)
from kms.crypto.algorithms import ed25519_raw_public_key
from kms.errors import InvalidRequest, KMSError
from kms.service.keys import BatchItem, KeyInfo


def envelope(data: dict[str, Any] | None, warnings: list[str] | None = None) -> dict[str, Any]:
    return {
        "request_id": str(uuid.UUID(g.request_id)),
        "lease_id": "",
        "renewable": False,
        "lease_duration": 0,
        "data": data,
        "wrap_info": None,
        "warnings": warnings,
        "auth": None,
        "mount_type": "transit",
    }


def answer(
    data: dict[str, Any],
    *,
    version: int | None = None,
    algorithm: str | None = None,
    warnings: list[str] | None = None,
    status: int = 200,
) -> Response:
    """``data`` in the envelope. ``version`` (the key version the answer names) is noted for the
    audit line and ``algorithm`` for the metrics, as the native answers do."""
    g.kms_answered_version = version
    if algorithm is not None:
        note_algorithm(algorithm)
    response = jsonify(envelope(data, warnings))
    response.status_code = status
    return response


def no_content() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]
    return response


def key_data(key: KeyInfo, public_keys: dict[int, str]) -> dict[str, Any]:
    """Vault's description of a key (``GET /v1/transit/keys/:name``).

    ``keys`` maps each of the newest versions (up to 100) to its creation time in Unix seconds,
    or for a key with a public half to ``{name, public_key, creation_time}``: PEM, or for Ed25519
    the raw key in base64, as Vault shows them; ``public_keys`` holds the PEMs by version
    (those not given, below min_decryption_version or of a disabled key, show "").
    """
    purpose = key.purpose
    public_name = PUBLIC_KEY_NAMES.get(key.algorithm)
    versions: dict[str, Any] = {}
    for version in key.key_versions:
        if public_name is None:
            versions[str(version.version)] = int(version.created_at.timestamp())
            continue
        pem = public_keys.get(version.version, "")
        shown = pem
        if pem and key.algorithm == "Ed25519":
            shown = base64.b64encode(ed25519_raw_public_key(pem)).decode("ascii")
        versions[str(version.version)] = {
            "name": public_name,
            "public_key": shown,
            "creation_time": version.created_at.isoformat().replace("+00:00", "Z"),
        }
    return {
        "name": key.key_id,
        "type": TYPE_OF_ALGORITHM.get(key.algorithm, key.algorithm),
        "derived": False,
        "exportable": False,
        "allow_plaintext_backup": False,
        "deletion_allowed": key.deletion_allowed,
        "keys": versions,
        "latest_version": key.version,
        "min_available_version": key.min_available_version,
        "min_decryption_version": key.min_decryption_version,
        "min_encryption_version": 0,
        "supports_encryption": purpose == "encrypt",
        "supports_decryption": purpose == "encrypt",
        "supports_derivation": False,
        "supports_signing": purpose == "sign",
        "imported_key": False,
        "auto_rotate_period": period_seconds(key.rotation_period),
    }


@dataclass(frozen=True)
class Item:
    """A batch item: its ``reference`` and the service call's keywords, or why it failed."""

    reference: str
    call: BatchItem


def load_items(raw_items: list[Any], schema: Schema) -> list[Item]:
    """Each item loaded alone, so that a bad one fails alone (its error keeps its place)."""
    if not raw_items:
        raise InvalidRequest("missing batch input to process")
    return [_load_item(raw, schema) for raw in raw_items]


def _load_item(raw: Any, schema: Schema) -> Item:
    if not isinstance(raw, dict):
        return Item("", InvalidRequest("batch item must be a JSON object"))
    reference = raw.get("reference")
    reference = reference if isinstance(reference, str) else ""
    try:
        loaded = schema.load(raw)
    except ValidationError as error:
        return Item(reference, InvalidRequest(describe_validation_error(error)))
    except KMSError as error:  # a malformed Vault ciphertext
        return Item(reference, error)
    loaded.pop("reference", None)
    return Item(reference, loaded)


def batch_answer(
    items: Sequence[Item],
    results: Sequence[Any],
    dump: Callable[[Any], dict[str, Any]],
) -> Response:
    """``batch_results`` in item order; 400 if any item failed (Vault's status for a batch with
    a failed item), with the same body."""
    answers: list[dict[str, Any]] = []
    done = [result for result in results if not isinstance(result, KMSError)]
    for item, result in zip(items, results, strict=True):
        if isinstance(result, KMSError):
            answers.append({"error": vault_item_error(result), "reference": item.reference})
        else:
            answers.append({**dump(result), "reference": item.reference})
    g.kms_items_done = len(done)
    return answer(
        {"batch_results": answers},
        algorithm=done[0].algorithm if done else None,
        status=400 if len(done) < len(results) else 200,
    )
