"""``python -m kms_mutants [run|report|verdicts]``, from the project's root (``make mutants``).

- ``run`` (the default): the mutation run; writes docs/mutants.json and docs/mutants.md.
- ``report``: docs/mutants.md again from docs/mutants.json and the verdicts as they are now.
- ``estimate``: what a run would cost, from the cached coverage run (``run --coverage-only``).
- ``verdicts``: lists the stale and moved verdicts; ``--reanchor`` writes the moved ones' new
  module, ``--drop-stale`` deletes the stale ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kms_mutants import config as config_module
from kms_mutants import report, verdicts
from kms_mutants.run import Sources, apply_verdicts, estimate, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kms_mutants", description=__doc__)
    parser.add_argument(
        "command", nargs="?", default="run", choices=["run", "report", "verdicts", "estimate"]
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project (default: .)")
    parser.add_argument(
        "--config",
        type=Path,
        help="the settings (default: tools/mutants/pyproject.toml under --root)",
    )
    run_options = parser.add_argument_group("run")
    run_options.add_argument("--only", nargs="*", help="module paths (default: the targets)")
    run_options.add_argument("--list", action="store_true", help="list the mutants and exit")
    run_options.add_argument(
        "--coverage-only", action="store_true", help="make (or find) the coverage run and stop"
    )
    run_options.add_argument(
        "--calibrate", help="estimate: the JSON of an earlier run, to scale the bound by"
    )
    run_options.add_argument("--jobs", type=int, help="copies running mutants in parallel")
    run_options.add_argument(
        "--cap",
        type=float,
        help="seconds of measured test time per mutant after its named tests (default: config)",
    )
    run_options.add_argument(
        "--minutes",
        type=float,
        help="start no mutant after this many minutes of the run (default: config)",
    )
    run_options.add_argument(
        "--sample",
        type=float,
        help="run this share of every module's mutants, the same ones every time "
        "(default: the configuration's [tool.kms-mutants.sample], else all)",
    )
    run_options.add_argument("--postgres-dsn", help="also run the PostgreSQL tests (as make test)")
    run_options.add_argument(
        "--no-fork",
        dest="fork",
        action="store_false",
        help="start a new pytest process per mutant instead of forking a preloaded one (slower)",
    )
    run_options.add_argument("--json", help="where the results go (default: config)")
    run_options.add_argument("--markdown", help="where the report goes (default: config)")
    verdict_options = parser.add_argument_group("verdicts")
    verdict_options.add_argument("--reanchor", action="store_true")
    verdict_options.add_argument("--drop-stale", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    root = options.root.resolve()
    config = config_module.load(
        root, options.config or root / "tools" / "mutants" / "pyproject.toml"
    )
    options.jobs = options.jobs or config.jobs
    options.cap = config.cap_seconds if options.cap is None else options.cap
    options.minutes = config.minutes if options.minutes is None else options.minutes
    options.json = options.json or config.json
    options.markdown = options.markdown or config.markdown
    if options.command == "run":
        return run(options, config)
    if options.command == "estimate":
        return estimate(options, config)
    sources = Sources(root)
    if options.command == "report":
        results = json.loads((root / options.json).read_text(encoding="utf-8"))
        apply_verdicts(results, config, sources)
        report.write(results, root / options.json, root / options.markdown)
        print(f"written: {options.markdown}")
        return 0
    written = verdicts.load(root / config.verdicts)
    modules = {*config.target_modules()}
    modules |= {verdict.module for verdict in written if (root / verdict.module).exists()}
    current = [mutant for path in sorted(modules) for mutant in sources.mutants(path)]
    resolved = verdicts.resolve(written, current)
    for verdict, module in resolved.moved:
        print(f"moved: {verdict.module} -> {module}: {verdict.line} [{verdict.mutation}]")
    for verdict in resolved.stale:
        print(f"stale verdict: {verdict.module}: {verdict.line} [{verdict.mutation}]")
    print(f"{len(written)} verdicts: {len(resolved.moved)} moved, {len(resolved.stale)} stale")
    if options.reanchor or options.drop_stale:
        kept = verdicts.reanchor(written, resolved, drop_stale=options.drop_stale)
        verdicts.save(root / config.verdicts, kept)
        print(f"written: {config.verdicts} ({len(kept)} verdicts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
