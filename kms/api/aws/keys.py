"""Keys as AWS KMS names and describes them, and its ciphertext blobs.

**Key identifiers.** A kms key's AWS ``KeyId`` is its ``key_id`` (CreateKey mints a UUID, as AWS
does). A request may name it four ways: ``<key_id>``,
``arn:aws:kms:<region>:<account>:key/<key_id>``, ``alias/<name>`` and
``arn:aws:kms:<region>:<account>:alias/<name>``. An alias is one made with CreateAlias or, failing
that, the alias of a key's own ``key_id`` (every key has it, so a native
key such as ``device123`` is ``alias/device123``): kms.service.keys.aliases. An ARN of another
region or account names no key of this server (``NotFoundException``). Answers name keys by
ARN, the form the AWS Encryption SDK requires.

**Ciphertext blobs.** AWS's ``CiphertextBlob`` is opaque to its clients; Decrypt must find the
key from it alone. kms's blob is the native ciphertext with the key id in front::

    "kms-aws:1:" || u16(len(key_id)) || key_id (UTF-8) || native

where ``native`` is the base64-decoded native ciphertext (``"v<N>:" || nonce || ciphertext ||
tag``, kms.crypto.ciphertext) and ``u16`` two bytes big-endian. So
``base64(native)`` is what ``POST /v1/kms/decrypt`` takes for that key, and a native ciphertext
becomes a blob by putting the header in front (docs/aws-kms.md). The key id is not secret and
need not be authenticated here: the native ciphertext's associated data binds the key id, so a
blob relabelled with another key's id does not decrypt.
"""

from __future__ import annotations

import struct
from datetime import datetime

from kms.crypto.algorithms import ENCRYPTION_ALGORITHMS, RSA_ENCRYPTION_ALGORITHMS
from kms.errors import InvalidCiphertext, InvalidRequest, KeyNotFound
from kms.service.keys import AlgorithmFit, KeyInfo
from kms.service.keys.validation import ALIAS_PREFIX, KEY_ID_PATTERN

BLOB_MAGIC = b"kms-aws:1:"
_LENGTH = struct.Struct(">H")

#: (KeySpec, KeyUsage) -> kms's (purpose, algorithm).
KEY_SPECS: dict[tuple[str, str], tuple[str, str]] = {
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"): ("encrypt", "AES-256-GCM"),
    **{
        (f"RSA_{bits}", "ENCRYPT_DECRYPT"): ("encrypt", f"RSA-OAEP-{bits}")
        for bits in (2048, 3072, 4096)
    },
    **{(f"RSA_{bits}", "SIGN_VERIFY"): ("sign", f"RSA-{bits}") for bits in (2048, 3072, 4096)},
    ("ECC_NIST_P256", "SIGN_VERIFY"): ("sign", "ECDSA-P256"),
    ("ECC_NIST_P384", "SIGN_VERIFY"): ("sign", "ECDSA-P384"),
    ("HMAC_256", "GENERATE_VERIFY_MAC"): ("mac", "HMAC-SHA256"),
    ("HMAC_512", "GENERATE_VERIFY_MAC"): ("mac", "HMAC-SHA512"),
}
#: kms's algorithm -> its KeySpec (ChaCha20 and Ed25519 keys are kms's own; AWS has names for
#: them that mean other constructions, so they describe as the nearest AWS spec).
SPEC_OF_ALGORITHM: dict[str, str] = {
    "AES-256-GCM": "SYMMETRIC_DEFAULT",
    "ChaCha20-Poly1305": "SYMMETRIC_DEFAULT",
    "Ed25519": "ECC_NIST_EDWARDS25519",
    **{f"RSA-OAEP-{bits}": f"RSA_{bits}" for bits in (2048, 3072, 4096)},
    **{f"RSA-{bits}": f"RSA_{bits}" for bits in (2048, 3072, 4096)},
    "ECDSA-P256": "ECC_NIST_P256",
    "ECDSA-P384": "ECC_NIST_P384",
    "HMAC-SHA256": "HMAC_256",
    "HMAC-SHA512": "HMAC_512",
}
USAGE_OF_PURPOSE = {
    "encrypt": "ENCRYPT_DECRYPT",
    "sign": "SIGN_VERIFY",
    "mac": "GENERATE_VERIFY_MAC",
}
STATE_OF = {"enabled": "Enabled", "disabled": "Disabled", "pending_deletion": "PendingDeletion"}

