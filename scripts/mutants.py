"""Mutation check for kms: ``make mutants`` (not part of ``make test``).

Makes one small change at a time to the modules that hold kms's promises (kms/crypto, kms/service,
kms/store and the startup path: kms/master.py, kms/gunicorn_conf.py, kms/wsgi.py), runs the tests
that matter for that module, and reports every change no test noticed (a "survivor").

Why a script of ours rather than mutmut: mutmut 3 mutates functions through trampolines that only
exist inside the pytest process, so the startup path (gunicorn_conf's module-level settings, and
master.py as run by ``kms serve`` in a child process) could not be mutated or would never be seen
by the tests that exercise it. Here each mutant is written into a copy of the repository and the
tests run with ``PYTHONPATH`` pointing at that copy, so ``kms serve``, gunicorn and every other
child process run the mutant too.

Operators (each applied to one AST node at a time): comparison flipped (== !=, < >=, <= >,
in / not in, is / is not), ``and``/``or`` swapped, ``not`` dropped, ``+``/``-`` swapped, an integer
constant changed by one, True/False swapped, a bytes constant changed, a call statement or a
``raise`` replaced by ``pass``. Docstrings, type annotations and string constants (messages) are
left alone. A mutant counts as killed when the tests fail or time out.

Skipped by design (listed by ``--list``, never run, not in the score): dropping ``os.fsync``
(durability across a power cut: the data is in the page cache either way, so no test short of
pulling the plug can tell) and dropping a ``.debug(...)`` log call (not emitted at the level kms
runs at).

How it fits in half an hour on two cores (a mutant costs a pytest start plus its tests):
1. One coverage run of every test file in TARGETS, with one coverage context per test
   (scripts/mutants_plugin.py) and child processes measured too, the files shared out among the
   copies (one coverage process each). It is also the baseline (the unmutated code must pass)
   and gives each test's duration. It is cached in .mutants-cache/ per code, tests and lists,
   so a rerun (``--only``) skips it. A child process records the test running at the time
   (scripts/mutants_site.py), so a line that only ``kms serve``, gunicorn's master or workers or
   a ``kms`` command runs is mapped to the tests that made it run. The copies hold no ``.git``:
   their processes get ``GIT_DIR`` (the repository's, read only), so the upgrade tests, which
   extract the previous release from git history, run in them.
2. A mutant on a line no test executes is reported "not covered" without running anything: it
   would survive by construction. Its fix is a test, or a test file added to TARGETS.
3. Otherwise only the tests that execute the mutated statement run, with ``-x``, most specific
   first (fewest lines of the target modules executed, times duration; one test of each file
   before a second of any), up to ``--budget`` seconds of their measured time (at least one
   test). A line executed at import (a constant, a default, a decorator) has no test context: it
   gets every test that uses the module and the module's TARGETS list, those that use a name
   the statement defines first (CoverageMap.tests_for).
4. A survivor that met only part of its tests because of the budget is rerun in a second pass
   with more of them, up to ``--confirm-budget`` seconds (the cap per mutant; ``--no-confirm``
   skips the pass), cheapest first, so the budget saves time without hiding a kill. No run
   starts once the whole run has taken ``--minutes`` (default 27, so that it ends within 30): a
   first-pass mutant not reached is "not run". A survivor still cut short (by the cap or the
   time) says so ("survived k/n", k < n): it is counted as a survivor, never as killed.
5. ``--jobs`` copies run mutants in parallel (default 2, the machine's cores). A run's timeout
   is 3 times the measured time of its tests plus pytest's start, plus 30 s; a timeout counts as
   killed (an infinite loop is a noticed bug).
6. Each copy is compiled once (checked-hash pycs), so a run compiles only the mutated module.
7. No new pytest process per mutant (2-3 s of imports on an idle machine, 3.3 s under load, before
   any test runs): each copy has a fork server (scripts/mutants_server.py) that has imported
   pytest and the third-party modules once, and forks a pytest per mutant after the mutant is
   written into the copy (about 0.3 s to the first test). kms and the tests are imported only in
   the fork, so it runs the mutant, as do the processes it starts. ``--no-fork`` goes back to a
   new process per mutant (same outcomes, slower).

Usage: python scripts/mutants.py [--jobs N] [--only PATH ...] [--list] [--budget S] [--json F]
       [--confirm-budget S] [--no-confirm] [--no-fork] [--postgres-dsn DSN]
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[1]

UNIT_CRYPTO = [
    "tests/unit/test_kdf_known_answers.py",
    "tests/unit/test_kdf.py",
    "tests/unit/test_wrapping.py",
    "tests/unit/test_ciphertext.py",
    "tests/unit/test_stored_formats.py",
    "tests/unit/test_algorithms.py",
    "tests/unit/test_crypto_wycheproof.py",
]
SERVICE = [
    "tests/unit/test_key_cache.py",
    "tests/unit/test_cache_bounds.py",
    "tests/unit/test_secrets_in_memory.py",
    "tests/unit/test_encryption_context.py",
    "tests/service/test_secret_buffers.py",
    "tests/service/test_service.py",
    "tests/service/test_key_state_rules.py",
    "tests/service/test_key_states.py",
    "tests/service/test_rotation.py",
    "tests/service/test_batches.py",
    "tests/service/test_version_limits.py",
    "tests/service/test_key_types.py",
    "tests/service/test_decrypt_tampering.py",
    "tests/service/test_key_storage.py",
    "tests/service/test_key_fields.py",
    # The key-row cache (kms/service/cache.py KeyRowCache, its use in keys.py), in process.
    "tests/service/test_key_row_cache.py",
]
STORE = [
    "tests/service/test_store_engine.py",
    "tests/service/test_postgres.py",  # skipped unless --postgres-dsn is given
    "tests/service/test_keystore.py",
    "tests/service/test_service.py",
    "tests/service/test_untrusted_storage.py",
    "tests/service/test_concurrent_rotation.py",
    "tests/service/test_key_storage.py",
    # SQLite writers' turns and WAL checkpoints (kms.store.db, changes); a cold key's statements.
    "tests/service/test_sqlite_writers.py",
    "tests/service/test_cold_keys.py",
]
STARTUP = [
    "tests/service/test_secret_buffers.py",
    "tests/service/test_store_engine.py",
    "tests/service/test_gunicorn_conf.py",
    "tests/service/test_keystore.py",
    "tests/service/test_postgres.py",  # skipped unless --postgres-dsn is given
    "tests/http/test_startup.py",
]
#: The operator commands (kms init, rekey, backup, restore, check, upgrade, rotate-due) as
#: kms.master runs them; test_upgrade*.py extract the previous release with git (see make_copy).
OPERATOR = [
    "tests/system/test_operator_commands.py",
    "tests/service/test_rekey.py",
    "tests/service/test_backup.py",
    "tests/service/test_backup_format.py",
    "tests/service/test_init_atomicity.py",
    "tests/system/test_rotate_due_command.py",
    "tests/service/test_passphrase_files.py",
    "tests/system/test_upgrade.py",
    "tests/system/test_upgrade_key_states.py",
    "tests/system/test_upgrade_use_limits.py",
]
#: Starting a real server and what its gunicorn master does: refusals at start (a port in use, a
#: bad policy), SIGHUP (workers re-executed, the policy reloaded).
#: (test_startup_faults.py and test_serving.py are left out: 130 s more of coverage run, for lines
#: these and the startup lists already execute.)
SERVING = [
    "tests/system/test_first_run.py",
    "tests/http/test_authorization.py",
]
#: Row MACs (kms/crypto/integrity.py, kms/service/integrity.py): unit vectors and tampered rows.
INTEGRITY = [
    "tests/unit/test_integrity.py",
    "tests/service/test_untrusted_storage.py",
    "tests/service/test_key_storage.py",
]

#: Module -> the test files that matter for it. Every file of every list runs once under coverage
#: (which is also the baseline); each mutant then runs only the tests that executed its line
#: (most specific first, see CoverageMap.tests_for), and the whole list only for a line that ran
#: at import.
TARGETS: dict[str, list[str]] = {
    "kms/crypto/kdf.py": [*UNIT_CRYPTO, "tests/service/test_keystore.py"],
    "kms/crypto/ciphertext.py": [
        *UNIT_CRYPTO,
        "tests/unit/test_encryption_context.py",
        "tests/service/test_decrypt_tampering.py",
    ],
    "kms/crypto/encoding.py": [*UNIT_CRYPTO, "tests/service/test_decrypt_tampering.py"],
    "kms/crypto/wrapping.py": [*UNIT_CRYPTO, *INTEGRITY],
    "kms/crypto/algorithms.py": [
        *UNIT_CRYPTO,
        "tests/unit/test_key_types.py",
        "tests/service/test_service.py",
        "tests/service/test_key_types.py",
    ],
    "kms/crypto/integrity.py": [*UNIT_CRYPTO, *INTEGRITY],
    "kms/service/integrity.py": [*INTEGRITY, "tests/service/test_service.py"],
    "kms/service/keyring.py": [*SERVICE, "tests/service/test_gunicorn_conf.py"],
    "kms/service/keys.py": [
        *SERVICE,
        "tests/unit/test_key_types.py",
        "tests/unit/test_encryption_budget.py",
        "tests/service/test_untrusted_storage.py",
        "tests/system/test_rotate_due_command.py",
        "tests/http/test_key_types.py",
        "tests/http/test_use_limits.py",
        # Every field's refusal as a client meets it.
        "tests/http/test_bad_input.py",
    ],
    "kms/service/cache.py": SERVICE,
    "kms/service/usage.py": [
        "tests/unit/test_encryption_budget.py",
        "tests/unit/test_use_tally.py",
        "tests/service/test_key_row_cache.py",
        "tests/service/test_service.py",
        "tests/system/test_upgrade_use_limits.py",
        "tests/http/test_use_limits.py",
    ],
    "kms/service/keystore.py": [*SERVICE, "tests/service/test_keystore.py", *OPERATOR],
    "kms/service/passphrase.py": [
        "tests/service/test_keystore.py",
        "tests/service/test_passphrase_files.py",
        "tests/system/test_passphrase_prompt.py",
        "tests/http/test_startup.py",
    ],
    "kms/service/backup.py": [
        "tests/service/test_backup.py",
        "tests/service/test_backup_format.py",
        "tests/system/test_operator_commands.py",
    ],
    "kms/store/db.py": STORE,
    "kms/store/repository.py": [*STORE, "tests/system/test_rotate_due_command.py"],
    "kms/store/statements.py": [*STORE, "tests/system/test_rotate_due_command.py"],
    "kms/store/records.py": STORE,
    # Column types and lengths: SQLite ignores most of them, so the PostgreSQL-free list is short.
    "kms/store/models.py": STORE[:3],
    "kms/store/schema.py": [*STORE[:3], *OPERATOR[-3:]],
    "kms/store/changes.py": [
        "tests/service/test_key_row_cache.py",
        "tests/service/test_sqlite_writers.py",
        "tests/service/test_store_engine.py",
        "tests/service/test_postgres.py",  # the LISTEN/NOTIFY path
        "tests/http/test_cache_staleness.py",
    ],
    "kms/store/serving.py": [
        "tests/service/test_store_engine.py",
        "tests/service/test_rekey.py",
        "tests/service/test_backup.py",
        "tests/system/test_operator_commands.py",
        "tests/http/test_startup.py",
    ],
    "kms/store/snapshot.py": [
        "tests/service/test_backup.py",
        "tests/system/test_operator_commands.py",
        "tests/service/test_rekey.py",
    ],
    "kms/store/faults.py": [
        "tests/service/test_init_atomicity.py",
        "tests/service/test_store_engine.py",
        "tests/http/test_startup.py",
    ],
    "kms/master.py": [*STARTUP, *OPERATOR, *SERVING[:1]],
    "kms/gunicorn_conf.py": [*STARTUP, *SERVING, "tests/http/test_tls.py"],
    "kms/wsgi.py": [
        "tests/service/test_secret_buffers.py",
        "tests/http/test_startup.py",
    ],
}

SWAPS: dict[type, type] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.And: ast.Or,
    ast.Or: ast.And,
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
}


@dataclass(frozen=True)
class Mutant:
    path: str
    index: int
    line: int  # in the module as written (what the report shows)
    description: str
    first_line: int = 0  # the mutated statement's lines in the re-printed module (coverage's)
    last_line: int = 0
    skip_reason: str | None = None
    #: Names the mutated module-level statement defines (a constant, a class, a function whose
    #: default or decorator is mutated): the tests that use them come first (CoverageMap).
    defines: tuple[str, ...] = ()
    at_import: bool = False  # module or class level, a decorator or a default: runs at import


def _skip_reason(node: ast.AST) -> str | None:
    """Why a mutant is equivalent by design (never run, reported apart), or None."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        called = ast.unparse(node.value.func)
        if called == "os.fsync":
            # Durability across a power cut: the data is in the page cache either way, so no
            # test short of pulling the plug can tell; the documented crash-safety rests on review.
            return "fsync: only a power cut could tell"
        if called.endswith(".debug"):
            return "debug log line: not emitted at the configured level"
    return None


