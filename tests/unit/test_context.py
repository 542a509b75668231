"""``answer``: the JSON answer, and the version it names noted for the audit line."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, g

from kms.api.context import answer


@pytest.mark.parametrize(
    ("document", "noted"),
    [
        ({"key_id": "k", "version": 3}, 3),
        ({"key_id": "k", "version": True}, None),  # JSON true is not a version
        ({"key_id": "k", "version": "3"}, None),
        ({"key_id": "k"}, None),
        ([{"version": 2}], None),  # a list's items name no version of the answer
    ],
)
def test_the_answered_version_is_an_integer_at_the_top_level(document: Any, noted: Any) -> None:
    with Flask(__name__).test_request_context():
        response = answer(document, 201)
        assert response.status_code == 201
        assert response.get_json() == document
        assert g.kms_answered_version == noted
