"""The mutations of a module: what is mutated, how, and what a verdict is anchored by."""

from __future__ import annotations

import textwrap

from kms_mutants.operators import function_of, mutants_of, mutated_source

MODULE = textwrap.dedent(
    '''
    """A docstring is never mutated."""
    import os

    LIMIT = 3


    def check(value: int, log) -> None:
        """Neither is this one."""
        if value > LIMIT and not value == 7:
            raise ValueError("too big")
        log.debug("checked %d", value)
        os.fsync(1)
        log.warning("checked")
    '''
)


def test_each_mutation_names_its_line_and_text() -> None:
    found = {(m.line, m.text, m.description) for m in mutants_of("m.py", MODULE)}
    assert (5, "LIMIT = 3", "3 -> 4") in found
    assert (10, "if value > LIMIT and not value == 7:", "compare#0: Gt -> LtE") in found
    assert (10, "if value > LIMIT and not value == 7:", "And -> Or") in found
    assert (10, "if value > LIMIT and not value == 7:", "drop not") in found
    assert (11, 'raise ValueError("too big")', "drop raise ValueError('too big')") in found
    assert (14, 'log.warning("checked")', "drop call log.warning('checked')") in found


def test_fsync_and_debug_lines_are_skipped_by_design() -> None:
    skipped = {m.text: m.skip_reason for m in mutants_of("m.py", MODULE) if m.skip_reason}
    assert set(skipped) == {'log.debug("checked %d", value)', "os.fsync(1)"}


def test_a_statement_run_at_import_is_marked_with_what_it_defines() -> None:
    limit = next(m for m in mutants_of("m.py", MODULE) if m.text == "LIMIT = 3")
    assert limit.at_import and limit.defines == ("LIMIT",)
    inside = next(m for m in mutants_of("m.py", MODULE) if m.description == "drop not")
    assert not inside.at_import


def test_the_anchor_does_not_move_with_the_line() -> None:
    moved = mutants_of("m.py", "\n\n# a comment above\n" + MODULE)
    assert {m.anchor for m in moved} == {m.anchor for m in mutants_of("m.py", MODULE)}
    assert {m.line for m in moved} != {m.line for m in mutants_of("m.py", MODULE)}


def test_a_mutant_is_applied_to_its_own_node_only() -> None:
    mutant = next(m for m in mutants_of("m.py", MODULE) if m.description == "drop not")
    changed = mutated_source(mutant, MODULE)
    assert "if value > LIMIT and value == 7:" in changed
    assert "LIMIT = 3" in changed


def test_function_of_names_the_innermost_function() -> None:
    assert function_of(MODULE, 10) == "check"
    assert function_of(MODULE, 5) == "(module)"


def test_dataclass_options_are_skipped_by_design() -> None:
    source = "@dataclass(frozen=True, slots=True)\nclass A:\n    x: int = 1\n"
    reasons = {m.description: m.skip_reason for m in mutants_of("a.py", source)}
    assert reasons["1 -> 2"] is None
    assert reasons["True -> False"] == "a dataclass option: Python's dataclasses, not kms"
