"""The batch form of the crypto RPCs: ``{key_id, batch: [item, ...]}`` -> ``{"results": [...]}``.

Each item holds the fields of the single call but key_id and is loaded by the single call's
schema (without key_id, through ``schemas.fast_load``), one at a time: an item that does not load
keeps its place in the results as the error the single call would answer, and the others go on.
The key, its purpose and its state are the service's to check, once for the whole batch.

``SingleOrBatch`` is the one place a view tells the two forms apart: the single call's body is
loaded by its schema (through ``schemas.fast_load`` too) and passed straight to the service,
whose keywords are the schema's fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from flask import Response, g
from marshmallow import Schema, ValidationError

from kms.api import schemas
from kms.api.context import (
    answer,
    crypto_answer,
    json_body,
    note_algorithm,
    note_refused_decryptions,
    service,
)
from kms.api.errors import batch_item_error, describe_validation_error
from kms.errors import InvalidRequest, KMSError
from kms.service.keys import BatchItem

#: The field that makes a request a batch; no single call has it.
BATCH = "batch"

R = TypeVar("R")
ItemLoader = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class SingleOrBatch(Generic[R]):
    """A crypto call that also takes a batch: how each form is loaded and its results dumped."""

    #: The single call's body; its fields are the service method's keywords, key_id included.
    request: Schema
    dump: Callable[[R], dict[str, Any]]
    #: A batch item: the single call's fields but key_id (a ``schemas.fast_load``).
    load_item: ItemLoader
    dump_item: Callable[[R], dict[str, Any]]
    #: ``request.load`` through the batch items' loader (``schemas.fast_load``): marshmallow's
    #: ``load`` was 3.6% of an in-process encrypt (docs/performance.md).
    load: ItemLoader = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "load", schemas.fast_load(self.request))

    def answer(
        self,
        call: Callable[..., R],
        call_batch: Callable[[str, Sequence[BatchItem]], Sequence[R | KMSError]],
    ) -> Response:
        """Answer the request's body: ``call(**body)`` for a single call, ``call_batch`` for a
        batch."""
        body = json_body()
        if is_batch(body):
            return run_batch(body, self.load_item, call_batch, self.dump_item)
        result = call(**self.load(body))
        return crypto_answer(result, self.dump(result))


def is_batch(body: dict[str, Any]) -> bool:
    return BATCH in body


def run_batch(
    body: dict[str, Any],
    load_item: ItemLoader,
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
    if len(done) < len(results):
        note_refused_decryptions([result for result in results if isinstance(result, KMSError)])
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


def _load_item(load_item: ItemLoader, raw: Any) -> BatchItem:
    if not isinstance(raw, dict):
        return InvalidRequest("batch item must be a JSON object")
    try:
        return load_item(raw)
    except ValidationError as error:
        return InvalidRequest(describe_validation_error(error))