def _statement_lines(tree: ast.AST) -> dict[int, tuple[int, int]]:
    """For each node (by id): the lines coverage.py reports for the statement that runs it.

    A node in a simple statement is executed when any line of that statement is; a node in the
    header of a compound statement (an ``if`` test, a decorator, a default value) by its own lines.
    """
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    ranges: dict[int, tuple[int, int]] = {}
    for node in ast.walk(tree):
        if not hasattr(node, "lineno"):
            continue
        statement = node
        while not isinstance(statement, ast.stmt) and id(statement) in parents:
            statement = parents[id(statement)]
        if hasattr(statement, "body") and statement is not node:
            first = min(statement.lineno, node.lineno)
            ranges[id(node)] = (first, node.end_lineno or node.lineno)
        elif hasattr(statement, "body"):  # a whole compound statement: its first line
            ranges[id(node)] = (statement.lineno, statement.lineno)
        else:
            ranges[id(node)] = (statement.lineno, statement.end_lineno or statement.lineno)
    return ranges


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings and annotations (and everything inside them)."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(inner) for inner in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip(body[0])
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.returns)
            for argument in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                skip(argument.annotation)
        if isinstance(node, ast.AnnAssign):
            skip(node.annotation)
    return skipped


def _candidates(tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """Every (node, description) that one mutation applies to, in a fixed order."""
    skipped = _skipped_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                if type(op) in SWAPS:
                    name = f"{type(op).__name__} -> {SWAPS[type(op)].__name__}"
                    yield node, f"compare#{position}: {name}"
        elif isinstance(node, ast.BoolOp | ast.BinOp) and type(node.op) in SWAPS:
            yield node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "drop not"
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                yield node, f"{node.value} -> {not node.value}"
            elif isinstance(node.value, int):
                yield node, f"{node.value} -> {node.value + 1}"
            elif isinstance(node.value, bytes):
                yield node, f"{node.value[:20]!r} -> changed"
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            yield node, f"drop call {ast.unparse(node.value)[:60]}"
        elif isinstance(node, ast.Raise):
            yield node, f"drop {ast.unparse(node)[:60]}"


def _apply(node: ast.AST, description: str) -> ast.AST | None:
    """Mutate ``node`` in place, or return the statement that replaces it."""
    if isinstance(node, ast.Compare):
        position = int(description.split("#")[1].split(":")[0])
        node.ops[position] = SWAPS[type(node.ops[position])]()
    elif isinstance(node, ast.BoolOp | ast.BinOp):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.UnaryOp):
        return node.operand
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            node.value = not node.value
        elif isinstance(node.value, int):
            node.value = node.value + 1
        else:
            node.value = node.value + b"x" if node.value else b"x"
    elif isinstance(node, ast.Expr | ast.Raise):
        return ast.copy_location(ast.Pass(), node)
    return None


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, replacement: ast.AST) -> None:
        self.target, self.replacement = target, replacement

    def visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return self.replacement
        return super().visit(node)


