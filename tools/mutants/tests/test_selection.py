"""A mutant meets its module's named tests (up to the named cap), then the others up to the cap."""

from __future__ import annotations

from pathlib import Path

from kms_mutants.operators import Mutant
from kms_mutants.run import TestSources, in_sample, spread
from kms_mutants.selection import CoverageMap

MUTANT = Mutant("kms/audit.py", 0, 10, "x = 1", "1 -> 2", first_line=10, last_line=10)


def _map() -> CoverageMap:
    named = [f"tests/http/test_audit.py::test_{n}" for n in range(3)]
    others = [f"tests/unit/test_other.py::test_{n}" for n in range(5)]
    lines = {"kms/audit.py": {10: {*named, *others}, 11: {"tests/unit/test_other.py::test_0"}}}
    durations = {node: 10.0 for node in named} | {node: 2.0 for node in others}
    return CoverageMap(lines, durations)


def test_named_tests_run_first_and_in_full_whatever_the_cap() -> None:
    selection = _map().select(MUTANT, ["tests/http/test_audit.py"], cap=5.0)
    assert selection is not None
    assert selection.tests[:3] == [f"tests/http/test_audit.py::test_{n}" for n in range(3)]
    assert selection.named == 3
    assert len(selection.tests) == 5  # then 4 s of the others (2 s each): the cap is 5 s
    assert selection.covering == 8


def test_the_named_cap_bounds_the_named_tests_but_one_always_runs() -> None:
    selection = _map().select(MUTANT, ["tests/http/test_audit.py"], cap=5.0, named_cap=25.0)
    assert selection is not None
    assert selection.named == 2  # 10 s each: a third would pass 25 s
    assert selection.tests[:2] == [f"tests/http/test_audit.py::test_{n}" for n in range(2)]
    assert len(selection.tests) == 4  # then the cap's 4 s of the others, as without it
    tight = _map().select(MUTANT, ["tests/http/test_audit.py"], cap=0.0, named_cap=1.0)
    assert tight is not None and tight.named == 1  # at least one named test
    assert tight.tests == ["tests/http/test_audit.py::test_0"]


def test_other_tests_follow_up_to_the_cap() -> None:
    selection = _map().select(MUTANT, ["tests/http/test_audit.py"], cap=7.0)
    assert selection is not None and len(selection.tests) == 6
    everything = _map().select(MUTANT, [], cap=1000.0)
    assert everything is not None and len(everything.tests) == everything.covering == 8
    one = _map().select(MUTANT, [], cap=0.0)
    assert one is not None and len(one.tests) == 1  # at least one test


def test_a_line_no_test_executes_is_not_covered() -> None:
    assert _map().select(Mutant("kms/audit.py", 1, 12, "", "drop not", 12, 12), [], 60) is None


def test_the_order_spreads_every_module_over_the_run() -> None:
    mutants = [Mutant("a.py", n, n, f"a{n}", "drop not") for n in range(10)]
    mutants += [Mutant("b.py", n, n, f"b{n}", "drop not") for n in range(2)]
    ordered = spread(mutants)
    assert sorted(ordered, key=lambda m: (m.path, m.index)) == mutants
    assert sum(m.path == "b.py" for m in ordered[:6]) == 1  # half the run, half of each module
    assert spread(list(reversed(mutants))) == ordered


def test_a_sample_is_the_same_every_time() -> None:
    mutants = [Mutant("a.py", n, n, f"line {n}", "drop not") for n in range(200)]
    chosen = [m for m in mutants if in_sample(m, 0.25)]
    assert 25 < len(chosen) < 75
    assert chosen == [m for m in mutants if in_sample(m, 0.25)]


def test_a_line_run_at_import_meets_the_hinted_tests_after_the_named_ones() -> None:
    at_import = Mutant("kms/audit.py", 2, 3, "X = 1", "1 -> 2", 3, 3, at_import=True)
    coverage = CoverageMap(
        {"kms/audit.py": {3: {""}}},
        {"tests/a/test_audit.py::test_x": 1.0, "tests/test_doc.py::test_current": 0.1}
        | {f"tests/test_other.py::test_{n}": 5.0 for n in range(4)},
        texts=lambda file: "kms.audit" if "other" in file else "",
    )
    selection = coverage.select(
        at_import, ["tests/a/test_audit.py"], 6.0, ["tests/test_doc.py::test_current"]
    )
    assert selection is not None
    assert selection.tests[:2] == [
        "tests/a/test_audit.py::test_x",
        "tests/test_doc.py::test_current",
    ]
    assert len(selection.tests) == 3  # the named test counts against the cap at import


def test_a_test_that_killed_a_neighbour_comes_right_after_the_named_ones() -> None:
    killer = "tests/unit/test_other.py::test_4"
    selection = _map().select(MUTANT, ["tests/http/test_audit.py"], 3.0, killers=[killer])
    assert selection is not None
    assert selection.tests[3] == killer


def test_a_test_function_written_about_the_module_is_found_by_its_text(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_hooks.py").write_text(
        "def test_cut():\n    assert read('audit.log')\n\n\n"
        "class TestOther:\n    def test_x(self):\n        '''About the Policy.'''\n",
        encoding="utf-8",
    )
    texts = TestSources(tmp_path)
    assert texts.mentions("tests/test_hooks.py::test_cut", "audit")
    assert not texts.mentions("tests/test_hooks.py::test_cut[a-b]", "policy")
    assert texts.mentions("tests/test_hooks.py::TestOther::test_x", "policy")
