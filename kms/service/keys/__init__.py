"""The key service: lifecycle and cryptographic operations over a repository and a keyring.

``KMSService`` (service.py) is the front; its parts are modules of this package, named in its
docstring. What callers outside the package use is exported here.
"""

from kms.service.keys.generations import RECORDED_CHANGES, Generations
from kms.service.keys.operations import CURRENT_REQUESTER, BatchItem, Requester
from kms.service.keys.results import (
    UNKNOWN_ALGORITHM,
    DataKey,
    Decrypted,
    Encrypted,
    IntegrityReport,
    KeyInfo,
    KeyVersionInfo,
    MACed,
    PublicKeyInfo,
    Rotated,
    Signed,
    Verified,
)
from kms.service.keys.rules import AlgorithmFit
from kms.service.keys.service import KMSService

__all__ = [
    "AlgorithmFit",
    "CURRENT_REQUESTER",
    "RECORDED_CHANGES",
    "UNKNOWN_ALGORITHM",
    "BatchItem",
    "DataKey",
    "Decrypted",
    "Encrypted",
    "Generations",
    "IntegrityReport",
    "KMSService",
    "KeyInfo",
    "KeyVersionInfo",
    "MACed",
    "PublicKeyInfo",
    "Requester",
    "Rotated",
    "Signed",
    "Verified",
]
