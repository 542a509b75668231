"""The survivors' part of docs/mutants.md, from ``make mutants``' JSON and the verdicts kept so far.

Usage: python scripts/mutants_report.py mutants.json [--verdicts docs/mutants-verdicts.json]

Prints the counts and, by module, every mutant that was not killed with its verdict. A verdict is
matched by module, enclosing function, mutation and the text of the mutated line (not its number,
which moves with every edit above it), so a judgment made once holds in later runs until that
line changes. A true survivor or a "not covered" mutant without a verdict is marked **to judge**;
a cut-short one (met only some of its tests within the time) gets no verdict: it is undecided.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _lines(path: str) -> list[str]:
    return (ROOT / path).read_text(encoding="utf-8").splitlines()


@functools.cache
def _functions(path: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of every function in the module."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return [
        (node.lineno, node.end_lineno or node.lineno, node.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def function_of(path: str, line: int) -> str:
    """The innermost function holding ``line``, or ``(module)`` (class bodies included)."""
    holding = [f for f in _functions(path) if f[0] <= line <= f[1]]
    return max(holding, key=lambda f: f[0])[2] if holding else "(module)"


def _base_key(path: str, line: int, mutation: str) -> str:
    text = _lines(path)[line - 1].strip() if 0 < line <= len(_lines(path)) else ""
    return f"{path} | {function_of(path, line)} | {mutation} | {text}"


@functools.cache
def _lines_of_key(path: str) -> dict[str, list[int]]:
    """base key -> the lines of the module's mutants that share it, in order."""
    from mutants import mutants_of

    found: dict[str, set[int]] = {}
    for mutant in mutants_of(path):
        found.setdefault(_base_key(path, mutant.line, mutant.description), set()).add(mutant.line)
    return {base: sorted(lines) for base, lines in found.items()}


def key(path: str, line: int, mutation: str) -> str:
    """Module, function, mutation and the line's text; the same statement twice in a function
    (a clean-up on two refusal paths) is told apart by its rank: `` #2`` for the second."""
    base = _base_key(path, line, mutation)
    lines = _lines_of_key(path).get(base, [line])
    rank = lines.index(line) + 1 if line in lines else 1
    return base if rank == 1 else f"{base} #{rank}"


def kind(outcome: str) -> str:
    if outcome in ("killed", "timeout"):
        return "killed"
    if outcome.startswith("survived "):
        ran, executing = outcome.removeprefix("survived ").split("/")
        return "true survivor" if ran == executing else "cut short"
    if outcome == "not covered":
        return "not covered"
    if outcome in ("skipped: not run", "not run: out of time"):
        return "not run"
    if outcome.startswith("skipped"):
        return "skipped"
    return "not run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--verdicts", type=Path, default=ROOT / "docs" / "mutants-verdicts.json")
    options = parser.parse_args()
    results = json.loads(options.results.read_text(encoding="utf-8"))
    verdicts: dict[str, str] = {}
    if options.verdicts.exists():
        verdicts = json.loads(options.verdicts.read_text(encoding="utf-8"))
    kinds = Counter(kind(result["outcome"]) for result in results)
    run = sum(count for name, count in kinds.items() if name not in ("skipped", "not run"))
    print(
        f"**Score: {kinds['killed']} killed of {run} mutants run or found not covered "
        f"({100 * kinds['killed'] / max(run, 1):.1f}%)**; "
        f"{kinds['true survivor']} true survivors (met every test that executes their line; each "
        f"has a verdict below), {kinds['cut short']} cut short, {kinds['not covered']} not "
        f"covered, {kinds['not run']} not run (out of time); {kinds['skipped']} skipped by design."
    )
    print()
    by_path: dict[str, list[dict]] = {}
    not_run: Counter[str] = Counter()
    for result in results:
        by_path.setdefault(result["path"], [])
        if kind(result["outcome"]) == "not run":
            not_run[result["path"]] += 1
        elif kind(result["outcome"]) != "killed":
            by_path[result["path"]].append(result)
    to_judge = 0
    for path, rows in by_path.items():
        print(f"### {path} ({len(rows)} not killed)")
        print()
        if not_run[path]:
            print(f"{not_run[path]} more mutants of this module were not run (out of time).")
            print()
        if not rows:
            continue
        print("| line | in | mutation | outcome | verdict |")
        print("|---|---|---|---|---|")
        for row in sorted(rows, key=lambda row: row["line"]):
            outcome, line = row["outcome"], row["line"]
            verdict = verdicts.get(key(path, line, row["mutation"]))
            if kind(outcome) == "cut short":
                ran, executing = outcome.removeprefix("survived ").split("/")
                verdict = f"cut short: met {ran} of the {executing} tests that execute it"
            elif kind(outcome) == "skipped":
                verdict = outcome.removeprefix("skipped: ")
            elif verdict is None:
                verdict = "**to judge**"
                to_judge += 1
            mutation = row["mutation"].replace("|", "\\|")
            name = function_of(path, line)
            print(f"| {line} | `{name}` | `{mutation}` | {outcome} | {verdict} |")
        print()
    if to_judge:
        print(f"{to_judge} rows to judge.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
