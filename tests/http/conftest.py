"""The AWS KMS endpoint's server, shared by the test modules that drive it with boto3
(test_aws_kms.py, test_aws_kms_aliases.py): one real gunicorn with mutual TLS and the policy
below, started once per session, so the second module costs no server start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.harness import Deployment, ServerProcess, prepare_deployment
from tests.helpers.identities import running_server

AWS_POLICY = """\
clients:
  orchestrator:
    - operations: ["*"]
      keys: ["*"]
  aws-encrypt-only:
    - operations: ["encrypt", "datakey", "keys:read"]
      keys: ["*"]
  aws-rewrap:
    - operations: ["rewrap", "encrypt"]
      keys: ["src-*"]
  aws-aliases:
    - operations: ["aliases:create", "aliases:update", "aliases:delete", "keys:read", "encrypt"]
      keys: ["team-*"]
"""


@pytest.fixture(scope="session")
def aws_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    directory = tmp_path_factory.mktemp("kms-aws")
    (directory / "policy.yaml").write_text(AWS_POLICY, encoding="utf-8")
    return prepare_deployment(
        directory, authorization={"policy_file": str(directory / "policy.yaml")}
    )


@pytest.fixture(scope="session")
def aws_server(aws_deployment: Deployment) -> Iterator[ServerProcess]:
    with running_server(aws_deployment) as server:
        yield server
