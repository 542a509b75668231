"""AWS KMS's JSON protocol spoken to the app in process (Flask's test client), as boto3 speaks it
over HTTPS: for the tests that check kms's answers without AWS's clients (tests/helpers/aws.py
has those)."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient


def aws(client: FlaskClient, operation: str, **body: object) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as the AWS KMS ``operation``: the status and the decoded answer."""
    response = client.post(
        f"/v1/aws-kms/{operation}",
        data=json.dumps(body),
        headers={"Content-Type": "application/x-amz-json-1.1"},
    )
    return response.status_code, json.loads(response.data)
