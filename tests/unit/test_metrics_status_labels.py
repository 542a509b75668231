"""Every status kms answers by design is a label of its own in ``kms_http_requests_total``
(docs/operations.md, bounded series: "a `status` kms does not answer by design counts as its
class"): each status the API description documents, each the error map answers, and the routing's
405 (tests/unit/test_metric_labels.py keeps the set closed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kms.api.errors import STATUS_BY_ERROR
from kms.api.metrics import status_label

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def answered_by_design() -> list[int]:
    described = json.loads(OPENAPI.read_text(encoding="utf-8"))
    documented = {
        int(status)
        for operations in described["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for status in operation.get("responses", {})
    }
    return sorted(documented | {status for _, status in STATUS_BY_ERROR} | {405})


@pytest.mark.parametrize("status", answered_by_design())
def test_a_status_kms_answers_is_named(status: int) -> None:
    assert status_label(status) == str(status)
