"""Which tests a mutant meets, in which order: its module's own tests first, then the others.

1. **Named tests first.** The tests of the files named after the mutated module
   (``Config.named_test_files``: kms/api/policy.py -> test_policy*.py and its aliases) that
   execute the mutated statement, the most specific and cheapest first, up to the named cap
   (``named-cap-seconds``; at least one named test; no cap when it is None). A
   module's HTTP test file can take a minute: in full, for every mutant of the module, it was
   most of the run (kms/service/cache.py's 59 mutants met 77 s of test_cache_staleness.py each,
   68 of the 124 core-minutes of a run). For a statement run at import
   (a constant, a decorator, a default), which every test of the module executes, coverage cannot
   tell which tests need it: the tests of those files come first, but within half the cap.
2. **Then the coverage-selected tests**, until one fails: the other tests that execute the
   statement, up to the cap (seconds of their measured time, the named tests not counted) per
   mutant, at least one. First those that killed a mutant of the same function (then module)
   earlier in the run; then the test functions about the module's subject (``audit`` for
   kms/audit.py; those whose name says it, or its singular, before those whose docstring or body
   does); then the most
   specific (fewest lines of the target modules executed in all, times duration: a unit test of
   the function before a server test that runs half of kms). One test of each file before a
   second of any.

A mutant that meets them all without a failure survived; one whose tests are longer than the cap
survived the cap ("survived k/n": k of the n tests that execute its line). Either way it is a
survivor that needs a test or a verdict: a change that the module's own tests and the cap's
worth of the most specific others do not notice is worth a reviewer's look, whatever a slower
test might have said.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from kms_mutants.operators import Mutant

#: What a run of the HTTP tests costs before its first test: the shared server's start, which
#: the coverage run counted in the first test of the session only.
HTTP_SERVER_START = 1.5


@dataclass(frozen=True)
class Selection:
    tests: list[str]  # node ids, in the order they run (named first, grouped by file)
    named: int  # how many of ``tests`` are named tests
    covering: int  # how many tests execute the mutated statement (or use it, at import)
    seconds: float  # their measured time


@dataclass(eq=False)
class CoverageMap:
    """Which tests execute which line of each re-printed module, and how long each test takes."""

    lines: dict[str, dict[int, set[str]]]  # path -> line -> node ids ("" = outside any test)
    durations: dict[str, float]  # node id -> seconds (setup + call + teardown, under coverage)
    #: test file -> its text (what names it mentions), for the statements run at import
    texts: Callable[[str], str] = field(default=lambda file: "")
    #: (node id, word) -> whether the test's function (its name, docstring, body) says the word
    mentions: Callable[[str, str], bool] = field(default=lambda node, word: False)
    #: module path -> name -> (module, line) of the code inside a function that reads it: in the
    #: module and in the measured modules that import from it
    references: Callable[[str], dict[str, set[tuple[str, int]]]] = field(default=lambda path: {})

    def select(
        self,
        mutant: Mutant,
        named_files: Iterable[str],
        cap: float,
        import_time_tests: Iterable[str] = (),
        killers: Sequence[str] = (),
        named_cap: float | None = None,
    ) -> Selection | None:
        """The tests to run for ``mutant``; None when no test executes its statement.

        ``import_time_tests`` (test files or node ids) check what the module declares at import
        (the OpenAPI document built from every view's ``@documented``): for a statement run at
        import they come right after the named tests, and run whatever the cap.

        ``killers`` (best first) are the tests that killed other mutants of the same function or
        module earlier in the run: among the tests that execute the line, they come next (a
        mutant is often noticed by the test that noticed its neighbour).

        ``named_cap`` bounds the named tests' measured time (not at import, where half the cap
        does): past it, the further named tests wait, but the first (most specific) always runs.
        """
        executed = self.lines.get(mutant.path, {})
        contexts: set[str] = set()
        for line in range(mutant.first_line, mutant.last_line + 1):
            contexts |= executed.get(line, set())
        if not contexts:
            return None
        named_files = set(named_files)
        tests = direct = {context for context in contexts if context}
        if "" in contexts and mutant.at_import:
            # Run at import: the tests that ran it in a child process (every server start
            # imports the module) are no more specific than any other user of the module.
            direct = set()
            dotted = mutant.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            files = named_files | {
                file for file in self.files if dotted in self.texts(file) or file in named_files
            }
            tests = tests | {node for node in self.durations if _file(node) in files}
            tests |= {context for line in executed.values() for context in line if context}
        named = {node for node in tests if _file(node) in named_files}
        hinted: set[str] = set()
        if "" in contexts and mutant.at_import:
            wanted = set(import_time_tests)
            hinted = {n for n in self.durations if n in wanted or _file(n) in wanted} - named
            tests = tests | hinted
        rank = {node: index for index, node in enumerate(killers) if node in tests}
        word = _subject(mutant.path)
        # Named after it (the test function's name says the subject, or its singular: a test of
        # kms/api/errors.py says "error"), then merely about it (its docstring or body does).
        named_for = {node for node in tests if word.removesuffix("s") in _function_name(node)}
        about = {node for node in tests if self.mentions(node, word)} | named_for
        naming, reading = self.users(mutant) if "" in contexts else (set(), set())
        in_module = self.lines_in_module(mutant.path)
        breadth = self.breadth

        def order(node: str) -> tuple[int, object, float, str]:
            # Specific and cheap first: lines executed times seconds (a 20 s server test that
            # runs the line among thousands comes after a 0.1 s unit test of the function).
            seconds = self.durations.get(node, 1.0)
            cost = _cost(node, seconds)
            if node in named:
                return (0, breadth.get(node, 0) * cost, seconds, node)
            if node in hinted:
                return (1, cost, seconds, node)
            if node in rank:
                return (2, rank[node], seconds, node)
            if node in about:
                return (3, (node not in named_for, breadth.get(node, 0) * cost), seconds, node)
            if node in direct:
                return (4, breadth.get(node, 0) * cost, seconds, node)
            if node in naming:
                return (5, breadth.get(node, 0) * cost, seconds, node)
            if node in reading:
                return (6, breadth.get(node, 0) * cost, seconds, node)
            return (7, -in_module.get(node, 0) / cost, seconds, node)

        ordered = _across_files(sorted(tests, key=order), key=lambda node: order(node)[0])
        chosen: list[str] = []
        spent = 0.0  # on the tests the cap bounds: not the named ones (nor the hinted ones)
        on_named = 0.0  # at import: the named tests may take half the cap, the others the rest
        named_spent = 0.0  # not at import: the named tests, up to the named cap
        files: set[str] = set()
        for node in ordered:
            file = _file(node)
            seconds = self.durations.get(node, 1.0)
            cost = _cost(node, seconds) if file not in files else seconds
            if node in named and not mutant.at_import:
                if named_cap is not None and named_spent and named_spent + cost > named_cap:
                    continue  # past the named cap: a shorter named test may still fit
                files.add(file)
                named_spent += cost
                chosen.append(node)
                continue
            if node in hinted:
                files.add(file)
                chosen.append(node)
                continue
            if node in named and on_named > 0 and on_named + cost > cap / 2:
                continue  # at import, past its share: the named file's other tests wait
            if chosen and spent + cost > cap:
                continue  # too long for what is left of the cap: a shorter one may fit
            files.add(file)
            spent += cost
            on_named += cost if node in named else 0.0
            chosen.append(node)
        grouped = _grouped(chosen)
        ran_named = sum(1 for node in grouped if node in named)
        return Selection(grouped, ran_named, len(ordered), self.seconds(grouped))

    @functools.cached_property
    def files(self) -> set[str]:
        return {_file(node) for node in self.durations}

    def users(self, mutant: Mutant) -> tuple[set[str], set[str]]:
        """The tests that use a name the mutated module-level statement defines: those whose
        file names it and the module (a test written about that constant or class), and those
        that execute a line reading it in the module or in a measured module importing from it."""
        naming: set[str] = set()
        reading: set[str] = set()
        dotted = mutant.path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        references = self.references(mutant.path)
        for name in mutant.defines:
            for path, line in references.get(name, ()):
                reading |= self.lines.get(path, {}).get(line, set())
            mentioning = {
                file
                for file in self.files
                if name in self.texts(file) and dotted in self.texts(file)
            }
            naming |= {node for node in self.durations if _file(node) in mentioning}
        reading.discard("")
        return naming, reading

    @functools.cached_property
    def breadth(self) -> dict[str, int]:
        """node id -> how many lines of the measured modules the test executes."""
        counts: dict[str, int] = {}
        for per_line in self.lines.values():
            for contexts in per_line.values():
                for context in contexts:
                    counts[context] = counts.get(context, 0) + 1
        return counts

    @functools.cache  # noqa: B019 - one map per run, kept for the run anyway
    def lines_in_module(self, path: str) -> dict[str, int]:
        """node id -> how many lines of ``path`` the test executes."""
        counts: dict[str, int] = {}
        for contexts in self.lines.get(path, {}).values():
            for context in contexts:
                counts[context] = counts.get(context, 0) + 1
        return counts

    def seconds(self, tests: Iterable[str]) -> float:
        return sum(self.durations.get(node, 1.0) for node in tests)


def _function_name(node: str) -> str:
    """``tests/x.py::test_a_thing[param]`` -> ``test_a_thing``."""
    return node.split("::")[-1].split("[")[0]


def _subject(path: str) -> str:
    """What a module is about, as a test would say it: ``kms/api/audit.py`` -> ``audit``."""
    stem = PurePosixPath(path).stem
    return PurePosixPath(path).parent.name if stem == "__init__" else stem


def _file(node: str) -> str:
    return node.split("::")[0]


def _cost(node: str, seconds: float) -> float:
    """A test's cost as the first of its file in a run: an HTTP test starts the shared server."""
    return max(seconds, HTTP_SERVER_START if "/http/" in node else 0.05)


def _across_files(nodes: list[str], key: Callable[[str], int]) -> list[str]:
    """``nodes`` (in order) taken one file at a time within each tier of ``key``: the first of
    every file, then the second of every file... Each test file checks a promise of its own, so a
    cap that meets a few tests is better spent on the best of several files than on the ten
    variants of one parametrized test."""
    tiers: dict[int, dict[str, list[str]]] = {}
    for node in nodes:
        tiers.setdefault(key(node), {}).setdefault(_file(node), []).append(node)
    result: list[str] = []
    for tier in sorted(tiers):
        files = list(tiers[tier].values())
        for rank in range(max(len(nodes_of_file) for nodes_of_file in files)):
            result += [nodes_of_file[rank] for nodes_of_file in files if rank < len(nodes_of_file)]
    return result


def _grouped(tests: list[str]) -> list[str]:
    """``tests`` (in the order chosen) regrouped by file, the file of the first test first.

    Tests of one file stay together so that a module-scoped fixture (a server, a keystore with
    one key of each type) is set up once per run.
    """
    by_file: dict[str, list[str]] = {}
    for node in tests:
        by_file.setdefault(_file(node), []).append(node)
    return [node for nodes in by_file.values() for node in nodes]
