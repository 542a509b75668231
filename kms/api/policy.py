"""Per-client authorization: which caller may do which operation on which keys.

The policy file (setting ``authorization.policy_file``) maps typed caller names to rules, and may
deny certificates outright::

    clients:
      "cn:orchestrator":            # the certificate's subject CN
        - operations: ["*"]
          keys: ["*"]
      "uri:spiffe://prod/billing":  # one of its URI SANs (``dns:`` for a DNS SAN)
        - operations: ["encrypt", "decrypt", "keys:read"]
          keys: ["billing-*"]
    deny:                           # wins over every rule, for every request
      serials: ["4F:1A:09"]         # hex, as ``openssl x509 -serial`` prints it
      sha256_fingerprints: ["AB:CD:..."]  # of the DER certificate

Names. A typed name matches only a name of its type: ``cn:x`` the subject CN ``x``, ``dns:x`` a
DNS SAN ``x``, ``uri:x`` a URI SAN ``x`` (exact, case-sensitive comparisons; the prefix itself is
case-insensitive). An untyped name is the older form, still loaded with a deprecation warning: one
shaped like a URI (a scheme, then ``:``) matches a URI SAN only, any other matches the CN or a DNS
SAN, as it always did. Two entries that could match the same typed name are an error, and so is
any key repeated inside one YAML mapping: nothing is silently replaced.

A caller's identity is the first of its names (CN, then DNS and URI SANs in certificate order)
that an entry matches, and is that entry's name as written; only that entry's rules apply. A
caller no entry matches is recorded as its first typed name (``cn:x``), or ``-`` with none. A
certificate with more than one subject CN is refused (403) on every request, whatever the policy:
choosing one of its CNs would let whoever had it issued pick its rights. So is a certificate the
deny list names, by serial number or SHA-256 fingerprint.

Operations and keys are globs (``fnmatch``, case-sensitive). Deny by default. A request that
names no key (a list, metrics) needs the operation on any key, and a list shows only the keys of
the caller's ``keys:read`` globs, which it passes to the query (``Policy.key_patterns``); a
request whose body names no
usable key is checked against the key ``""``, which only ``*`` matches. The decision happens
before the view runs, so a key that does not exist and a key the caller may not touch get the
same 403.

The file is read without ever blocking: opened non-blocking, refused unless it is a regular file,
and at most ``MAX_POLICY_BYTES`` long. Under gunicorn the master loads it at start (an invalid
file stops the server) and again on SIGHUP (``kms.gunicorn_conf.on_reload``); the workers that
SIGHUP starts inherit the new policy, and an invalid file at reload is logged while the old policy
stays.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from flask import Flask, current_app, g
from marshmallow import Schema, ValidationError, fields, validate

from kms.api.context import g_proxy, request_proxy
from kms.api.errors import describe_validation_error
from kms.api.operations import (
    KNOWN_OPERATIONS,
    KeyFrom,
    declared_operation,
)
from kms.errors import AmbiguousCertificate, ConfigurationError, Forbidden
from kms.server.identity import Caller

POLICY = "kms.policy"
#: The identity recorded for a caller whose certificate carries no usable name (or several CNs).
ANONYMOUS = "-"
#: A policy file longer than this is refused: it is read whole, in the master, at every reload.
MAX_POLICY_BYTES = 1 << 20
#: The types a client name may carry in the policy file, as ``Caller.names`` types them.
NAME_TYPES = ("cn", "dns", "uri")
_TYPED_NAME = re.compile(r"(cn|dns|uri):(.*)", re.IGNORECASE | re.DOTALL)
#: An untyped name shaped like a URI (RFC 3986: a scheme, then ``:``) stands for a URI SAN only.
_URI_SHAPED = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_HEX = re.compile(r"[0-9a-fA-F]+")
log = logging.getLogger("kms")

TypedName = tuple[str, str]


@dataclass(frozen=True)
class Rule:
    operations: tuple[str, ...]
    keys: tuple[str, ...]

    def allows(self, operation: str, key_id: str | None) -> bool:
        if not any(fnmatchcase(operation, pattern) for pattern in self.operations):
            return False
        return key_id is None or any(fnmatchcase(key_id, pattern) for pattern in self.keys)


@dataclass(frozen=True)
class Policy:
    """``clients`` is None when no policy file is configured: everyone may do everything.

    ``names`` maps each typed name an entry matches to that entry's name in ``clients``;
    ``warnings`` are the lines to log once the file is in force (deprecated untyped names).
    """

    clients: Mapping[str, tuple[Rule, ...]] | None
    source: str = "<no policy file>"
    names: Mapping[TypedName, str] = field(default_factory=dict)
    denied_serials: frozenset[int] = frozenset()
    denied_sha256: frozenset[bytes] = frozenset()
    warnings: tuple[str, ...] = ()

    @property
    def allows_everyone(self) -> bool:
        return self.clients is None

    def identity_of(self, caller: Caller) -> str:
        if len(caller.common_names) > 1:
            return ANONYMOUS  # refused by ``admit``: no one of its names is the caller
        names = caller.names()
        for name in names:
            entry = self.names.get(name)
            if entry is not None:
                return entry
        return ":".join(names[0]) if names else ANONYMOUS

    def admit(self, caller: Caller) -> None:
        """Raise unless the certificate itself may be served at all, whatever the rules say:
        it has at most one subject CN and the deny list does not name it."""
        if len(caller.common_names) > 1:
            log.warning(
                "kms: refused a client certificate with %d subject CNs (%s)",
                len(caller.common_names),
                caller,
            )
            raise AmbiguousCertificate()
        if caller.serial is not None and caller.serial in self.denied_serials:
            log.warning(
                "kms: refused a denied client certificate, serial %X (%s)", caller.serial, caller
            )
            raise Forbidden()
        if caller.sha256 is not None and caller.sha256 in self.denied_sha256:
            log.warning(
                "kms: refused a denied client certificate, sha256 %s (%s)",
                caller.sha256.hex(),
                caller,
            )
            raise Forbidden()

    def allows(self, identity: str, operation: str, key_id: str | None) -> bool:
        """May ``identity`` do ``operation`` on ``key_id`` (None: on some key, or no key)?"""
        if self.clients is None:
            return True
        return any(rule.allows(operation, key_id) for rule in self.clients.get(identity, ()))

    def key_patterns(self, identity: str, operation: str) -> tuple[str, ...] | None:
        """The key globs on which ``identity`` may do ``operation``, None for every key: the
        scope a listing pushes into its query, so that keys outside it are never read."""
        if self.clients is None:
            return None
        patterns: dict[str, None] = {}
        for rule in self.clients.get(identity, ()):
            if any(fnmatchcase(operation, pattern) for pattern in rule.operations):
                patterns.update(dict.fromkeys(rule.keys))
        return tuple(patterns)


ALLOW_ALL = Policy(clients=None)


class _RuleSchema(Schema):
    operations = fields.List(
        fields.String(validate=validate.Length(min=1)), required=True, validate=validate.Length(1)
    )
    keys = fields.List(
        fields.String(validate=validate.Length(min=1)), required=True, validate=validate.Length(1)
    )


class _DenySchema(Schema):
    serials = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    sha256_fingerprints = fields.List(
        fields.String(validate=validate.Length(min=1)), load_default=list
    )


class _PolicySchema(Schema):
    clients = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.List(fields.Nested(_RuleSchema), validate=validate.Length(1)),
        required=True,
    )
    deny = fields.Nested(_DenySchema, load_default=None)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Hashable, line: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r}")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key repeated in one mapping is an error: PyYAML would
    keep the last one, so a second entry for a client lower in the file would silently replace
    the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self.flatten_mapping(node)
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:
                continue  # unhashable: the base constructor refuses it with its own message
            if repeated:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_policy_bytes(path: Path, where: str) -> bytes:
    """The file's bytes, without ever blocking: opened ``O_NONBLOCK`` (a FIFO opens at once and a
    device is never read), refused unless it is a regular file, and at most ``MAX_POLICY_BYTES``."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigurationError(f"{where}: not a regular file ({_file_kind(mode)})")
        chunks, size = [], 0
        while size <= MAX_POLICY_BYTES:
            chunk = os.read(descriptor, MAX_POLICY_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_POLICY_BYTES:
            raise ConfigurationError(f"{where}: longer than {MAX_POLICY_BYTES} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(descriptor)


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def client_names(entry: str) -> tuple[tuple[TypedName, ...], bool]:
    """The typed names a client entry matches, and whether it was written untyped."""
    typed = _TYPED_NAME.fullmatch(entry)
    if typed is not None:
        return ((typed.group(1).lower(), typed.group(2)),), False
    if _URI_SHAPED.match(entry):
        return (("uri", entry),), True
    return (("cn", entry), ("dns", entry)), True


def load_policy(path: Path | None) -> Policy:
    """Read and check a policy file; ``ConfigurationError`` names the file and the problem."""
    if path is None:
        return ALLOW_ALL
    where = f"authorization.policy_file {path}"
    content = read_policy_bytes(path, where)
    try:
        document = yaml.load(content.decode("utf-8"), Loader=_StrictLoader)  # noqa: S506
    except _DuplicateKey as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigurationError(f"{where}: not valid YAML") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"{where}: must be a mapping with a clients section")
    try:
        loaded = _PolicySchema().load(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {describe_validation_error(exc)}") from None
    clients: dict[str, tuple[Rule, ...]] = {}
    names: dict[TypedName, str] = {}
    untyped: list[str] = []
    for name, rules in loaded["clients"].items():
        matched, is_untyped = client_names(name)
        if not matched[0][1]:
            raise ConfigurationError(f"{where}: clients: {name!r} names no {matched[0][0]}")
        for typed in matched:
            other = names.get(typed)
            if other is not None:
                raise ConfigurationError(
                    f"{where}: clients: {other!r} and {name!r} both name {':'.join(typed)!r}; "
                    "give each client one entry"
                )
            names[typed] = name
        if is_untyped:
            untyped.append(name)
        for rule in rules:
            for pattern in rule["operations"]:
                if not any(fnmatchcase(known, pattern) for known in KNOWN_OPERATIONS):
                    raise ConfigurationError(
                        f"{where}: clients.{name}: unknown operation {pattern!r}; expected any "
                        f"of {', '.join(sorted(KNOWN_OPERATIONS))} or a glob matching them"
                    )
        clients[name] = tuple(
            Rule(operations=tuple(rule["operations"]), keys=tuple(rule["keys"])) for rule in rules
        )
    deny = loaded["deny"] or {"serials": [], "sha256_fingerprints": []}
    return Policy(
        clients=clients,
        source=str(path),
        names=names,
        denied_serials=frozenset(_serial(value, where) for value in deny["serials"]),
        denied_sha256=frozenset(
            _fingerprint(value, where) for value in deny["sha256_fingerprints"]
        ),
        warnings=_untyped_warning(untyped, where),
    )


def _serial(value: str, where: str) -> int:
    digits = value.strip().replace(":", "")
    digits = digits[2:] if digits[:2].lower() == "0x" else digits
    if not _HEX.fullmatch(digits) or len(digits) > 64:
        raise ConfigurationError(
            f"{where}: deny.serials: {value!r} is not a serial number in hexadecimal "
            "(as openssl x509 -serial prints it)"
        )
    return int(digits, 16)


def _fingerprint(value: str, where: str) -> bytes:
    digits = value.strip().replace(":", "")
    if not _HEX.fullmatch(digits) or len(digits) != 64:
        raise ConfigurationError(
            f"{where}: deny.sha256_fingerprints: {value!r} is not a SHA-256 fingerprint "
            "(64 hexadecimal digits, as openssl x509 -fingerprint -sha256 prints them)"
        )
    return bytes.fromhex(digits)


def _untyped_warning(untyped: list[str], where: str) -> tuple[str, ...]:
    if not untyped:
        return ()
    shown = ", ".join(
        f"{name!r} (matches {' or '.join(':'.join(typed) for typed in client_names(name)[0])})"
        for name in untyped[:10]
    )
    more = f" and {len(untyped) - 10} more" if len(untyped) > 10 else ""
    return (
        f"kms: {where}: untyped client names are deprecated, write each as cn:, dns: or uri: "
        f"{shown}{more}",
    )


def register_policy(app: Flask, policy: Policy) -> None:
    """Refuse, before the view runs, any request the caller's rules do not allow."""
    app.extensions[POLICY] = policy

    @app.before_request
    def authorize() -> None:
        # The objects behind the proxies, looked up once (each access through one is a lookup).
        current = request_proxy._get_current_object()
        declared = declared_operation(app, current.endpoint)
        if declared is None or not declared.needs_policy:
            return  # no route (404/405) or a health check: nothing about keys is revealed
        state = g_proxy._get_current_object()
        target = state.get("kms_target")
        key_id = None if target is None else target.key_id
        if key_id is None and declared.key_from is KeyFrom.BODY:
            key_id = ""  # the body names no usable key: only a rule for every key lets it through
        # The operation as identify_caller (kms/app.py, the hook before this one) settled it
        # from the same declaration: read once, so that the policy and the audit line agree.
        operation = state.kms_operation_name
        if not policy_of(app).allows(state.identity, operation, key_id):
            raise Forbidden()


def current_policy() -> Policy:
    return policy_of(current_app)


def policy_of(app: Flask) -> Policy:
    """``app``'s policy: what ``current_policy`` answers, for a hook that holds the app."""
    return app.extensions.get(POLICY, ALLOW_ALL)


def keys_in_scope(operation: str) -> Callable[[str], bool]:
    """Whether the caller's rules allow ``operation`` on a key: for the answers that show many
    keys at once (the per-key series of ``/metrics``), which must leave the others out."""
    policy, identity = current_policy(), g.identity
    return lambda key_id: policy.allows(identity, operation, key_id)


def readable_key_patterns() -> tuple[str, ...] | None:
    """The globs of the keys the caller may read (``keys:read``); None: every key."""
    return current_policy().key_patterns(g.identity, "keys:read")
