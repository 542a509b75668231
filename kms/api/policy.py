"""Per-client authorization: which caller may do which operation on which keys.

The policy file (setting ``authorization.policy_file``) maps caller names to rules::

    clients:
      orchestrator:                 # a certificate's subject CN ...
        - operations: ["*"]
          keys: ["*"]
      "spiffe://prod/billing":      # ... or one of its DNS or URI SAN entries
        - operations: ["encrypt", "decrypt", "keys:read"]
          keys: ["billing-*"]

Operations and keys are globs (``fnmatch``, case-sensitive). Deny by default. A caller's identity
is the first of its names (CN, then SANs in certificate order) that the policy lists; only that
entry's rules apply. A request that names no key (a list, metrics) needs the operation on any
key, and a list shows only the keys of the caller's ``keys:read`` globs, which it passes to the
query (``Policy.key_patterns``); a request whose body names no usable key is checked against the
key ``""``, which only ``*`` matches. The decision happens before the view runs, so a key that
does not exist and a key the caller may not touch get the same 403.

Under gunicorn the master loads the file at start (an invalid file stops the server) and again
on SIGHUP (``kms.gunicorn_conf.on_reload``); the workers that SIGHUP starts inherit the new policy,
and an invalid file at reload is logged while the old policy stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import yaml
from flask import Flask, current_app, g, request
from marshmallow import Schema, ValidationError, fields, validate

from kms.api.errors import describe_validation_error
from kms.api.operations import KNOWN_OPERATIONS, KeyFrom, current_target, declared_operation
from kms.errors import ConfigurationError, Forbidden
from kms.server.identity import Caller

POLICY = "kms.policy"
#: The identity recorded for a caller whose certificate carries no usable name.
ANONYMOUS = "-"
log = logging.getLogger("kms")


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
    """``clients`` is None when no policy file is configured: everyone may do everything."""

    clients: Mapping[str, tuple[Rule, ...]] | None
    source: str = "<no policy file>"

    @property
    def allows_everyone(self) -> bool:
        return self.clients is None

    def identity_of(self, caller: Caller) -> str:
        names = caller.names()
        if self.clients is not None:
            for name in names:
                if name in self.clients:
                    return name
        return names[0] if names else ANONYMOUS

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


class _PolicySchema(Schema):
    clients = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1)),
        values=fields.List(fields.Nested(_RuleSchema), validate=validate.Length(1)),
        required=True,
    )


def load_policy(path: Path | None) -> Policy:
    """Read and check a policy file; ``ConfigurationError`` names the file and the problem."""
    if path is None:
        return ALLOW_ALL
    where = f"authorization.policy_file {path}"
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot read it: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigurationError(f"{where}: not valid YAML") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"{where}: must be a mapping with a clients section")
    try:
        loaded = _PolicySchema().load(document)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: {describe_validation_error(exc)}") from None
    clients: dict[str, tuple[Rule, ...]] = {}
    for name, rules in loaded["clients"].items():
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
    return Policy(clients=clients, source=str(path))


def register_policy(app: Flask, policy: Policy) -> None:
    """Refuse, before the view runs, any request the caller's rules do not allow."""
    app.extensions[POLICY] = policy

    @app.before_request
    def authorize() -> None:
        declared = declared_operation(app, request.endpoint)
        if declared is None or not declared.needs_policy:
            return  # no route (404/405) or a health check: nothing about keys is revealed
        key_id = current_target().key_id
        if key_id is None and declared.key_from is KeyFrom.BODY:
            key_id = ""  # the body names no usable key: only a rule for every key lets it through
        if not current_policy().allows(g.identity, declared.name, key_id):
            raise Forbidden()


def current_policy() -> Policy:
    return current_app.extensions.get(POLICY, ALLOW_ALL)


def keys_in_scope(operation: str) -> Callable[[str], bool]:
    """Whether the caller's rules allow ``operation`` on a key: for the answers that show many
    keys at once (the per-key series of ``/metrics``), which must leave the others out."""
    policy, identity = current_policy(), g.identity
    return lambda key_id: policy.allows(identity, operation, key_id)


def readable_key_patterns() -> tuple[str, ...] | None:
    """The globs of the keys the caller may read (``keys:read``); None: every key."""
    return current_policy().key_patterns(g.identity, "keys:read")
