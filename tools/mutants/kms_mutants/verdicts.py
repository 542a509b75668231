"""Verdicts: a reviewer's judgement of a mutant no test kills, kept across runs and code moves.

A verdict is anchored by (module path, the stripped text of the mutated line, the mutation's
description), never by a line number: an edit above the line, or the line moving within its
module, leaves the anchor as it was. Only a change to the line itself (or to the mutation, which
quotes the dropped call) retires the verdict, which is right: the judgement was about that code.

- **Moved.** A verdict whose module no longer has its anchor, but another module has the same
  line and mutation (a function moved from kms/service/keys.py into kms/service/keys/rules.py),
  still applies there; the report lists it as moved, and ``python -m kms_mutants verdicts
  --reanchor`` rewrites its module path.
- **Stale.** A verdict whose line and mutation are found nowhere is reported as a *stale
  verdict*: the code it judged is gone or changed, and the verdict should be deleted (or written
  again for the new code). ``--drop-stale`` deletes them.

The same anchor twice in a module (one statement written in two places, mutated the same way)
shares one verdict, written so that it holds for both; when the two need different verdicts,
each names its function (``"in": "trim_key"``), which then decides between them. A function's
name moves with it, so that does not tie a verdict to a line either.

The file is a JSON list of ``{"module", "line", "mutation", "verdict"}`` objects (``"in"`` when
needed), sorted, so a diff shows one verdict per hunk. A verdict starts with its kind:
``harmless: ...`` (equivalent, defensive or unreachable, a log line nobody is promised),
``gap: ...`` (a real hole, left with its reason), ``needs a test: ...`` (a promise no test checks
yet), or ``killed by ...`` (a test added after the run that found it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kms_mutants.operators import Mutant

Anchor = tuple[str, str, str]  # (module path, stripped line text, mutation description)


@dataclass(frozen=True)
class Verdict:
    module: str
    line: str
    mutation: str
    verdict: str
    function: str | None = None  # only to tell apart the same anchor in two functions

    @property
    def anchor(self) -> Anchor:
        return (self.module, self.line, self.mutation)

    def applies_to(self, mutant: Mutant) -> bool:
        same = (mutant.text, mutant.description) == (self.line, self.mutation)
        return same and self.function in (None, mutant.function)


def load(path: Path) -> list[Verdict]:
    if not path.exists():
        return []
    return [
        Verdict(
            entry["module"],
            entry["line"],
            entry["mutation"],
            entry["verdict"],
            entry.get("in"),
        )
        for entry in json.loads(path.read_text(encoding="utf-8"))
    ]


def save(path: Path, verdicts: Iterable[Verdict]) -> None:
    entries = sorted({_key(verdict): verdict for verdict in verdicts}.values(), key=_key)
    rows = []
    for entry in entries:
        row = {"module": entry.module, "line": entry.line, "mutation": entry.mutation}
        if entry.function is not None:
            row["in"] = entry.function
        rows.append({**row, "verdict": entry.verdict})
    text = json.dumps(rows, indent=1, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _key(verdict: Verdict) -> tuple[str, str, str, str]:
    return (*verdict.anchor, verdict.function or "")


#: A mutant as verdicts see it: its anchor and its function.
MutantKey = tuple[str, str, str, str]


def mutant_key(mutant: Mutant) -> MutantKey:
    return (*mutant.anchor, mutant.function)


@dataclass(frozen=True)
class Resolved:
    """The verdicts matched against the code as it is now."""

    #: a current mutant -> (verdict, the module it was written for when it moved, else None)
    found: dict[MutantKey, tuple[str, str | None]]
    moved: list[tuple[Verdict, str]]  # (verdict, the module it now applies in)
    stale: list[Verdict]

    def lookup(self, mutant: Mutant) -> tuple[str, str | None] | None:
        return self.found.get(mutant_key(mutant))


def resolve(verdicts: list[Verdict], mutants: Iterable[Mutant]) -> Resolved:
    """Match ``verdicts`` to ``mutants``: the mutants of every module a verdict names that
    exists and of every module the run could mutate (so a moved line is found).

    A verdict naming its function is preferred to one that does not; a verdict applies in
    another module only to mutants that no verdict of their own module judges.
    """
    by_text: dict[tuple[str, str], list[Mutant]] = {}
    for mutant in mutants:
        by_text.setdefault((mutant.text, mutant.description), []).append(mutant)
    found: dict[MutantKey, tuple[str, str | None]] = {}
    unmatched: list[Verdict] = []
    # General verdicts first: one that names its function then overrides them.
    for verdict in sorted(verdicts, key=lambda verdict: verdict.function is not None):
        here = [
            mutant
            for mutant in by_text.get((verdict.line, verdict.mutation), [])
            if mutant.path == verdict.module and verdict.applies_to(mutant)
        ]
        for mutant in here:
            found[mutant_key(mutant)] = (verdict.verdict, None)
        if not here:
            unmatched.append(verdict)
    moved: list[tuple[Verdict, str]] = []
    stale: list[Verdict] = []
    judged_here = set(found)
    for verdict in unmatched:
        elsewhere = [
            mutant
            for mutant in by_text.get((verdict.line, verdict.mutation), [])
            if verdict.applies_to(mutant) and mutant_key(mutant) not in judged_here
        ]
        if not elsewhere:
            stale.append(verdict)
            continue
        for module in sorted({mutant.path for mutant in elsewhere}):
            moved.append((verdict, module))
        for mutant in elsewhere:
            if mutant_key(mutant) not in found or verdict.function is not None:
                found[mutant_key(mutant)] = (verdict.verdict, verdict.module)
    return Resolved(found, moved, stale)


def reanchor(verdicts: list[Verdict], resolved: Resolved, drop_stale: bool) -> list[Verdict]:
    """``verdicts`` with each moved one written for the module it now applies in (one per
    module, when the line went to several) and, with ``drop_stale``, the stale ones left out."""
    moved: dict[tuple[str, str, str, str], list[str]] = {}
    for verdict, module in resolved.moved:
        moved.setdefault(_key(verdict), []).append(module)
    stale = {_key(verdict) for verdict in resolved.stale}
    result: list[Verdict] = []
    for verdict in verdicts:
        if _key(verdict) in moved:
            result += [
                Verdict(module, verdict.line, verdict.mutation, verdict.verdict, verdict.function)
                for module in moved[_key(verdict)]
            ]
        elif not (drop_stale and _key(verdict) in stale):
            result.append(verdict)
    return result
