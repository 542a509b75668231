"""docs/mutants.md and docs/mutants.json: written by every run, never edited by hand.

The JSON holds the run (when, on which commit, how long, with which options) and every mutant's
outcome; the Markdown is made from it and from the verdicts (``python -m kms_mutants report``
makes it again after a verdict is written, without a new run). A survivor's verdict comes from
tools/mutants/verdicts.json; one without a verdict is marked **to judge**.

Outcomes: ``killed`` (a test failed), ``timeout`` (killed: a test hung past its deadline, or the
whole run past 3 times its tests' measured time plus 30 s), ``survived`` (met every test selected
for it: all the tests that execute its line, or as many as the cap allowed, "k/n"), ``not
covered`` (no test of the coverage run executes its line: it survives by construction), ``not
run`` (the run's time was up before it started), ``skipped`` (equivalent by design, see
``kms_mutants.operators``), ``error N`` (pytest exited with N, such as 5: no tests collected;
neither killed nor survived). A mutant that breaks an import (pytest exits 2, 3 or 4 where the
unmutated code collected the same tests) is killed.

Score: killed / (killed + survived + not covered). Mutants not run or skipped are not in it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

KILLED = ("killed", "timeout")
SURVIVED = ("survived", "not covered")


def kind(outcome: str) -> str:
    if outcome in KILLED:
        return "killed"
    if outcome.startswith("skipped"):
        return "skipped"
    if outcome.startswith("error"):
        return "error"
    return outcome  # survived, not covered, not run


def score(rows: list[dict[str, Any]]) -> tuple[int, int]:
    kinds = Counter(kind(row["outcome"]) for row in rows)
    decided = kinds["killed"] + kinds["survived"] + kinds["not covered"]
    return kinds["killed"], decided


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: dict[str, Any]) -> str:
    run, rows = results["run"], results["mutants"]
    kinds = Counter(kind(row["outcome"]) for row in rows)
    killed, decided = score(rows)
    survivors = [row for row in rows if kind(row["outcome"]) in SURVIVED]
    at_cap = sum(1 for row in survivors if row["outcome"] == "survived" and row["capped"])
    to_judge = sum(1 for row in survivors if row.get("verdict") is None)
    timeouts = sum(1 for row in rows if row["outcome"] == "timeout")
    out: list[str] = []
    add = out.append
    add("# Mutation check (`make mutants`)")
    add("")
    add(
        "Written by `make mutants` (tools/mutants) with docs/mutants.json beside it: not edited "
        "by hand. A verdict is written in tools/mutants/verdicts.json, then "
        "`make mutants-report` writes this file again."
    )
    add("")
    partial = []
    if run.get("only"):
        partial.append(f"only {len(run['modules'])} modules (`--only`)")
    for module, share in run.get("samples", {}).items():
        partial.append(f"a deterministic sample of {share:.0%} of the mutants of `{module}`")
    if kinds["not run"]:
        partial.append(f"{kinds['not run']} mutants not run (out of time)")
    if partial:
        add(f"**Partial run: {'; '.join(partial)}.**")
        add("")
    add(
        f"**Score: {killed} killed of {decided} ({_percent(killed, decided)})**; "
        f"{len(survivors)} survivors ({kinds['survived']} met their tests, {at_cap} of them at "
        f"the cap; {kinds['not covered']} not covered), **{to_judge} to judge**; "
        f"{kinds['not run']} not run; {kinds['skipped']} skipped by design."
    )
    add("")
    add(
        f"Run of {run['started']} on {run['branch']} at {run['commit']}"
        f"{' (kms or its tests with uncommitted changes)' if run.get('dirty') else ''}: "
        f"**{run['minutes']:.1f} minutes in all** ({run['coverage_minutes']:.1f} for the coverage "
        f"run{' (cached)' if run.get('coverage_cached') else ''}, {run['mutant_minutes']:.1f} for "
        f"the mutants: {run['per_minute']:.0f} a minute), {run['jobs']} jobs on {run['cores']} "
        f"cores, load average {run['load_start']:.1f} at the start and {run['load_end']:.1f} at "
        f"the end; cap {run['cap']:.0f} s of measured test time per mutant after its named tests; "
        f"pytest starts in {run['overhead']:.1f} s."
    )
    add("")
    add("| outcome | mutants |")
    add("|---|---|")
    add(f"| killed (a test failed; {timeouts} of them by timeout) | {kinds['killed']} |")
    add(
        f"| survived (met every test selected: all that execute the line, or up to the cap: "
        f"{at_cap} at the cap) | {kinds['survived']} |"
    )
    add(f"| not covered (no test of the coverage run executes the line) | {kinds['not covered']} |")
    add(f"| not run (the run's time was up) | {kinds['not run']} |")
    if kinds["error"]:
        add(f"| error (pytest ran no test: not in the score) | {kinds['error']} |")
    add(f"| skipped by design | {kinds['skipped']} |")
    add(f"| **all** | **{len(rows)}** |")
    add("")
    add("## By module")
    add("")
    add(
        "| module | mutants | killed | survived | not covered | not run | score | sample "
        "| named tests |"
    )
    add("|---|---|---|---|---|---|---|---|---|")
    for module in run["modules"]:
        mine = [row for row in rows if row["path"] == module]
        counts = Counter(kind(row["outcome"]) for row in mine)
        module_killed, module_decided = score(mine)
        named = ", ".join(f"`{Path(file).name}`" for file in run["named"].get(module, [])) or "-"
        add(
            f"| `{module}` | {len(mine)} | {counts['killed']} | {counts['survived']} | "
            f"{counts['not covered']} | {counts['not run']} | "
            f"{_percent(module_killed, module_decided)} | "
            f"{run.get('samples', {}).get(module, 1.0):.0%} | {named} |"
        )
    add("")
    add("## Survivors")
    add("")
    add(
        '"survived k/n": the mutant met k of the n tests that execute its line (or that use the '
        "name it defines, for a line run at import), none failed; k < n means the cap stopped it."
    )
    add("")
    for module in run["modules"]:
        mine = [row for row in survivors if row["path"] == module]
        if not mine:
            continue
        add(f"### {module} ({len(mine)})")
        add("")
        add("| line | in | mutation | outcome | verdict |")
        add("|---|---|---|---|---|")
        for row in sorted(mine, key=lambda row: (row["line"], row["mutation"])):
            outcome = row["outcome"]
            if outcome == "survived":
                outcome = f"survived {row['ran']}/{row['covering']}"
            verdict = row.get("verdict")
            if verdict is None:
                shown = "**to judge**"
            elif row.get("verdict_moved_from"):
                shown = f"{verdict} (verdict written for `{row['verdict_moved_from']}`)"
            else:
                shown = verdict
            add(
                f"| {row['line']} | `{row['function']}` | `{_cell(row['mutation'])}` | "
                f"{outcome} | {_cell(shown)} |"
            )
        add("")
    stale = results.get("stale_verdicts", [])
    add("## Stale verdicts")
    add("")
    if stale:
        add(
            "Their line and mutation are found in no module: the code they judged changed or is "
            "gone. Delete them (`python -m kms_mutants verdicts --drop-stale`) or judge again."
        )
        add("")
        add("| module | line | mutation | verdict |")
        add("|---|---|---|---|")
        for verdict in stale:
            add(
                f"| `{verdict['module']}` | `{_cell(verdict['line'])}` | "
                f"`{_cell(verdict['mutation'])}` | {_cell(verdict['verdict'])} |"
            )
    else:
        add("None.")
    add("")
    moved = results.get("moved_verdicts", [])
    if moved:
        add("## Verdicts found in another module")
        add("")
        add(
            f"{len(moved)} verdicts apply to a line that moved to another module; "
            "`python -m kms_mutants verdicts --reanchor` writes their new module."
        )
        add("")
    add("## The coverage run")
    add("")
    add(
        f"{run['test_files']} test files ({run['tests']} tests); each mutant meets the tests of "
        "its module's named files first, in full, then the other tests that execute its line. "
        "Left out of the coverage run (tools/mutants/pyproject.toml, `exclude-tests`):"
    )
    add("")
    for file, reason in sorted(run["excluded"].items()):
        add(f"- `{file}`: {reason}")
    add("")
    failed = run.get("failed_in_baseline", [])
    if failed:
        add(
            f"{len(failed)} tests failed on the unmutated code in the coverage run (a timing test "
            "on a loaded machine, most likely) and were left out of every selection:"
        )
        add("")
        for node in failed:
            add(f"- `{node}`")
        add("")
    return "\n".join(out)


def write(results: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    json_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown(results), encoding="utf-8")