_SOURCES: dict[str, str] = {}


def source(path: str) -> str:
    """The module as it was when the run started: editing the worktree meanwhile changes nothing."""
    if path not in _SOURCES:
        _SOURCES[path] = (ROOT / path).read_text(encoding="utf-8")
    return _SOURCES[path]


def mutants_of(path: str) -> list[Mutant]:
    """The module's mutants, with the lines of each in the re-printed module the tests run.

    Re-printing (``ast.unparse``) keeps the tree, so the n-th candidate of both is the same node.
    """
    written, reprinted = ast.parse(source(path)), ast.parse(unparsed(path))
    ranges = _statement_lines(reprinted)
    defines = _defined_names(reprinted)
    at_import = _import_time_nodes(reprinted)
    mutants = []
    pairs = zip(_candidates(written), _candidates(reprinted), strict=True)
    for index, ((node, description), (twin, twin_description)) in enumerate(pairs):
        if description != twin_description:
            raise RuntimeError(f"{path}: re-printing changed mutant {index}: {description}")
        first, last = ranges.get(id(twin), (0, 0))
        line = getattr(node, "lineno", 0)
        skip = _skip_reason(node)
        names = defines.get(id(twin), ())
        mutants.append(
            Mutant(path, index, line, description, first, last, skip, names, id(twin) in at_import)
        )
    return mutants


