"""The AWS Encryption SDK for Python, unchanged, against a real kms over mutual TLS: its master key
provider (and the keyring of its material providers library) encrypt with keys kms serves, by ARN,
and decrypt again; tampering and a wrong encryption context are refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_encryption_sdk
import pytest
from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
from aws_cryptographic_material_providers.mpl.models import CreateAwsKmsKeyringInput
from aws_encryption_sdk import CommitmentPolicy, StrictAwsKmsMasterKeyProvider
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from cryptography.exceptions import InvalidTag

from tests.helpers.aws import aws_environment, botocore_session, kms_client
from tests.helpers.harness import (
    Deployment,
    KMSClient,
    ServerProcess,
    b64,
    expect_json,
    prepare_deployment,
)
from tests.helpers.identities import running_server

pytestmark = pytest.mark.slow

DOC = Path(__file__).parents[2] / "docs" / "aws-kms.md"
CONTEXT = {"tenant": "acme", "document": "invoice-42"}
MESSAGE = b"a message the Encryption SDK encrypts through kms" * 20


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return prepare_deployment(tmp_path_factory.mktemp("kms-esdk"))


@pytest.fixture(scope="module")
def server(deployment: Deployment) -> Iterator[ServerProcess]:
    with running_server(deployment) as server, aws_environment(deployment):
        yield server


@pytest.fixture(scope="module")
def key_arns(server: ServerProcess) -> list[str]:
    kms = kms_client(server.deployment)
    return [kms.create_key(Description=f"esdk {n}")["KeyMetadata"]["Arn"] for n in (1, 2)]


@pytest.fixture(scope="module")
def sdk() -> aws_encryption_sdk.EncryptionSDKClient:
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )


def provider(deployment: Deployment, arns: list[str]) -> StrictAwsKmsMasterKeyProvider:
    return StrictAwsKmsMasterKeyProvider(
        key_ids=arns, botocore_session=botocore_session(deployment)
    )


def test_a_message_round_trips_with_its_context(
    sdk: Any, server: ServerProcess, key_arns: list[str]
) -> None:
    keys = provider(server.deployment, key_arns[:1])
    ciphertext, header = sdk.encrypt(source=MESSAGE, key_provider=keys, encryption_context=CONTEXT)
    assert MESSAGE not in ciphertext
    assert [key.key_provider.key_info.decode() for key in header.encrypted_data_keys] == key_arns[
        :1
    ]
    plaintext, decrypted_header = sdk.decrypt(source=ciphertext, key_provider=keys)
    assert plaintext == MESSAGE
    assert {k: decrypted_header.encryption_context[k] for k in CONTEXT} == CONTEXT


def test_a_tampered_message_is_refused(
    sdk: Any, server: ServerProcess, key_arns: list[str]
) -> None:
    keys = provider(server.deployment, key_arns[:1])
    ciphertext, header = sdk.encrypt(source=MESSAGE, key_provider=keys, encryption_context=CONTEXT)
    # The body: the SDK's own authentication refuses it.
    tampered = bytearray(ciphertext)
    tampered[-200] ^= 1
    with pytest.raises((AWSEncryptionSDKClientError, InvalidTag)):
        sdk.decrypt(source=bytes(tampered), key_provider=keys)
    # The encrypted data key, kms's ciphertext blob: kms refuses to decrypt it.
    (data_key,) = header.encrypted_data_keys
    blob = data_key.encrypted_data_key
    assert ciphertext.count(blob) == 1
    edited_blob = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(AWSEncryptionSDKClientError, match="[Dd]ecrypt"):
        sdk.decrypt(source=ciphertext.replace(blob, edited_blob), key_provider=keys)


def test_a_wrong_context_is_refused(sdk: Any, server: ServerProcess, key_arns: list[str]) -> None:
    keys = provider(server.deployment, key_arns[:1])
    ciphertext, _ = sdk.encrypt(source=MESSAGE, key_provider=keys, encryption_context=CONTEXT)
    # The SDK stores the context in the message; one changed there no longer opens the data key.
    edited = ciphertext.replace(b"invoice-42", b"invoice-43")
    assert edited != ciphertext
    with pytest.raises(AWSEncryptionSDKClientError):
        sdk.decrypt(source=edited, key_provider=keys)


def test_two_kms_keys_each_decrypt_alone(
    sdk: Any, server: ServerProcess, key_arns: list[str]
) -> None:
    both = provider(server.deployment, key_arns)
    ciphertext, header = sdk.encrypt(source=MESSAGE, key_provider=both, encryption_context=CONTEXT)
    # GenerateDataKey with the first key, Encrypt with the second.
    assert len(header.encrypted_data_keys) == 2
    for arn in key_arns:
        plaintext, _ = sdk.decrypt(
            source=ciphertext, key_provider=provider(server.deployment, [arn])
        )
        assert plaintext == MESSAGE


def test_a_key_the_message_was_not_made_with_cannot_decrypt_it(
    sdk: Any, server: ServerProcess, key_arns: list[str]
) -> None:
    ciphertext, _ = sdk.encrypt(
        source=MESSAGE,
        key_provider=provider(server.deployment, key_arns[:1]),
        encryption_context=CONTEXT,
    )
    with pytest.raises(AWSEncryptionSDKClientError):
        sdk.decrypt(source=ciphertext, key_provider=provider(server.deployment, key_arns[1:]))


def test_the_keyring_of_the_material_providers_library(
    sdk: Any, server: ServerProcess, key_arns: list[str]
) -> None:
    providers = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
    keyring = providers.create_aws_kms_keyring(
        input=CreateAwsKmsKeyringInput(
            kms_key_id=key_arns[0], kms_client=kms_client(server.deployment)
        )
    )
    ciphertext, _ = sdk.encrypt(source=MESSAGE, keyring=keyring, encryption_context=CONTEXT)
    plaintext, _ = sdk.decrypt(source=ciphertext, keyring=keyring)
    assert plaintext == MESSAGE
    # The master key provider reads what the keyring wrote.
    plaintext, _ = sdk.decrypt(
        source=ciphertext, key_provider=provider(server.deployment, key_arns[:1])
    )
    assert plaintext == MESSAGE


def test_the_examples_of_docs_aws_kms_md_run(server: ServerProcess) -> None:
    """Each Python block of the page, in order, in one namespace, against this server."""
    deployment = server.deployment
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 4
    namespace: dict[str, Any] = {}
    for block in blocks:
        code = block.replace("https://localhost:8080", deployment.base_url)
        code = code.replace("./secrets/", f"{deployment.directory}/")
        exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own document
    # The blob helpers: a native ciphertext decrypts through AWS, and the other way round.
    native = KMSClient(deployment)
    kms = namespace["kms"]
    key_id = namespace["key_arn"].rsplit("/", 1)[1]
    encrypted = expect_json(
        native.post("/v1/kms/encrypt", json={"key_id": key_id, "plaintext": b64(b"doc")}), 200
    )
    blob = namespace["blob_from_native"](key_id, encrypted["ciphertext"])
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"doc"
    named, ciphertext = namespace["native_from_blob"](
        kms.encrypt(KeyId=key_id, Plaintext=b"back")["CiphertextBlob"]
    )
    assert named == key_id
    opened = expect_json(
        native.post("/v1/kms/decrypt", json={"key_id": key_id, "ciphertext": ciphertext}), 200
    )
    assert opened["plaintext"] == b64(b"back")
    native.close()