#: AWS's SigningAlgorithm -> kms's signing_algorithm and the digest of a DIGEST message (None:
#: the scheme signs the message itself).
SIGNING: dict[str, tuple[str, str | None]] = {
    **{
        f"RSASSA_{kind}_SHA_{bits}": (f"RSA-{scheme}-SHA{bits}", f"SHA-{bits}")
        for kind, scheme in (("PSS", "PSS"), ("PKCS1_V1_5", "PKCS1v15"))
        for bits in (256, 384, 512)
    },
    "ECDSA_SHA_256": ("ECDSA-SHA256", "SHA-256"),
    "ECDSA_SHA_384": ("ECDSA-SHA384", "SHA-384"),
    "ED25519_SHA_512": ("Ed25519", None),
}
#: The AWS signing algorithms each kms signing algorithm offers.
SIGNING_ALGORITHMS_OF: dict[str, list[str]] = {
    **{
        f"RSA-{bits}": [name for name in SIGNING if name.startswith("RSASSA_")]
        for bits in (2048, 3072, 4096)
    },
    "ECDSA-P256": ["ECDSA_SHA_256"],
    "ECDSA-P384": ["ECDSA_SHA_384"],
    "Ed25519": ["ED25519_SHA_512"],
}
MAC_ALGORITHM_OF = {"HMAC-SHA256": "HMAC_SHA_256", "HMAC-SHA512": "HMAC_SHA_512"}
DATA_KEY_BYTES = {"AES_128": 16, "AES_256": 32}


class Account:
    """The region and account of this server's ARNs (``aws.region``, ``aws.account_id``)."""

    def __init__(self, region: str, account_id: str) -> None:
        self.region = region
        self.account_id = account_id
        self.prefix = f"arn:aws:kms:{region}:{account_id}:"

    def key_arn(self, key_id: str) -> str:
        return f"{self.prefix}key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"{self.prefix}{alias_name}"

    def name_of(self, identifier: str) -> str:
        """What a ``KeyId`` names: a key_id, or an alias name (``alias/...``) to look up;
        ``KeyNotFound`` for one no key of ours can have."""
        name = identifier
        if name.startswith("arn:"):
            if not name.startswith(self.prefix):
                raise KeyNotFound(identifier)
            name = name[len(self.prefix) :]
            if name.startswith("key/"):
                name = name[len("key/") :]
            elif not name.startswith(ALIAS_PREFIX):
                raise KeyNotFound(identifier)
        if name.startswith(ALIAS_PREFIX):
            return name
        if KEY_ID_PATTERN.fullmatch(name) is None:
            raise KeyNotFound(identifier)
        return name


def native_algorithm(spec: str, usage: str) -> tuple[str, str]:
    """kms's (purpose, algorithm) for CreateKey's KeySpec and KeyUsage."""
    found = KEY_SPECS.get((spec, usage))
    if found is None:
        raise InvalidRequest(f"KeySpec {spec} with KeyUsage {usage} is not supported")
    return found