def _import_time_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes that run when the module is imported: everything but function bodies
    (a function's decorators and defaults do run then)."""
    found: set[int] = set()

    def visit(node: ast.AST) -> None:
        found.add(id(node))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            for inner in [*arguments.defaults, *[d for d in arguments.kw_defaults if d]]:
                visit(inner)
            if not isinstance(node, ast.Lambda):
                for decorator in node.decorator_list:
                    visit(decorator)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _defined_names(tree: ast.Module) -> dict[int, tuple[str, ...]]:
    """For each node (by id) of a module-level statement: the names that statement defines."""
    defined: dict[int, tuple[str, ...]] = {}
    for statement in tree.body:
        if isinstance(statement, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names: tuple[str, ...] = (statement.name,)
        elif isinstance(statement, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names = tuple(
                node.id
                for target in targets
                for node in ast.walk(target)
                if isinstance(node, ast.Name)
            )
        else:
            continue
        for node in ast.walk(statement):
            defined[id(node)] = names
    return defined


@functools.cache
def _references(module: str) -> dict[str, set[tuple[str, int]]]:
    """name -> the (module, line) of the target modules' code that reads it inside a function:
    ``module`` itself and the target modules that import from it.

    Lines of the re-printed modules (coverage's); a name is matched by its last part, so
    ``models.keys`` and ``keys`` are both a use of ``keys``.
    """
    found: dict[str, set[tuple[str, int]]] = {}
    dotted = module.removesuffix(".py").replace("/", ".")
    for path in [module, *(path for path in TARGETS if dotted in source(path))]:
        for function in ast.walk(ast.parse(unparsed(path))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for statement in function.body:
                for node in ast.walk(statement):
                    name = node.id if isinstance(node, ast.Name) else None
                    name = node.attr if isinstance(node, ast.Attribute) else name
                    if name is not None:
                        found.setdefault(name, set()).add((path, node.lineno))
    return found


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse(source(mutant.path))
    node, description = list(_candidates(tree))[mutant.index]
    if description != mutant.description:  # the module changed since the list was made
        raise RuntimeError(f"{mutant.path}: mutant {mutant.index} is now {description}")
    replacement = _apply(node, description)
    if replacement is not None:
        tree = _Replace(node, replacement).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def make_copy(parent: Path, number: int) -> Path:
    target = parent / f"copy{number}"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache")
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


#: Set from --postgres-dsn: the PostgreSQL tests then run against each mutant too.
PYTEST_OPTIONS: list[str] = []


@functools.cache
def _git_dir() -> str | None:
    """The repository's git directory (a worktree's common one), or None outside git."""
    command = ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"]
    found = subprocess.run(  # noqa: S603 - git on our own repository
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def _environ(copy_root: Path, **extra: str) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    # The copies hold no .git: tests/helpers/old_release.py extracts the previous release
    # with `git rev-parse` and `git archive` (read only), so they read the repository's history.
    # The copy is the work tree (nothing there runs a command that reads or writes it).
    git_dir = _git_dir()
    if git_dir is not None:
        environ["GIT_DIR"] = git_dir
        environ["GIT_WORK_TREE"] = str(copy_root)
    environ["PYTHONPATH"] = str(copy_root)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    environ.update(extra)
    return environ


class ForkServer:
    """scripts/mutants_server.py started in one copy: runs pytest there in a fork per request."""

    def __init__(self, copy_root: Path, modules_file: Path) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, str(copy_root / "scripts" / "mutants_server.py"), str(modules_file)],
            cwd=copy_root,
            env=_environ(copy_root),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._answer()
        self.preloaded = int(ready["preloaded"])

    def _answer(self) -> dict:
        assert self.process.stdout is not None  # noqa: S101 - set by Popen above
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped (status {self.process.wait()})")
        return json.loads(line)

    def run(self, args: list[str], timeout: float) -> tuple[int | None, float]:
        """pytest's exit status (None after a timeout) and the wall time of the run."""
        assert self.process.stdin is not None  # noqa: S101 - set by Popen above
        self.process.stdin.write(json.dumps({"args": args, "timeout": timeout}) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        return answer["status"], float(answer["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


#: copy -> its fork server (none with --no-fork: each run is then a new pytest process).
SERVERS: dict[Path, ForkServer] = {}


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """Run ``tests`` (files or node ids, in this order) in ``copy_root``; True when all pass."""
    args = ["-x", "-q", "-p", "no:cacheprovider", *PYTEST_OPTIONS, *tests]
    server = SERVERS.get(copy_root)
    if server is not None:
        status, seconds = server.run(args, timeout)
        return status == 0, seconds
    command = [sys.executable, "-m", "pytest", *args]
    started = time.monotonic()
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
            command,
            cwd=copy_root,
            env=_environ(copy_root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started
    return result.returncode == 0, time.monotonic() - started


MODULES_FILE = ".mutants-modules"


def warm(copy_root: Path, tests: list[str]) -> None:
    """Compile the copy once, so each mutant's run compiles only the module it changes.

    pytest's rewritten test modules are cached by a collection without PYTHONDONTWRITEBYTECODE;
    kms's modules then get *checked-hash* pycs: the interpreter compares each source with the hash
    in its pyc, so a mutant written in the same second as the original (same size, same mtime)
    still runs as the mutant (a timestamp pyc could hide it). The runs write no pycs.

    The collection also lists, in ``MODULES_FILE``, the modules from outside the copy that it
    imported: the fork server imports them before its first fork.
    """
    environ = _environ(
        copy_root,
        PYTHONPATH=f"{copy_root}{os.pathsep}{copy_root / 'scripts'}",
        MUTANTS_MODULES=str(copy_root / MODULES_FILE),
    )
    del environ["PYTHONDONTWRITEBYTECODE"]
    command = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"]
    subprocess.run(  # noqa: S603 - our own interpreter and test paths
        [*command, "-p", "mutants_plugin", *tests],
        cwd=copy_root,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "compileall", "-q", "-f", "--invalidation-mode", "checked-hash"]
        + [str(copy_root / "kms"), str(copy_root / "migrations")],
        cwd=copy_root,
        stdout=subprocess.DEVNULL,
        check=True,
    )


@dataclass(eq=False)
class CoverageMap:
    """Which tests execute which line of each unparsed module, and how long each test takes."""

    lines: dict[str, dict[int, set[str]]]  # path -> line -> node ids ("" = no test: see below)
    durations: dict[str, float]  # node id -> seconds (setup + call + teardown, under coverage)

    def tests_for(self, mutant: Mutant, budget: float) -> tuple[list[str], int] | None:
        """The tests to run for ``mutant`` and how many execute it; None when no test does.

        The tests that execute the mutated statement, most specific first, up to ``budget``
        seconds of their measured time (at least one). Most specific: the fewest lines of the
        target modules executed in all, times the test's duration (a unit test of the function
        before a server test that runs half of kms): the likeliest to notice the change for the
        time it costs; within that order, one test of each file before a second of any
        (``_across_files``). A survivor reports how many of the executing tests it met, so one
        that met only some can be rerun with a larger budget.

        Lines run in a child process (``kms serve``, gunicorn's workers, the ``kms`` commands)
        carry the test that was running then (scripts/mutants_site.py). A line executed outside
        any test (at import: a constant, a default, a decorator, a class body) gets every test
        that executes any line of the module, every test of a file that imports the module, and
        every test of the module's list in TARGETS (the tests that ran it in a child process,
        at import there, are no more specific than the rest). The tests that use a name the
        statement defines come first
        (``users``: a limit's constant, a dataclass, a table; test files that name it before
        tests that run code reading it); then the others, those that run the most lines
        of the module per second of their time first.
        """
        executed = self.lines.get(mutant.path, {})
        contexts: set[str] = set()
        for line in range(mutant.first_line, mutant.last_line + 1):
            contexts |= executed.get(line, set())
        if not contexts:
            return None
        tests = direct = {context for context in contexts if context}
        if "" in contexts and mutant.at_import:
            # Run at import: the tests that ran it in a child process (every server start
            # imports the module) are no more specific than any other user of the module.
            direct = set()
            # Tests that only import a constant execute no line of the module: name them too.
            dotted = mutant.path.removesuffix(".py").replace("/", ".")
            files = set(TARGETS[mutant.path]) | {
                file
                for file in {node.split("::")[0] for node in self.durations}
                if dotted in _text(file)
            }
            tests = tests | {node for node in self.durations if node.split("::")[0] in files}
            tests |= {context for line in executed.values() for context in line if context}
        naming, reading = self.users(mutant) if "" in contexts else (set(), set())
        in_module = self.lines_in_module(mutant.path)
        breadth = self.breadth

        def order(node: str) -> tuple[int, float, float, str]:
            # Specific and cheap first: lines executed times seconds (a 20 s server test that
            # runs the line among thousands comes after a 0.1 s unit test of the function).
            seconds = self.durations.get(node, 1.0)
            cost = _cost(node, seconds)
            if node in direct:
                return (0, breadth.get(node, 0) * cost, seconds, node)
            if node in naming:
                return (1, breadth.get(node, 0) * cost, seconds, node)
            if node in reading:
                return (2, breadth.get(node, 0) * cost, seconds, node)
            return (3, -in_module.get(node, 0) / cost, seconds, node)

        ordered = _across_files(sorted(tests, key=order), key=lambda node: order(node)[0])
        chosen: list[str] = []
        spent = 0.0
        files: set[str] = set()
        for node in ordered:
            file = node.split("::")[0]
            spent += _cost(node, self.durations.get(node, 1.0)) if file not in files else 0.0
            spent += self.durations.get(node, 1.0) if file in files else 0.0
            files.add(file)
            if chosen and spent > budget:
                break
            chosen.append(node)
        return self.grouped(chosen), len(ordered)

    def users(self, mutant: Mutant) -> tuple[set[str], set[str]]:
        """The tests that use a name the mutated module-level statement defines: those whose
        file names it and the module (a test written about that constant or class), and those
        that execute a line reading it in the module or in a target module importing from it."""
        naming: set[str] = set()
        reading: set[str] = set()
        files = {node.split("::")[0] for node in self.durations}
        dotted = mutant.path.removesuffix(".py").replace("/", ".")
        for name in mutant.defines:
            for path, line in _references(mutant.path).get(name, ()):
                reading |= self.lines.get(path, {}).get(line, set())
            mentioning = {file for file in files if name in _text(file) and dotted in _text(file)}
            naming |= {node for node in self.durations if node.split("::")[0] in mentioning}
        reading.discard("")
        return naming, reading

    @functools.cached_property
    def breadth(self) -> dict[str, int]:
        """node id -> how many lines of the target modules the test executes."""
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

    def grouped(self, tests: list[str]) -> list[str]:
        """``tests`` (in the order chosen) regrouped by file, the file of the first test first.

        Tests of one file stay together so that a module-scoped fixture (a server, a keystore
        with one key of each type) is set up once per run.
        """
        by_file: dict[str, list[str]] = {}
        for node in tests:
            by_file.setdefault(node.split("::")[0], []).append(node)
        return [node for nodes in by_file.values() for node in nodes]

    def seconds(self, tests: list[str]) -> float:
        return sum(self.durations.get(node, 1.0) for node in tests)


def measure_coverage(copy_root: Path, paths: list[str], files: list[str]) -> CoverageMap:
    """Run the test ``files`` once under coverage.py, one context per test, in ``copy_root``.

    This is also the baseline: the unmutated (re-printed) code must pass it. Child processes are
    measured too (``patch = subprocess, fork``), so code that only ``kms serve`` runs counts as
    executed.
    """
    data_file = copy_root / ".mutants-coverage"
    durations_file = copy_root / ".mutants-durations.json"
    rcfile = copy_root / ".mutants-coveragerc"
    rcfile.write_text(
        "[run]\n"
        f"data_file = {data_file}\n"
        "parallel = true\n"
        f"include = {copy_root}/kms/*\n"
        "patch = subprocess\n    fork\n    _exit\n",
        encoding="utf-8",
    )
    context_file = copy_root / ".mutants-context"
    site = copy_root / ".mutants-site"
    site.mkdir(exist_ok=True)
    shutil.copy(copy_root / "scripts" / "mutants_site.py", site / "sitecustomize.py")
    environ = _environ(
        copy_root,
        PYTHONPATH=os.pathsep.join(map(str, [copy_root, copy_root / "scripts", site])),
        MUTANTS_DURATIONS=str(durations_file),
        MUTANTS_CONTEXT_FILE=str(context_file),
    )
    command = [sys.executable, "-m", "coverage", "run", f"--rcfile={rcfile}", "-m", "pytest"]
    command += ["-q", "-p", "no:cacheprovider", "-p", "mutants_plugin", *PYTEST_OPTIONS, *files]
    result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
        command, cwd=copy_root, env=environ, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
        raise SystemExit("the unmutated code fails its tests under coverage: fix that first")
    subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "coverage", "combine", "-q", f"--rcfile={rcfile}"],
        cwd=copy_root,
        env=environ,
        check=True,
    )
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    lines: dict[str, dict[int, set[str]]] = {}
    for measured in data.measured_files():
        path = os.path.relpath(measured, copy_root)
        if path not in paths:
            continue
        per_line = lines.setdefault(path, {})
        for line, contexts in data.contexts_by_lineno(measured).items():
            per_line.setdefault(line, set()).update(contexts)
    durations = json.loads(durations_file.read_text(encoding="utf-8"))
    for path in list(lines):  # the static context of the run ("" before the first test)
        for contexts in lines[path].values():
            if any(not context for context in contexts):
                contexts.discard("")
                contexts.add("")
    for name in (data_file, durations_file, rcfile, context_file):
        name.unlink(missing_ok=True)
    shutil.rmtree(site)
    return CoverageMap(lines, durations)


CACHE = ROOT / ".mutants-cache"


def _cache_file(paths: list[str]) -> Path:
    """Where the coverage map of this code, these tests and these options is kept.

    The name hashes every source and test file, the module list, the test files of their lists
    and the pytest options: any change to the code, the tests or the lists means a new coverage
    run (which is also the baseline).
    """
    files = sorted({test for path in paths for test in TARGETS[path]})
    digest = hashlib.sha256(json.dumps([sorted(paths), files, PYTEST_OPTIONS]).encode())
    for name in sorted([*ROOT.glob("kms/**/*.py"), *ROOT.glob("tests/**/*.py")]):
        digest.update(name.relative_to(ROOT).as_posix().encode() + b"\0" + name.read_bytes())
    return CACHE / f"coverage-{digest.hexdigest()[:16]}.json"


def cached_coverage(roots: list[Path], paths: list[str]) -> CoverageMap:
    """The coverage map from an earlier run on the same code, or a new coverage run.

    A new run shares the test files of ``paths``' lists out among the copies, one coverage
    process each (the longest files first, each to the copy with the least so far, by the
    durations of the latest cached map), and merges what they measured.
    """
    cache_file = _cache_file(paths)
    if cache_file.exists():
        saved = json.loads(cache_file.read_text(encoding="utf-8"))
        lines = {
            path: {int(line): set(contexts) for line, contexts in per_line.items()}
            for path, per_line in saved["lines"].items()
        }
        return CoverageMap(lines, saved["durations"])
    files = sorted({test for path in paths for test in TARGETS[path]})
    earlier: dict[str, float] = {}
    for older in sorted(CACHE.glob("coverage-*.json"), key=lambda name: name.stat().st_mtime):
        durations = json.loads(older.read_text(encoding="utf-8"))["durations"]
        earlier = {}
        for node, seconds in durations.items():
            earlier[node.split("::")[0]] = earlier.get(node.split("::")[0], 0.0) + seconds
    shares: list[list[str]] = [[] for _ in roots]
    loads = [0.0] * len(roots)
    for file in sorted(files, key=lambda file: -earlier.get(file, 1.0)):
        least = loads.index(min(loads))
        shares[least].append(file)
        loads[least] += earlier.get(file, 1.0)
    with ThreadPoolExecutor(max_workers=len(roots)) as pool:
        running = [
            pool.submit(measure_coverage, root, paths, sorted(share))
            for root, share in zip(roots, shares, strict=True)
            if share
        ]
        parts = [part.result() for part in running]
    coverage_map = CoverageMap({}, {})
    for part in parts:
        for path, per_line in part.lines.items():
            for line, contexts in per_line.items():
                coverage_map.lines.setdefault(path, {}).setdefault(line, set()).update(contexts)
        coverage_map.durations.update(part.durations)
    CACHE.mkdir(exist_ok=True)
    lines_json = {
        path: {line: sorted(contexts) for line, contexts in per_line.items()}
        for path, per_line in coverage_map.lines.items()
    }
    saved_json = {"lines": lines_json, "durations": coverage_map.durations}
    cache_file.write_text(json.dumps(saved_json), encoding="utf-8")
    return coverage_map


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="module paths (default: all targets)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--postgres-dsn", help="also run the PostgreSQL tests (as make test)")
    parser.add_argument("--json", type=Path, help="also write every mutant's outcome here")
    parser.add_argument(
        "--no-confirm",
        dest="confirm",
        action="store_false",
        help="skip the second pass that reruns a survivor with every test executing its line",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=2.0,
        help="seconds of (measured) test time per mutant, most specific tests first (default 2)",
    )
    parser.add_argument(
        "--confirm-budget",
        type=float,
        default=30.0,
        help="the same for the second pass over survivors cut short by --budget (default 30): "
        "the cap on a mutant's tests; one whose tests take longer stays 'cut short'",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=27.0,
        help="start no mutant run after this many minutes of the whole run (default 27, so that "
        "the runs under way and the report end within 30)",
    )
    parser.add_argument(
        "--no-fork",
        dest="fork",
        action="store_false",
        help="start a new pytest process per mutant instead of forking a preloaded one (slower)",
    )
    options = parser.parse_args()
    if options.postgres_dsn:
        PYTEST_OPTIONS.append(f"--postgres-dsn={options.postgres_dsn}")
    # Smallest modules first: a run stopped early (Ctrl-C, SIGTERM) has finished whole modules.
    paths = options.only or sorted(TARGETS, key=lambda path: len(mutants_of(path)))
    mutants = [mutant for path in paths for mutant in mutants_of(path)]
    skipped = [mutant for mutant in mutants if mutant.skip_reason]
    mutants = [mutant for mutant in mutants if not mutant.skip_reason]
    if options.list:
        for mutant in [*mutants, *skipped]:
            note = f"  (skipped: {mutant.skip_reason})" if mutant.skip_reason else ""
            print(f"{mutant.path}:{mutant.line}: {mutant.description}{note}")
        print(f"{len(mutants)} mutants, {len(skipped)} skipped")
        return 0

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kms-mutants-") as parent:
        copies: Queue[Path] = Queue()
        roots = [make_copy(Path(parent), number) for number in range(options.jobs)]
        # Every copy holds the modules re-printed from their AST but unmutated: the form each
        # mutant is written in, so the baseline and the line numbers are those of that form.
        every_file = sorted({test for path in paths for test in TARGETS[path]})
        for copy_root in roots:
            for path in paths:
                (copy_root / path).write_text(unparsed(path), encoding="utf-8")
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            list(pool.map(warm, roots, [every_file] * len(roots)))
        coverage_map = cached_coverage(roots, paths)
        for copy_root in roots:
            copies.put(copy_root)
        # pytest's own start (imports, collection) on this machine now: part of every timeout.
        fastest = min(coverage_map.durations, key=coverage_map.durations.__getitem__)
        passed, process_start = run_tests(roots[0], [fastest], timeout=600)
        if not passed:
            raise SystemExit(f"the unmutated code fails {fastest}: fix that first")
        overhead, preloaded = process_start, ""
        if options.fork:
            for copy_root in roots:
                SERVERS[copy_root] = ForkServer(copy_root, copy_root / MODULES_FILE)
            passed, overhead = run_tests(roots[0], [fastest], timeout=600)
            if not passed:
                raise SystemExit(f"the unmutated code fails {fastest} in a fork: fix that first")
            preloaded = (
                f" ({process_start:.1f}s as a new process; forked from a server that preloaded "
                f"{SERVERS[roots[0]].preloaded} modules)"
            )
        covered = sum(len(lines) for lines in coverage_map.lines.values())
        print(
            f"{len(mutants)} mutants ({len(skipped)} more skipped by design); coverage run and "
            f"baseline {(time.monotonic() - started) / 60:.1f} min, {covered} lines executed; "
            f"pytest starts in {overhead:.1f}s{preloaded}",
            flush=True,
        )

        mutants_started = time.monotonic()
        deadline = started + 60 * options.minutes
        outcomes: dict[Mutant, str] = {}

        def check(mutant: Mutant, budget: float = options.budget) -> str:
            if time.monotonic() > deadline:
                # Out of time (--minutes): a second-pass rerun is left as it was; a first-pass
                # mutant is reported as not run (never counted as killed or as survived).
                return outcomes.get(mutant, "not run: out of time")
            selected = coverage_map.tests_for(mutant, budget)
            if selected is None:
                return "not covered"
            tests, executing = selected
            # A timeout counts as killed: 3 times what the selected tests took under coverage.
            timeout = 3 * (overhead + coverage_map.seconds(tests)) + 30
            copy_root = copies.get()
            try:
                (copy_root / mutant.path).write_text(mutated_source(mutant), encoding="utf-8")
                passed, seconds = run_tests(copy_root, tests, timeout=timeout)
            finally:
                (copy_root / mutant.path).write_text(unparsed(mutant.path), encoding="utf-8")
                copies.put(copy_root)
            if not passed and seconds >= timeout:
                return "timeout"
            return f"survived {len(tests)}/{executing}" if passed else "killed"

        # Ctrl-C or SIGTERM stops early and still prints (and saves) what was found.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=options.jobs)
        try:
            results = zip(mutants, pool.map(check, mutants), strict=False)
            for done, (mutant, outcome) in enumerate(results, start=1):
                outcomes[mutant] = outcome
                if done % 50 == 0:
                    minutes = (time.monotonic() - mutants_started) / 60
                    print(f"... {done}/{len(mutants)} after {minutes:.1f} min", flush=True)
                if outcome not in ("killed", "timeout"):
                    line = f"{outcome} {mutant.path}:{mutant.line}: {mutant.description}"
                    print(line, flush=True)
            # Second pass: a survivor that met only the fastest of the tests executing its line
            # meets them all (--confirm); most mutants never need the slow ones.
            unconfirmed = [mutant for mutant, outcome in outcomes.items() if _partial(outcome)]
            # Cheapest to decide first: within the time left, the most survivors get decided.
            unconfirmed.sort(key=lambda mutant: _confirm_cost(coverage_map, mutant, options))
            if options.confirm and unconfirmed:
                print(
                    f"confirming {len(unconfirmed)} survivors with all their tests (up to "
                    f"{options.confirm_budget:.0f}s of them each)",
                    flush=True,
                )
                every = [options.confirm_budget] * len(unconfirmed)
                for mutant, outcome in zip(
                    unconfirmed, pool.map(check, unconfirmed, every), strict=False
                ):
                    outcomes[mutant] = outcome
                    print(f"  {outcome} {mutant.path}:{mutant.line}: {mutant.description}")
                left = sum(_partial(outcome) for outcome in outcomes.values())
                if time.monotonic() > deadline and left:
                    print(f"  out of time (--minutes): {left} survivors left cut short")
        except KeyboardInterrupt:
            interrupted = True
            for server in SERVERS.values():  # stop the runs under way: their outcome is dropped
                server.process.send_signal(signal.SIGUSR1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for server in SERVERS.values():
                server.close()
    elapsed = time.monotonic() - started

    survivors = [m for m, outcome in outcomes.items() if outcome not in ("killed", "timeout")]
    killed = len(outcomes) - len(survivors)
    timeouts = sum(outcome == "timeout" for outcome in outcomes.values())
    reached = len(outcomes) - sum(outcome.startswith("not run") for outcome in outcomes.values())
    print()
    if interrupted:
        print(f"INTERRUPTED: {len(outcomes)} of {len(mutants)} mutants run")
    print(
        f"{len(outcomes)} mutants, {killed} killed ({timeouts} by timeout), "
        f"{len(survivors)} not killed (score {100 * killed / max(reached, 1):.1f}% of the "
        f"{reached} reached), {len(skipped)} skipped by design; {elapsed / 60:.1f} min in all"
    )
    kinds = {"true survivors (met every test executing the line)": 0, "cut short": 0}
    for outcome in (outcomes[mutant] for mutant in survivors):
        if _partial(outcome):
            kinds["cut short"] += 1
        elif outcome.startswith("survived "):
            kinds["true survivors (met every test executing the line)"] += 1
        else:
            kinds[outcome] = kinds.get(outcome, 0) + 1
    print("of the survivors: " + ", ".join(f"{count} {kind}" for kind, count in kinds.items()))
    for mutant in survivors:
        print(f"  {mutant.path}:{mutant.line}: {mutant.description} [{outcomes[mutant]}]")
    if options.json:
        options.json.write_text(
            json.dumps(
                [
                    {
                        "path": m.path,
                        "line": m.line,
                        "mutation": m.description,
                        "outcome": outcomes.get(m, "skipped: " + (m.skip_reason or "not run")),
                    }
                    for m in [*mutants, *skipped]
                ],
                indent=1,
            ),
            encoding="utf-8",
        )
    return 130 if interrupted else 0


#: What a run of the HTTP tests costs before its first test: the shared server's start, which
#: the coverage run counted in the first test of the session only.
HTTP_SERVER_START = 1.5


def _cost(node: str, seconds: float) -> float:
    """A test's cost as the first of its file in a run: an HTTP test starts the shared server."""
    return max(seconds, HTTP_SERVER_START if "/http/" in node else 0.05)


def _across_files(nodes: list[str], key: Callable[[str], int]) -> list[str]:
    """``nodes`` (in order) taken one file at a time within each tier of ``key``: the first of
    every file, then the second of every file... Each test file checks a promise of its own, so a
    budget that meets a few tests is better spent on the best of several files than on the ten
    variants of one parametrized test."""
    tiers: dict[int, dict[str, list[str]]] = {}
    for node in nodes:
        tiers.setdefault(key(node), {}).setdefault(node.split("::")[0], []).append(node)
    result: list[str] = []
    for tier in sorted(tiers):
        files = list(tiers[tier].values())
        for rank in range(max(len(nodes_of_file) for nodes_of_file in files)):
            result += [nodes_of_file[rank] for nodes_of_file in files if rank < len(nodes_of_file)]
    return result


@functools.cache
def _text(test_file: str) -> str:
    return (ROOT / test_file).read_text(encoding="utf-8")


def _confirm_cost(coverage_map: CoverageMap, mutant: Mutant, options: argparse.Namespace) -> float:
    selected = coverage_map.tests_for(mutant, options.confirm_budget)
    return coverage_map.seconds(selected[0]) if selected else 0.0


def _partial(outcome: str) -> bool:
    """True for "survived k/n" with k < n: the budget left some executing tests out."""
    if not outcome.startswith("survived "):
        return False
    ran, executing = outcome.removeprefix("survived ").split("/")
    return int(ran) < int(executing)


def unparsed(path: str) -> str:
    return ast.unparse(ast.parse(source(path))) + "\n"


if __name__ == "__main__":
    sys.exit(main())
