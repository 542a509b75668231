"""Checks of what callers pass in, before any key row is read, and the bounds they enforce.

Every check raises ``InvalidRequest`` with the message the client sees, and returns the value
(or its stored form) when it passes. Booleans are never integers here: JSON ``true`` is not 1.
"""

from __future__ import annotations

import json
import re
from typing import TypeGuard

from kms.crypto.algorithms import ALGORITHMS, DEFAULT_ALGORITHM, Algorithm, Purpose
from kms.errors import InvalidAliasName, InvalidRequest, PurposeMismatch
from kms.store.records import KeyState

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_PAGE_SIZE = 1000
#: Alias names as AWS KMS has them: ``alias/`` and then letters, digits, ``/ _ -``; at most 256
#: characters in all. ``alias/aws/`` is AWS's own, refused. Every key is also reachable by the
#: alias of its key_id (``alias/<key_id>``), which is no row and may hold a ``.``.
ALIAS_PREFIX = "alias/"
RESERVED_ALIAS_PREFIX = "alias/aws/"
ALIAS_NAME_PATTERN = re.compile(r"alias/[a-zA-Z0-9/_-]+")
MAX_ALIAS_NAME_CHARS = 256
#: A key listing reads (and MAC-checks) at most this many key rows per request, whatever its
#: scope and filters; a page it could not fill within them ends with a cursor (``KeyPage``).
MAX_ROWS_EXAMINED = 1000
#: GET /v1/kms/keys/{key_id} lists at most this many of the newest versions; /versions pages.
KEY_DETAIL_VERSIONS = 100
#: POST /v1/kms/random returns at most this many bytes per call.
MAX_RANDOM_BYTES = 1024
STATES = tuple(state.value for state in KeyState)
MAX_DESCRIPTION_CHARS = 256
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
LABEL_NAME_PATTERN = re.compile(r"[a-z0-9_.-]{1,63}")
MAX_PENDING_DAYS = 30
#: The sizes of data key ``generate_data_key`` makes: AES-128, -192 and -256.
DATA_KEY_SIZES = (16, 24, 32)
#: Rotation periods: at least an hour, at most ten years; spelled ``<n>d`` or ``<n>h``.
MIN_ROTATION_PERIOD = 3600
MAX_ROTATION_PERIOD = 3650 * 86400
_PERIOD = re.compile(r"([1-9][0-9]{0,5})([dh])")
_UNIT_SECONDS = {"d": 86400, "h": 3600}
#: Never above 2**32 encryptions under one key version: a random 96-bit nonce is safe for about
#: that many (NIST SP 800-38D, 8.3).
MAX_ENCRYPTIONS_PER_VERSION = 2**32


def is_integer(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def integer_from(value: object, low: int, high: int | None, message: str) -> int:
    """``value`` if it is an integer from ``low`` to ``high`` (no upper bound if None)."""
    if not is_integer(value):
        raise InvalidRequest(message)
    if value < low or (high is not None and value > high):
        raise InvalidRequest(message)
    return value


def parse_rotation_period(text: object) -> int:
    """``"30d"`` or ``"12h"`` as seconds; at least an hour."""
    match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidRequest('rotation_period must look like "30d" or "12h"')
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not MIN_ROTATION_PERIOD <= seconds <= MAX_ROTATION_PERIOD:
        raise InvalidRequest("rotation_period must be at least 1h and at most 3650d")
    return seconds


def format_rotation_period(seconds: int) -> str:
    return f"{seconds // 86400}d" if seconds % 86400 == 0 else f"{seconds // 3600}h"


def validate_max_encryptions(value: object) -> int:
    return integer_from(
        value,
        1,
        MAX_ENCRYPTIONS_PER_VERSION,
        f"max_encryptions_per_version must be an integer from 1 to {MAX_ENCRYPTIONS_PER_VERSION}",
    )


def validate_key_id(key_id: str) -> str:
    if not isinstance(key_id, str) or KEY_ID_PATTERN.fullmatch(key_id) is None:
        raise InvalidRequest(
            "key_id must be 1-128 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    return key_id


def validate_alias_name(name: object) -> str:
    """An alias name a client may create: ``InvalidAliasName`` (saying why) for any other."""
    if not isinstance(name, str) or not name.startswith(ALIAS_PREFIX):
        raise InvalidAliasName("an alias name starts with alias/")
    if len(name) > MAX_ALIAS_NAME_CHARS:
        raise InvalidAliasName(f"an alias name has at most {MAX_ALIAS_NAME_CHARS} characters")
    if ALIAS_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidAliasName("an alias name is alias/ and then letters, digits, /, _ and -")
    if name.startswith(RESERVED_ALIAS_PREFIX):
        raise InvalidAliasName("alias names beginning with alias/aws/ are reserved for AWS")
    return name


def validate_limit(limit: object) -> int:
    return integer_from(
        limit, 1, MAX_PAGE_SIZE, f"limit must be an integer from 1 to {MAX_PAGE_SIZE}"
    )


def validate_pending_days(pending_days: object) -> int:
    return integer_from(
        pending_days,
        1,
        MAX_PENDING_DAYS,
        f"pending_days must be an integer from 1 to {MAX_PENDING_DAYS}",
    )


def validate_random_bytes(count: object) -> int:
    if not is_integer(count):
        raise InvalidRequest("bytes must be an integer")
    return integer_from(
        count, 1, MAX_RANDOM_BYTES, f"bytes must be between 1 and {MAX_RANDOM_BYTES}"
    )


def validate_state(state: str | None) -> str | None:
    if state is not None and state not in STATES:
        raise InvalidRequest(f"state must be one of: {', '.join(STATES)}")
    return state


def validate_description(description: str) -> str:
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(
            f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters"
        )
    return description


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise InvalidRequest("labels must be an object of string pairs")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"labels: at most {MAX_LABELS} labels")
    for name, value in labels.items():
        if not isinstance(name, str) or LABEL_NAME_PATTERN.fullmatch(name) is None:
            raise InvalidRequest("labels: names must be 1-63 characters of a-z 0-9 _ . -")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_CHARS:
            raise InvalidRequest(
                f"labels: values must be strings of at most {MAX_LABEL_VALUE_CHARS} characters"
            )
    return labels


def validate_deletion_allowed(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest("deletion_allowed must be true or false")
    return value


def encode_labels(labels: dict[str, str]) -> str:
    """The stored (and MAC'd) form of labels: canonical JSON, so equal labels store alike."""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_label_filter(label: str) -> tuple[str, str]:
    """``name:value`` from ``GET /v1/kms/keys?label=``; the value may itself hold colons."""
    name, colon, value = label.partition(":")
    if not colon or LABEL_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidRequest("label must be name:value with a valid label name")
    return name, value


def algorithm_for(purpose: str, algorithm: str | None) -> Algorithm:
    try:
        purpose_value = Purpose(purpose)
    except ValueError:
        raise InvalidRequest(
            f"purpose must be one of: {', '.join(p.value for p in Purpose)}"
        ) from None
    name = DEFAULT_ALGORITHM[purpose_value] if algorithm is None else algorithm
    spec = ALGORITHMS.get(name)
    if spec is None:
        raise InvalidRequest(f"unknown algorithm; expected one of: {', '.join(sorted(ALGORITHMS))}")
    if spec.purpose is not purpose_value:
        raise PurposeMismatch(f"algorithm {spec.name} cannot be used for purpose {purpose}")
    return spec
