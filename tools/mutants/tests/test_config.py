"""Which test files are named after a module, and the targets found by glob."""

from __future__ import annotations

from pathlib import Path

from kms_mutants.config import Config, named_test_files

TESTS = [
    "tests/integration/http/test_audit.py",
    "tests/integration/http/test_rate_limit.py",
    "tests/integration/http/test_authorization.py",
    "tests/integration/test_key_state_rules.py",
    "tests/integration/test_keystore.py",
    "tests/unit/test_example_policy.py",
    "tests/unit/test_key_cache.py",
    "tests/unit/test_cache_bounds.py",
    "tests/integration/http/helpers.py",
]


def test_a_module_is_matched_by_name_prefix_suffix_and_without_underscores() -> None:
    assert named_test_files("kms/audit.py", TESTS) == ["tests/integration/http/test_audit.py"]
    assert named_test_files("kms/api/ratelimit.py", TESTS) == [
        "tests/integration/http/test_rate_limit.py"
    ]
    assert named_test_files("kms/service/cache.py", TESTS) == [
        "tests/unit/test_cache_bounds.py",
        "tests/unit/test_key_cache.py",
    ]
    assert named_test_files("kms/service/keys/rules.py", TESTS) == [
        "tests/integration/test_key_state_rules.py"
    ]


def test_a_name_is_a_whole_word() -> None:
    assert named_test_files("kms/api/keys.py", TESTS) == []  # not test_keystore.py


def test_aliases_add_test_names() -> None:
    found = named_test_files("kms/api/policy.py", TESTS, {"policy": ("authorization",)})
    assert found == [
        "tests/integration/http/test_authorization.py",
        "tests/unit/test_example_policy.py",
    ]


def test_a_package_init_is_named_after_its_package(tmp_path: Path) -> None:
    assert named_test_files("kms/service/keystore/__init__.py", TESTS) == [
        "tests/integration/test_keystore.py"
    ]


def test_targets_and_tests_are_globs(tmp_path: Path) -> None:
    for name in ["kms/api/a.py", "kms/service/keys/b.py", "kms/store/c.py", "tests/test_a.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    (tmp_path / "tests" / "test_slow.py").write_text("", encoding="utf-8")
    config = Config(
        tmp_path,
        targets=("kms/api/**/*.py", "kms/service/**/*.py"),
        tests=("tests/**/test_*.py",),
        exclude_tests={"tests/test_slow.py": "slow"},
    )
    assert config.target_modules() == ["kms/api/a.py", "kms/service/keys/b.py"]
    assert config.test_files() == ["tests/test_a.py"]


def test_import_time_tests_are_given_by_module_glob(tmp_path: Path) -> None:
    config = Config(
        tmp_path,
        targets=(),
        tests=(),
        import_time_tests={"kms/api/**/*.py": ("tests/test_openapi.py::test_current",)},
    )
    assert config.import_time_tests_of("kms/api/keys.py") == ["tests/test_openapi.py::test_current"]
    assert config.import_time_tests_of("kms/api/v2/keys.py") != []
    assert config.import_time_tests_of("kms/apikeys.py") == []
