"""Verdicts are kept by (module, line text, mutation): moved code keeps them, gone code not."""

from __future__ import annotations

from pathlib import Path

from kms_mutants import verdicts
from kms_mutants.operators import mutants_of
from kms_mutants.verdicts import Verdict

SOURCE = "def f(x):\n    if x is None:\n        raise ValueError('none')\n    return x + 1\n"


def _verdict(module: str, line: str, mutation: str) -> Verdict:
    return Verdict(module, line, mutation, "harmless: test")


def test_a_verdict_holds_when_lines_above_it_change() -> None:
    verdict = _verdict("a.py", "return x + 1", "Add -> Sub")
    moved_down = mutants_of("a.py", "import os\n\n\n" + SOURCE)
    resolved = verdicts.resolve([verdict], moved_down)
    mutant = next(m for m in moved_down if m.description == "Add -> Sub")
    assert resolved.lookup(mutant) == ("harmless: test", None)
    assert not resolved.stale and not resolved.moved


def test_a_verdict_follows_its_line_to_another_module() -> None:
    verdict = _verdict("old.py", "return x + 1", "Add -> Sub")
    resolved = verdicts.resolve([verdict], mutants_of("new/rules.py", SOURCE))
    assert [(v.module, module) for v, module in resolved.moved] == [("old.py", "new/rules.py")]
    assert resolved.found[("new/rules.py", "return x + 1", "Add -> Sub", "f")][1] == "old.py"
    rewritten = verdicts.reanchor([verdict], resolved, drop_stale=False)
    assert rewritten == [_verdict("new/rules.py", "return x + 1", "Add -> Sub")]


def test_a_verdict_whose_line_changed_is_stale() -> None:
    verdict = _verdict("a.py", "return x + 2", "Add -> Sub")
    resolved = verdicts.resolve([verdict], mutants_of("a.py", SOURCE))
    assert resolved.stale == [verdict]
    assert verdicts.reanchor([verdict], resolved, drop_stale=True) == []


def test_the_file_is_sorted_and_round_trips(tmp_path: Path) -> None:
    written = [_verdict("b.py", "x", "drop not"), _verdict("a.py", "y", "1 -> 2")]
    verdicts.save(tmp_path / "v.json", written)
    assert verdicts.load(tmp_path / "v.json") == sorted(written, key=lambda v: v.anchor)


def test_a_verdict_naming_its_function_judges_only_that_one() -> None:
    source = "def f(x):\n    raise KeyError()\n\n\ndef g(x):\n    raise KeyError()\n"
    mutants = mutants_of("a.py", source)
    general = Verdict("a.py", "raise KeyError()", "drop raise KeyError()", "harmless: both")
    specific = Verdict("a.py", "raise KeyError()", "drop raise KeyError()", "gap: g's", "g")
    resolved = verdicts.resolve([specific, general], mutants)
    assert [resolved.lookup(m) for m in mutants] == [("harmless: both", None), ("gap: g's", None)]
    only_g = verdicts.resolve([specific], mutants)
    assert [only_g.lookup(m) for m in mutants] == [None, ("gap: g's", None)]
