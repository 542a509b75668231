"""Mutation check for kms: ``make mutants`` (not part of ``make test``).

Makes one small change at a time to the modules that hold kms's promises (kms/crypto, kms/service,
kms/store and the startup path: kms/master.py, kms/gunicorn_conf.py), runs the tests that matter
for that module, and reports every change no test noticed (a "survivor").

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

Usage: python scripts/mutants.py [--jobs N] [--only PATH ...] [--list]
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parents[1]

UNIT_CRYPTO = [
    "tests/unit/test_kdf_known_answers.py",
    "tests/unit/test_ciphertext.py",
    "tests/unit/test_algorithms.py",
    "tests/unit/test_crypto_wycheproof.py",
]
SERVICE = [
    "tests/unit/test_secrets_in_memory.py",
    "tests/integration/test_secret_buffers.py",
    "tests/integration/test_service.py",
    "tests/integration/test_decrypt_tampering.py",
    "tests/integration/test_key_storage.py",
]
STORE = [
    "tests/integration/test_store_engine.py",
    "tests/integration/test_postgres.py",  # skipped unless --postgres-dsn is given
    "tests/integration/test_keystore.py",
    "tests/integration/test_service.py",
    "tests/integration/test_concurrent_rotation.py",
    "tests/integration/test_key_storage.py",
]
STARTUP = [
    "tests/integration/test_secret_buffers.py",
    "tests/integration/test_store_engine.py",
    "tests/integration/test_gunicorn_conf.py",
    "tests/integration/test_keystore.py",
    "tests/integration/test_postgres.py",  # skipped unless --postgres-dsn is given
    "tests/integration/http/test_startup.py",
]

#: Module -> the tests that matter for it, fastest first (pytest stops at the first failure).
TARGETS: dict[str, list[str]] = {
    "kms/crypto/kdf.py": [*UNIT_CRYPTO, "tests/integration/test_keystore.py"],
    "kms/crypto/ciphertext.py": [*UNIT_CRYPTO, "tests/integration/test_decrypt_tampering.py"],
    "kms/crypto/encoding.py": [*UNIT_CRYPTO, "tests/integration/test_decrypt_tampering.py"],
    "kms/crypto/wrapping.py": [*UNIT_CRYPTO, "tests/integration/test_key_storage.py"],
    "kms/crypto/algorithms.py": [*UNIT_CRYPTO, "tests/integration/test_service.py"],
    "kms/service/keyring.py": [*SERVICE, "tests/integration/test_gunicorn_conf.py"],
    "kms/service/keys.py": SERVICE,
    "kms/service/cache.py": SERVICE,
    "kms/service/keystore.py": [*SERVICE, "tests/integration/test_keystore.py"],
    "kms/service/passphrase.py": [
        "tests/integration/test_keystore.py",
        "tests/integration/test_passphrase_prompt.py",
        "tests/integration/http/test_startup.py",
    ],
    "kms/store/db.py": STORE,
    "kms/store/repository.py": STORE,
    # Column types and lengths: SQLite ignores most of them, so the PostgreSQL-free list is short.
    "kms/store/models.py": STORE[:3],
    "kms/store/schema.py": STORE[:3],
    "kms/master.py": STARTUP,
    "kms/gunicorn_conf.py": [*STARTUP, "tests/integration/http/test_tls.py"],
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
    line: int
    description: str


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
    tree = ast.parse(source(path))
    return [
        Mutant(path, index, getattr(node, "lineno", 0), description)
        for index, (node, description) in enumerate(_candidates(tree))
    ]


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


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """Run ``tests`` in ``copy_root``; True when they all pass."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("KMS_")}
    environ["PYTHONPATH"] = str(copy_root)
    environ["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += [*PYTEST_OPTIONS, *tests]
    started = time.monotonic()
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and test paths
            command,
            cwd=copy_root,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started
    return result.returncode == 0, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="module paths (default: all targets)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--postgres-dsn", help="also run the PostgreSQL tests (as make test)")
    options = parser.parse_args()
    if options.postgres_dsn:
        PYTEST_OPTIONS.append(f"--postgres-dsn={options.postgres_dsn}")
    paths = options.only or list(TARGETS)
    mutants = [mutant for path in paths for mutant in mutants_of(path)]
    if options.list:
        for mutant in mutants:
            print(f"{mutant.path}:{mutant.line}: {mutant.description}")
        print(f"{len(mutants)} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="kms-mutants-") as parent:
        copies: Queue[Path] = Queue()
        for number in range(options.jobs):
            copies.put(make_copy(Path(parent), number))
        # Baselines: with every module re-printed from its AST but unmutated, each distinct test
        # list must pass; its time bounds each mutant's run (a mutant that hangs is killed).
        for _ in range(options.jobs):
            copy_root = copies.get()
            for path in paths:
                (copy_root / path).write_text(unparsed(path), encoding="utf-8")
            copies.put(copy_root)
        test_lists = sorted({tuple(TARGETS[path]) for path in paths})

        def measure(tests: tuple[str, ...]) -> float:
            copy_root = copies.get()
            try:
                passed, seconds = run_tests(copy_root, list(tests), timeout=1800)
            finally:
                copies.put(copy_root)
            if not passed:
                raise SystemExit(f"the unmutated code fails {' '.join(tests)}: fix that first")
            return seconds

        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            baseline = dict(zip(test_lists, pool.map(measure, test_lists), strict=True))
        print(f"{len(mutants)} mutants; baselines {sum(baseline.values()):.0f}s", flush=True)

        started = time.monotonic()
        survivors: list[Mutant] = []
        killed = 0

        def check(mutant: Mutant) -> bool:
            copy_root = copies.get()
            try:
                (copy_root / mutant.path).write_text(mutated_source(mutant), encoding="utf-8")
                tests = TARGETS[mutant.path]
                passed, _ = run_tests(copy_root, tests, timeout=3 * baseline[tuple(tests)] + 30)
            finally:
                (copy_root / mutant.path).write_text(unparsed(mutant.path), encoding="utf-8")
                copies.put(copy_root)
            return passed

        # Ctrl-C stops early and still prints what was found (the tests get the SIGINT too).
        interrupted = False
        pool = ThreadPoolExecutor(max_workers=options.jobs)
        try:
            results = zip(mutants, pool.map(check, mutants), strict=False)
            for done, (mutant, survived) in enumerate(results, start=1):
                if done % 25 == 0:
                    minutes = (time.monotonic() - started) / 60
                    print(f"... {done}/{len(mutants)} after {minutes:.1f} min", flush=True)
                if survived:
                    survivors.append(mutant)
                    print(f"SURVIVED {mutant.path}:{mutant.line}: {mutant.description}", flush=True)
                else:
                    killed += 1
        except KeyboardInterrupt:
            interrupted = True
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        elapsed = time.monotonic() - started

    run = killed + len(survivors)
    print()
    if interrupted:
        print(f"INTERRUPTED: {run} of {len(mutants)} mutants run")
    print(f"{run} mutants, {killed} killed, {len(survivors)} survived", end="")
    print(f" (score {100 * killed / max(run, 1):.1f}%) in {elapsed / 60:.1f} min")
    for mutant in survivors:
        print(f"  {mutant.path}:{mutant.line}: {mutant.description}")
    return 130 if interrupted else 0


def unparsed(path: str) -> str:
    return ast.unparse(ast.parse(source(path))) + "\n"


if __name__ == "__main__":
    sys.exit(main())