def key_metadata(key: KeyInfo, account: Account) -> dict[str, object]:
    """AWS's KeyMetadata of a key."""
    metadata: dict[str, object] = {
        "AWSAccountId": account.account_id,
        "KeyId": key.key_id,
        "Arn": account.key_arn(key.key_id),
        "CreationDate": epoch(key.created_at),
        "Enabled": key.state == "enabled",
        "Description": key.description,
        "KeyUsage": USAGE_OF_PURPOSE[key.purpose],
        "KeyState": STATE_OF.get(key.state, "Unavailable"),
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "KeySpec": SPEC_OF_ALGORITHM.get(key.algorithm, key.algorithm),
        "CustomerMasterKeySpec": SPEC_OF_ALGORITHM.get(key.algorithm, key.algorithm),
        "MultiRegion": False,
    }
    if key.purpose == "encrypt":
        metadata["EncryptionAlgorithms"] = [encryption_algorithm(key.algorithm)]
    elif key.purpose == "sign":
        metadata["SigningAlgorithms"] = SIGNING_ALGORITHMS_OF.get(key.algorithm, [])
    elif key.purpose == "mac":
        metadata["MacAlgorithms"] = [MAC_ALGORITHM_OF[key.algorithm]]
    if key.pending_deletion_at is not None:
        metadata["DeletionDate"] = epoch(key.pending_deletion_at)
    return metadata


def encryption_algorithm(algorithm: str) -> str:
    return "RSAES_OAEP_SHA_256" if algorithm in RSA_ENCRYPTION_ALGORITHMS else "SYMMETRIC_DEFAULT"


#: AWS's EncryptionAlgorithm -> the kms algorithms of the encryption keys it fits.
ENCRYPTION_FITS: dict[str, frozenset[str]] = {
    "SYMMETRIC_DEFAULT": frozenset(ENCRYPTION_ALGORITHMS),
    "RSAES_OAEP_SHA_256": frozenset(RSA_ENCRYPTION_ALGORITHMS),
}


def encryption_fit(requested: str) -> AlgorithmFit:
    """What an ``EncryptionAlgorithm`` asks of the key, for the service to check before it
    encrypts or decrypts anything (``InvalidKeyUsageException`` for a key it does not fit)."""
    return AlgorithmFit(f"EncryptionAlgorithm {requested}", ENCRYPTION_FITS[requested])


#: GenerateDataKey and GenerateDataKeyWithoutPlaintext take symmetric keys only, as in AWS KMS.
DATA_KEY_FIT = AlgorithmFit("a data key (SYMMETRIC_DEFAULT)", ENCRYPTION_FITS["SYMMETRIC_DEFAULT"])


def signing_fit(requested: str) -> AlgorithmFit:
    """What a ``SigningAlgorithm`` asks of the key (SIGNING_ALGORITHMS_OF)."""
    algorithms = (key for key, offered in SIGNING_ALGORITHMS_OF.items() if requested in offered)
    return AlgorithmFit(f"SigningAlgorithm {requested}", frozenset(algorithms))


def mac_fit(requested: str) -> AlgorithmFit:
    """What a ``MacAlgorithm`` asks of the key (MAC_ALGORITHM_OF)."""
    algorithms = (key for key, name in MAC_ALGORITHM_OF.items() if name == requested)
    return AlgorithmFit(f"MacAlgorithm {requested}", frozenset(algorithms))


def epoch(moment: datetime) -> float:
    """AWS JSON 1.1 timestamps: seconds since the epoch."""
    return round(moment.timestamp(), 3)


def to_blob(key_id: str, native: bytes) -> bytes:
    encoded = key_id.encode("utf-8")
    return BLOB_MAGIC + _LENGTH.pack(len(encoded)) + encoded + native


def from_blob(blob: bytes) -> tuple[str, bytes]:
    """(key_id, native ciphertext bytes); ``InvalidCiphertext`` for anything else."""
    if not blob.startswith(BLOB_MAGIC) or len(blob) < len(BLOB_MAGIC) + _LENGTH.size:
        raise InvalidCiphertext()
    start = len(BLOB_MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(blob, len(BLOB_MAGIC))
    try:
        key_id = blob[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidCiphertext() from None
    native = blob[start + length :]
    if KEY_ID_PATTERN.fullmatch(key_id) is None or not native:
        raise InvalidCiphertext()
    return key_id, native
