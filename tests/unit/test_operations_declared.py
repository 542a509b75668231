"""``@operation`` (kms.api.operations): a view declares the operation names the policy judges
it by, and a name the policy file cannot grant is refused when the view is declared, not found
later as a route nobody may call."""

from __future__ import annotations

import pytest

from kms.api.docs import documented
from kms.api.operations import KNOWN_OPERATIONS, operation


def test_a_declared_operation_and_its_field_s_operation_must_be_known() -> None:
    assert {"verify", "mac:verify"} <= KNOWN_OPERATIONS
    operation("verify", when_field=("hmac", "mac:verify"))  # both known: declared
    with pytest.raises(ValueError, match="'verify:typo'"):
        operation("verify:typo")
    with pytest.raises(ValueError, match="'mac:typo'"):
        operation("verify", when_field=("hmac", "mac:typo"))
    # A health check is judged by no rule: its name need not be one the policy grants.
    operation("anything", needs_policy=False)


def test_a_json_success_without_its_schema_is_refused_when_documented() -> None:
    """``@documented`` (kms.api.docs): docs/openapi.json describes every JSON answer, so a view
    that answers JSON must name its schema; a 204 or a non-JSON answer (/metrics) need not."""
    with pytest.raises(ValueError, match="'Read a thing': a JSON success response needs"):
        documented("Read a thing")
    documented("Delete a thing", status=204)
    documented("Metrics", content_type="text/plain")
