"""The batch form of the crypto RPCs: ``{key_id, batch: [item, ...]}`` -> ``{"results": [...]}``.

Each item holds the fields of the single call but key_id and is loaded by the single call's
schema (without key_id, through ``schemas.fast_load``), one at a time: an item that does not load
keeps its place in the results as the error the single call would answer, and the others go on.
The key, its purpose and its state are the service's to check, once for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flask import Response, g
from marshmallow import ValidationError

from kms.api import schemas
from kms.api.context import answer, note_algorithm, service
from kms.api.errors import batch_item_error, describe_validation_error
from kms.errors import InvalidRequest, KMSError
from kms.service.keys import BatchItem

#: The field that makes a request a batch; no single call has it.
BATCH = "batch"


def is_batch(body: dict[str, Any]) -> bool:
    return BATCH in body


def run_batch(
    body: dict[str, Any],
    load_item: Callable[[dict[str, Any]], dict[str, Any]],
    call: Callable[[str, Sequence[BatchItem]], Sequence[Any]],
    dump: Callable[[Any], dict[str, Any]],
) -> Response:
    envelope = schemas.batch_request.load(body)
    raw_items = envelope[BATCH]
    service().check_batch_size(len(raw_items))  # before parsing a single item
    results = call(envelope["key_id"], [_load_item(load_item, raw) for raw in raw_items])
    # For the metrics: a batch is as many operations as items that succeeded.
    done = [result for result in results if not isinstance(result, KMSError)]
    g.kms_items_done = len(done)
    if done:
        note_algorithm(done[0].algorithm)  # one key for the whole batch
    return answer(
        {
            "results": [
                batch_item_error(result) if isinstance(result, KMSError) else dump(result)
                for result in results
            ]
        }
    )


def _load_item(load_item: Callable[[dict[str, Any]], dict[str, Any]], raw: Any) -> BatchItem:
    if not isinstance(raw, dict):
        return InvalidRequest("batch item must be a JSON object")
    try:
        return load_item(raw)
    except ValidationError as error:
        return InvalidRequest(describe_validation_error(error))
