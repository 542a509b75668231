"""Vault's wire forms and kms's, converted both ways: pure functions, no Flask.

Ciphertexts. Vault writes ``vault:v<N>:`` + base64(nonce || ciphertext || tag); kms writes
base64(``v<N>:`` || nonce || ciphertext || tag). The bytes under the base64 are the same, so
each converts to the other without touching them: ``to_vault_ciphertext`` and
``from_vault_ciphertext``. A ciphertext that is not Vault's form is refused with the message
Vault gives for that part (the envelope is public: its messages reveal nothing of the key).

Signatures and HMACs are ``vault:v<N>:`` + base64(raw); ``<N>`` is the version that made them,
which kms's verify then checks alone (``version=N``).

Context. Vault's ``context`` is base64 bytes; kms's encryption context is a map of strings. A
Vault context ``C`` is the kms context ``{"vault_context": C'}``, where ``C'`` is ``C`` decoded
and encoded again as canonical standard base64, so that two spellings of the same bytes bind
alike. It is bound into the ciphertext's associated data exactly as a native context is.

Key types. Each Vault type kms offers maps onto one kms algorithm (``VAULT_TYPES``); a kms
algorithm reads back as the Vault type closest to it (``TYPE_OF_ALGORITHM``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from kms.errors import InvalidCiphertext, InvalidRequest
from kms.service.keys import AlgorithmFit

PREFIX = "vault:v"
#: The key in kms's encryption context that holds a Vault context.
CONTEXT_KEY = "vault_context"
_KMS_VERSION = re.compile(rb"v([1-9][0-9]{0,9}):")
_DECIMAL = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class KeyType:
    """A Vault key type as kms makes it: the purpose and algorithm of ``create_key``."""

    purpose: str
    algorithm: str


VAULT_TYPES: dict[str, KeyType] = {
    "aes256-gcm96": KeyType("encrypt", "AES-256-GCM"),
    "chacha20-poly1305": KeyType("encrypt", "ChaCha20-Poly1305"),
    "ed25519": KeyType("sign", "Ed25519"),
    "ecdsa-p256": KeyType("sign", "ECDSA-P256"),
    "ecdsa-p384": KeyType("sign", "ECDSA-P384"),
    "rsa-2048": KeyType("sign", "RSA-2048"),
    "rsa-3072": KeyType("sign", "RSA-3072"),
    "rsa-4096": KeyType("sign", "RSA-4096"),
    "hmac": KeyType("mac", "HMAC-SHA256"),
}
#: Vault's ``key_size`` for ``hmac`` keys (bytes) -> the kms algorithm with that key size.
HMAC_KEY_SIZES = {32: "HMAC-SHA256", 64: "HMAC-SHA512"}
#: Types Vault has and kms does not: refused by name, never replaced by another type.
VAULT_ONLY_TYPES = frozenset(
    {
        "aes128-gcm96",
        "ecdsa-p521",
        "aes128-cmac",
        "aes192-cmac",
        "aes256-cmac",
        "managed_key",
        "ml-dsa",
        "slh-dsa",
        "hybrid",
    }
)
TYPE_OF_ALGORITHM: dict[str, str] = {
    "AES-256-GCM": "aes256-gcm96",
    "ChaCha20-Poly1305": "chacha20-poly1305",
    "Ed25519": "ed25519",
    "ECDSA-P256": "ecdsa-p256",
    "ECDSA-P384": "ecdsa-p384",
    "RSA-2048": "rsa-2048",
    "RSA-3072": "rsa-3072",
    "RSA-4096": "rsa-4096",
    # kms's RSA-OAEP keys encrypt only; Vault's RSA keys of the same size do both.
    "RSA-OAEP-2048": "rsa-2048",
    "RSA-OAEP-3072": "rsa-3072",
    "RSA-OAEP-4096": "rsa-4096",
    "HMAC-SHA256": "hmac",
    "HMAC-SHA512": "hmac",
}
#: The ``name`` Vault gives an asymmetric key version's public key, by kms algorithm.
PUBLIC_KEY_NAMES = {
    "Ed25519": "ed25519",
    "ECDSA-P256": "P-256",
    "ECDSA-P384": "P-384",
    "RSA-2048": "rsa-2048",
    "RSA-3072": "rsa-3072",
    "RSA-4096": "rsa-4096",
    "RSA-OAEP-2048": "rsa-2048",
    "RSA-OAEP-3072": "rsa-3072",
    "RSA-OAEP-4096": "rsa-4096",
}
#: Vault's hash names -> kms's digest names (kms signs and MACs with SHA-2 256/384/512 only).
DIGESTS = {"sha2-256": "SHA-256", "sha2-384": "SHA-384", "sha2-512": "SHA-512"}
#: The digest of each kms MAC algorithm, as Vault names it.
MAC_DIGESTS = {"HMAC-SHA256": "sha2-256", "HMAC-SHA512": "sha2-512"}
#: The digest each ECDSA key signs with (its only scheme in kms).
ECDSA_DIGESTS = {"ECDSA-P256": "SHA-256", "ECDSA-P384": "SHA-384"}


def key_type_for(vault_type: str, key_size: int | None) -> KeyType:
    """The kms key a Vault ``type`` (and, for ``hmac``, ``key_size``) creates."""
    if vault_type in VAULT_ONLY_TYPES:
        raise InvalidRequest(f"key type {vault_type} is not supported by kms")
    spec = VAULT_TYPES.get(vault_type)
    if spec is None:
        raise InvalidRequest(f"unknown key type {vault_type}")
    if key_size is not None:
        if vault_type != "hmac":
            raise InvalidRequest("key_size is only for hmac keys")
        algorithm = HMAC_KEY_SIZES.get(key_size)
        if algorithm is None:
            raise InvalidRequest("key_size: kms makes hmac keys of 32 or 64 bytes")
        return KeyType("mac", algorithm)
    return spec


def to_vault_ciphertext(ciphertext: str) -> str:
    """kms's ``BASE64("v<N>:" || body)`` as Vault's ``vault:v<N>:BASE64(body)``."""
    raw = base64.b64decode(ciphertext)
    match = _KMS_VERSION.match(raw)
    if match is None:  # kms made it: never happens
        raise ValueError("not a kms ciphertext")
    body = base64.b64encode(raw[match.end() :]).decode("ascii")
    return f"{PREFIX}{match.group(1).decode('ascii')}:{body}"


def from_vault_ciphertext(text: str) -> str:
    """Vault's ``vault:v<N>:BASE64(body)`` as kms's ``BASE64("v<N>:" || body)``."""
    version, body = _split(text, "invalid ciphertext", InvalidCiphertext)
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCiphertext("invalid ciphertext: could not decode base64") from None
    return base64.b64encode(b"v%d:" % version + raw).decode("ascii")


def to_vault_tagged(version: int, raw: bytes) -> str:
    """A signature or HMAC made by ``version``: ``vault:v<N>:BASE64(raw)``."""
    return f"{PREFIX}{version}:{base64.b64encode(raw).decode('ascii')}"


def from_vault_tagged(text: str, what: str) -> tuple[int, bytes]:
    """``(N, raw)`` from a Vault signature or HMAC; ``what`` names it in the messages, as
    Vault does ("invalid signature: no prefix", "invalid HMAC: ...")."""
    version, body = _split(text, f"invalid {what}", InvalidRequest)
    try:
        return version, base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"invalid base64 {what} value") from None


def _split(
    text: str, problem: str, error: type[InvalidRequest] | type[InvalidCiphertext]
) -> tuple[int, str]:
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise error(f"{problem}: no prefix")
    version_text, colon, body = text[len(PREFIX) :].partition(":")
    if not colon:
        raise error(f"{problem}: wrong number of fields")
    if _DECIMAL.fullmatch(version_text) is None or int(version_text) > 2**31 - 1:
        raise error(f"{problem}: version number could not be decoded")
    # Vault reads version 0 as 1: its first keys were numbered from zero.
    return max(int(version_text), 1), body


def kms_context(context: bytes | None) -> dict[str, str] | None:
    """The kms encryption context of a Vault ``context`` (None or empty: no context)."""
    if not context:
        return None
    return {CONTEXT_KEY: base64.b64encode(context).decode("ascii")}


def parse_duration(value: object) -> int:
    """Vault's ``auto_rotate_period`` in seconds: an integer of seconds, or a duration such as
    ``"24h"``, ``"90m"``, ``"1h30m"``, ``"3600s"`` (Go's units h, m, s)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidRequest("auto_rotate_period must not be negative")
        return value
    if not isinstance(value, str):
        raise InvalidRequest("auto_rotate_period must be a duration such as 24h")
    if _DECIMAL.fullmatch(value):
        return int(value)
    parts = re.fullmatch(r"(?:([0-9]{1,6})h)?(?:([0-9]{1,8})m)?(?:([0-9]{1,10})s)?", value)
    if not value or parts is None:
        raise InvalidRequest("auto_rotate_period must be a duration such as 24h")
    hours, minutes, seconds = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def rotation_period(seconds: int) -> str | None:
    """kms's ``rotation_period`` for a Vault period in seconds (0: no rotation by time)."""
    if seconds == 0:
        return None
    if seconds % 3600:
        raise InvalidRequest("auto_rotate_period: kms rotates by whole hours (at least 1h)")
    return f"{seconds // 3600}h"


def period_seconds(rotation_period: str | None) -> int:
    """Vault's ``auto_rotate_period`` (seconds) of kms's ``"30d"`` or ``"12h"``."""
    if rotation_period is None:
        return 0
    unit = 86400 if rotation_period.endswith("d") else 3600
    return int(rotation_period[:-1]) * unit


def signing_options(
    algorithm: str,
    hash_algorithm: str | None,
    signature_algorithm: str | None,
    prehashed: bool,
) -> dict[str, str | None]:
    """kms's ``signing_algorithm`` and ``digest_algorithm`` for Vault's options on a key of
    ``algorithm``.

    Vault's default hash is sha2-256; kms's ECDSA-P384 keys sign with SHA-384 only, so for them
    the default is sha2-384 and an explicit sha2-256 is refused (by the service, which names
    what fits). Ed25519 hashes by itself, and like Vault kms ignores ``hash_algorithm`` for it.
    ``signature_algorithm`` applies to RSA keys only, as in Vault.
    """
    if (
        algorithm == "Ed25519"
        or algorithm not in ECDSA_DIGESTS
        and not algorithm.startswith("RSA-")
    ):
        return {"signing_algorithm": None, "digest_algorithm": None}
    if hash_algorithm is None:
        digest = ECDSA_DIGESTS.get(algorithm, "SHA-256")
    elif hash_algorithm in DIGESTS:
        digest = DIGESTS[hash_algorithm]
    else:
        raise InvalidRequest(f"unsupported hash algorithm {hash_algorithm}")
    compact = digest.replace("-", "")
    if algorithm in ECDSA_DIGESTS:
        scheme = f"ECDSA-{compact}"
    else:
        padding = "PKCS1v15" if signature_algorithm == "pkcs1v15" else "PSS"
        scheme = f"RSA-{padding}-{compact}"
    return {"signing_algorithm": scheme, "digest_algorithm": digest if prehashed else None}


def mac_fit(requested: str | None) -> AlgorithmFit:
    """A kms MAC key computes one HMAC: Vault's ``algorithm`` (sha2-256 when left out, as in
    Vault) must name it, so that a key of 64 bytes never answers a sha2-256 request with a
    sha2-512 HMAC. The service checks it before it loads the key's secret."""
    # Names of digest algorithms, nothing secret: a plain comparison.
    wanted = requested or "sha2-256"
    algorithms = (key for key, own in MAC_DIGESTS.items() if own == wanted)
    return AlgorithmFit(f"algorithm: {wanted}", frozenset(algorithms))
