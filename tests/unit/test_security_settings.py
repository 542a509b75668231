"""Settings for authorization, audit and rate limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kms.errors import ConfigurationError
from kms.settings import Settings, settings_from_mapping

BASE = {"database": {"dsn": "/var/lib/kms/kms.db"}}


def load(document: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    return settings_from_mapping({**BASE, **document}, environ or {}, source="test.yaml")


def test_absent_sections_switch_the_features_off() -> None:
    settings = load({})
    assert settings.policy_file is None and settings.audit_path is None
    assert settings.rate_limit_rate is None and settings.rate_limit_burst is None


def test_the_sections_load_and_paths_resolve(tmp_path: Path) -> None:
    settings = load(
        {
            "authorization": {"policy_file": str(tmp_path / "policy.yaml")},
            "audit": {"path": str(tmp_path / "audit.log")},
            "rate_limit": {"rate": 2.5, "burst": 20},
        }
    )
    assert settings.policy_file == tmp_path / "policy.yaml"
    assert settings.audit_path == tmp_path / "audit.log"
    assert (settings.rate_limit_rate, settings.rate_limit_burst) == (2.5, 20)


def test_environment_overrides_reach_the_new_sections() -> None:
    settings = load(
        {},
        {"KMS_RATE_LIMIT_RATE": "7", "KMS_RATE_LIMIT_BURST": "3", "KMS_AUDIT_PATH": "/tmp/a.log"},
    )
    assert (settings.rate_limit_rate, settings.rate_limit_burst) == (7.0, 3)
    assert settings.audit_path == Path("/tmp/a.log")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rate": 5}, "set both rate and burst"),
        ({"burst": 5}, "set both rate and burst"),
        ({"rate": 0, "burst": 5}, "rate_limit.rate: must be a number above 0"),
        ({"rate": "nan", "burst": 5}, "rate_limit.rate: must be a number above 0"),
        ({"rate": True, "burst": 5}, "rate_limit.rate: must be a number"),
        ({"rate": 1, "burst": 0}, "rate_limit.burst: must be between 1"),
        ({"rate": 1, "burst": 1, "window": 3}, "rate_limit.window: unknown setting"),
    ],
)
def test_bad_rate_limits_are_refused_with_one_line(section: dict, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load({"rate_limit": section})
    assert message in raised.value.public_message
    assert "test.yaml" in raised.value.public_message
