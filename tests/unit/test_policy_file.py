"""Reading the policy file (kms.api.policy): its size bound, short reads and read errors, no
descriptor left open, YAML merge keys, and the words of its refusals and warnings
(docs/configuration.md, "The policy file")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kms.api.policy import MAX_POLICY_BYTES, load_policy
from kms.errors import ConfigurationError

RULE = "    - operations: [encrypt]\n      keys: ['*']\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_policy_of_1_mib_is_read_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    assert MAX_POLICY_BYTES == 1 << 20
    head = "clients:\n  cn:app:\n" + RULE + "#"
    at_limit = write(tmp_path / "at.yaml", head + "x" * (MAX_POLICY_BYTES - len(head) - 1) + "\n")
    assert at_limit.stat().st_size == MAX_POLICY_BYTES
    assert load_policy(at_limit).allows("cn:app", "encrypt", "k")
    over = write(tmp_path / "over.yaml", at_limit.read_text(encoding="utf-8") + "\n")
    with pytest.raises(ConfigurationError, match=f"longer than {MAX_POLICY_BYTES} bytes"):
        load_policy(over)


def test_a_policy_read_in_short_pieces_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read may return fewer bytes than asked (a network filesystem): the pieces join up."""
    path = write(tmp_path / "policy.yaml", "clients:\n  cn:app:\n" + RULE)
    read = os.read
    monkeypatch.setattr(os, "read", lambda descriptor, count: read(descriptor, min(count, 7)))
    assert load_policy(path).allows("cn:app", "encrypt", "k")


def test_a_read_error_is_a_configuration_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "policy.yaml", "clients:\n  cn:app:\n" + RULE)

    def failing(descriptor: int, count: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "read", failing)
    with pytest.raises(ConfigurationError, match=f"{path}: cannot read it: Input/output error"):
        load_policy(path)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reading_the_policy_leaves_no_file_open(tmp_path: Path) -> None:
    """A reload (SIGHUP) reads the file again: each read closes what it opened, refused or not."""
    good = write(tmp_path / "policy.yaml", "clients:\n  cn:app:\n" + RULE)
    bad = write(tmp_path / "bad.yaml", "clients: [")
    load_policy(good)
    before = open_descriptors()
    for _ in range(5):
        load_policy(good)
        with pytest.raises(ConfigurationError):
            load_policy(bad)
    assert open_descriptors() == before


def test_rules_may_be_shared_through_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    """Plain YAML: `<<: *anchor` merges a mapping, as in deploy/docker-compose.yml."""
    path = write(
        tmp_path / "policy.yaml",
        "clients:\n"
        "  cn:app:\n    - &reader\n      operations: [decrypt]\n      keys: ['billing-*']\n"
        "  cn:batch:\n    - <<: *reader\n",
    )
    policy = load_policy(path)
    assert policy.allows("cn:batch", "decrypt", "billing-1")
    assert not policy.allows("cn:batch", "decrypt", "payroll-1")


def test_a_one_digit_serial_can_be_denied(tmp_path: Path) -> None:
    path = write(
        tmp_path / "policy.yaml", "clients:\n  cn:app:\n" + RULE + "deny:\n  serials: ['1']\n"
    )
    assert load_policy(path).denied_serials == frozenset({1})


def test_a_typed_name_with_nothing_after_its_type_is_refused_by_its_type(tmp_path: Path) -> None:
    path = write(tmp_path / "policy.yaml", "clients:\n  'dns:':\n" + RULE)
    with pytest.raises(ConfigurationError, match="clients: 'dns:' names no dns$"):
        load_policy(path)


def test_the_untyped_names_warning_shows_ten_and_counts_the_rest(tmp_path: Path) -> None:
    names = [f"app{n:02d}" for n in range(12)]
    text = "clients:\n" + "".join(f"  {name}:\n" + RULE for name in names)
    [warning] = load_policy(write(tmp_path / "policy.yaml", text)).warnings
    assert "'app09'" in warning and "'app10'" not in warning
    assert warning.endswith(" and 2 more")
    text = "clients:\n" + "".join(f"  {name}:\n" + RULE for name in names[:10])
    [warning] = load_policy(write(tmp_path / "policy.yaml", text)).warnings
    assert "'app09'" in warning and "more" not in warning


def test_a_policy_without_a_clients_section_is_refused_naming_it(tmp_path: Path) -> None:
    """A policy file that allows nobody by leaving out `clients` (a `deny` section alone, or a
    misspelt key) is a start-up error, not a policy that refuses every request."""
    path = tmp_path / "policy.yaml"
    path.write_text("deny:\n  serials: ['01']\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="clients") as refused:
        load_policy(path)
    assert str(path) in str(refused.value)
