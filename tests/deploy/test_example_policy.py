"""The example policy shipped in config/ is a valid policy, in the typed form, and means what its
comments say."""

from __future__ import annotations

from pathlib import Path

from kms.api.policy import load_policy
from kms.server.identity import Caller

EXAMPLE = Path(__file__).parents[2] / "config" / "policy.example.yaml"


def test_the_example_policy_loads_and_means_what_it_says() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.warnings == ()  # every name typed: nothing deprecated
    billing = policy.identity_of(Caller(("billing-7f",), ("URI:spiffe://prod/billing",)))
    assert billing == "uri:spiffe://prod/billing"
    assert policy.allows(billing, "datakey", "billing-invoices")
    assert not policy.allows(billing, "keys:delete", "billing-invoices")
    assert policy.identity_of(Caller(("prometheus",), ())) == "cn:prometheus"
    assert policy.allows("cn:prometheus", "metrics", None)
    assert policy.allows("cn:session-checker", "mac:verify", "sessions")
    assert not policy.allows("cn:session-checker", "mac", "sessions")
    assert policy.allows("cn:session-checker", "random", None)
    signer = Caller(("build-7",), ("DNS:release-signer.build.internal",))
    assert policy.identity_of(signer) == "dns:release-signer.build.internal"
    # Typed names match only their own type: a CN spelled like the URI, or a DNS name equal to
    # the administrator's CN, is nobody the policy lists.
    assert policy.identity_of(Caller(("spiffe://prod/billing",), ())) == "cn:spiffe://prod/billing"
    assert policy.identity_of(Caller(("x",), ("DNS:orchestrator",))) == "cn:x"
    assert not policy.allows("cn:spiffe://prod/billing", "datakey", "billing-invoices")
    assert (policy.denied_serials, policy.denied_sha256) == (frozenset(), frozenset())
