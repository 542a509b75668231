"""``deny.serials`` in the policy file (docs/configuration.md: "hexadecimal, colons and a `0x`
prefix allowed, as strings"): each spelling denies the same serial number; a value longer than
kms takes (64 hexadecimal digits) is refused at load.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.api.policy import load_policy
from kms.errors import ConfigurationError

CLIENTS = """\
clients:
  "cn:orchestrator":
    - operations: ["*"]
      keys: ["*"]
"""


def policy_file(tmp_path: Path, serials: list[str]) -> Path:
    path = tmp_path / "policy.yaml"
    listed = ", ".join(f'"{serial}"' for serial in serials)
    path.write_text(f"{CLIENTS}deny:\n  serials: [{listed}]\n", encoding="utf-8")
    return path


def test_a_serial_with_a_0x_prefix_or_colons_is_the_same_number(tmp_path: Path) -> None:
    policy = load_policy(policy_file(tmp_path, ["0x1A2B", "0X00:FF", "4F:1A:09"]))
    assert policy.denied_serials == frozenset({0x1A2B, 0xFF, 0x4F1A09})


def test_a_serial_of_more_than_64_digits_is_refused(tmp_path: Path) -> None:
    assert load_policy(policy_file(tmp_path, ["F" * 64])).denied_serials == {int("F" * 64, 16)}
    with pytest.raises(ConfigurationError, match="is not a serial number in hexadecimal"):
        load_policy(policy_file(tmp_path, ["F" * 65]))
