"""The example policy shipped in config/ is a valid policy."""

from __future__ import annotations

from pathlib import Path

from kms.api.policy import load_policy
from kms.server.identity import Caller

EXAMPLE = Path(__file__).parents[2] / "config" / "policy.example.yaml"


def test_the_example_policy_loads_and_means_what_it_says() -> None:
    policy = load_policy(EXAMPLE)
    billing = policy.identity_of(Caller("billing-7f", ("URI:spiffe://prod/billing",)))
    assert billing == "spiffe://prod/billing"
    assert policy.allows(billing, "datakey", "billing-invoices")
    assert not policy.allows(billing, "keys:delete", "billing-invoices")
    assert policy.allows("prometheus", "metrics", None)
    assert policy.allows("session-checker", "mac:verify", "sessions")
    assert not policy.allows("session-checker", "mac", "sessions")
    assert policy.allows("session-checker", "random", None)
