"""The run's settings: ``[tool.kms-mutants]`` in tools/mutants/pyproject.toml.

Targets and tests are globs, never lists of today's modules: a module added to a targeted folder
(kms/service/keys/ split into a package) is mutated in the next run, and a test file added under
tests/ is in the coverage run, without an edit here.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

CONFIG = Path(__file__).resolve().parents[1] / "pyproject.toml"


@dataclass(frozen=True)
class Config:
    root: Path
    targets: tuple[str, ...]  # globs of the modules mutated by default
    tests: tuple[str, ...]  # globs of the test files of the coverage run
    exclude_tests: dict[str, str] = field(default_factory=dict)  # test file -> why it is left out
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # module stem -> test names
    #: module glob -> tests that check what such modules declare at import (selection.py)
    import_time_tests: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: module glob -> the share of its mutants a run takes (a deterministic sample; default all)
    samples: dict[str, float] = field(default_factory=dict)
    cap_seconds: float = 60.0
    #: seconds of the named tests' measured time per mutant (None: all of them, in full)
    named_cap_seconds: float | None = None
    minutes: float = 43.0
    jobs: int = 2
    coverage_jobs: int = 3
    verdicts: str = "tools/mutants/verdicts.json"
    markdown: str = "docs/mutants.md"
    json: str = "docs/mutants.json"

    def target_modules(self) -> list[str]:
        """Every file the target globs match, sorted (``__init__.py`` files included: the mutants
        make the empty ones drop out)."""
        found = {
            path.relative_to(self.root).as_posix()
            for pattern in self.targets
            for path in self.root.glob(pattern)
            if path.is_file() and path.suffix == ".py"
        }
        return sorted(found)

    def test_files(self) -> list[str]:
        """The test files of the coverage run: the ``tests`` globs minus ``exclude-tests``."""
        found = {
            path.relative_to(self.root).as_posix()
            for pattern in self.tests
            for path in self.root.glob(pattern)
            if path.is_file()
        }
        return sorted(found - set(self.exclude_tests))

    def sample_of(self, module: str) -> float:
        """The share of ``module``'s mutants a run takes: the first ``sample`` glob it matches."""
        for pattern, fraction in self.samples.items():
            if glob_match(module, pattern):
                return fraction
        return 1.0

    def import_time_tests_of(self, module: str) -> list[str]:
        """The tests (files or node ids) that the ``import-time-tests`` globs give ``module``."""
        return sorted(
            {
                test
                for pattern, tests in self.import_time_tests.items()
                if glob_match(module, pattern)
                for test in tests
            }
        )

    def named_test_files(self, module: str, test_files: Iterable[str]) -> list[str]:
        """The test files named after ``module``: ``test_<name>.py`` and ``test_<name>_*.py``,
        ``test_*_<name>.py`` and the same name without its underscores (``ratelimit`` and
        ``test_rate_limit.py``), where ``name`` is the module's own name (a package's for its
        ``__init__``) or one of its ``aliases`` (``policy`` -> ``authorization``)."""
        return named_test_files(module, test_files, self.aliases)


def glob_match(path: str, pattern: str) -> bool:
    """``path`` matches ``pattern``, where ``**/`` is any number of folders and ``*`` any name."""
    expression = ""
    rest = pattern
    while rest:
        if rest.startswith("**/"):
            expression, rest = expression + "(?:[^/]+/)*", rest[3:]
        elif rest[0] == "*":
            expression, rest = expression + "[^/]*", rest[1:]
        else:
            expression, rest = expression + re.escape(rest[0]), rest[1:]
    return re.fullmatch(expression, path) is not None


def named_test_files(
    module: str, test_files: Iterable[str], aliases: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    stem = PurePosixPath(module).stem
    if stem == "__init__":
        stem = PurePosixPath(module).parent.name
    names = {stem, *(aliases or {}).get(stem, ())}
    named = []
    for file in test_files:
        subject = PurePosixPath(file).stem
        if not subject.startswith("test_"):
            continue
        subject = subject.removeprefix("test_")
        for name in names:
            if (
                subject == name
                or subject.startswith(f"{name}_")
                or subject.endswith(f"_{name}")
                or subject.replace("_", "") == name.replace("_", "")
            ):
                named.append(file)
                break
    return sorted(named)


def load(root: Path, config_file: Path = CONFIG) -> Config:
    settings = tomllib.loads(config_file.read_text(encoding="utf-8"))["tool"]["kms-mutants"]
    return Config(
        root=root,
        targets=tuple(settings["targets"]),
        tests=tuple(settings["tests"]),
        exclude_tests=dict(settings.get("exclude-tests", {})),
        aliases={name: tuple(more) for name, more in settings.get("aliases", {}).items()},
        import_time_tests={
            pattern: tuple(tests)
            for pattern, tests in settings.get("import-time-tests", {}).items()
        },
        samples={pattern: float(share) for pattern, share in settings.get("sample", {}).items()},
        cap_seconds=float(settings.get("cap-seconds", 60.0)),
        named_cap_seconds=(
            float(settings["named-cap-seconds"]) if "named-cap-seconds" in settings else None
        ),
        minutes=float(settings.get("minutes", 43.0)),
        jobs=int(settings.get("jobs", 2)),
        coverage_jobs=int(settings.get("coverage-jobs", 3)),
        verdicts=str(settings.get("verdicts", Config.verdicts)),
        markdown=str(settings.get("markdown", Config.markdown)),
        json=str(settings.get("json", Config.json)),
    )
