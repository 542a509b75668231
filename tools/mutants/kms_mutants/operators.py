"""The mutations: which AST nodes of a module change, how, and which are skipped by design.

Operators (each applied to one AST node at a time): comparison flipped (== !=, < >=, <= >,
in / not in, is / is not), ``and``/``or`` swapped, ``not`` dropped, ``+``/``-`` swapped, an integer
constant changed by one, True/False swapped, a bytes constant changed, a call statement or a
``raise`` replaced by ``pass``. Docstrings, type annotations and string constants (messages) are
left alone.

Skipped by design (listed, never run, not in the score): dropping ``os.fsync`` (durability across
a power cut: no test short of pulling the plug can tell), dropping a ``.debug(...)`` log call (not
emitted at the level kms runs at), and the options of ``@dataclass(...)`` (``frozen=True`` ->
``False``: what changes is Python's, and every such verdict so far said so).

Everything here is a pure function of a module's text: the runner, the report and the verdicts
all call :func:`mutants_of` and get the same list.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

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
    path: str  # the module, relative to the project root ("kms/audit.py")
    index: int  # the n-th candidate of the module (what the runner re-applies)
    line: int  # in the module as written (what the report shows)
    text: str  # that line, stripped: with ``path`` and ``description``, a verdict's anchor
    description: str
    first_line: int = 0  # the mutated statement's lines in the re-printed module (coverage's)
    last_line: int = 0
    skip_reason: str | None = None
    #: Names the mutated module-level statement defines (a constant, a class, a function whose
    #: default or decorator is mutated): the tests that use them come first (selection).
    defines: tuple[str, ...] = ()
    at_import: bool = False  # module or class level, a decorator or a default: runs at import
    function: str = "(module)"  # the innermost function holding the line (class bodies count)

    @property
    def anchor(self) -> tuple[str, str, str]:
        """What a verdict is kept by: not the line number, which moves with every edit above."""
        return (self.path, self.text, self.description)


def _dataclass_options(tree: ast.AST) -> set[int]:
    """ids of the constants given as options to ``@dataclass(...)`` (``frozen=True``...)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) in (
                    "dataclass",
                    "dataclasses.dataclass",
                ):
                    found.update(id(keyword.value) for keyword in decorator.keywords)
    return found


def _skip_reason(node: ast.AST, dataclass_options: set[int]) -> str | None:
    """Why a mutant is equivalent by design (never run, reported apart), or None."""
    if id(node) in dataclass_options:
        # frozen, slots, eq...: what they change is Python's dataclasses (an assignment that
        # raises, a __dict__), which no kms code relies on but by not doing it.
        return "a dataclass option: Python's dataclasses, not kms"
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        called = ast.unparse(node.value.func)
        if called == "os.fsync":
            # Durability across a power cut: the data is in the page cache either way, so no
            # test short of pulling the plug can tell; the README's crash-safety rests on review.
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


def candidates(tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
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


def unparsed(source: str) -> str:
    """The module re-printed from its AST: the form every mutant (and the baseline) is run in."""
    return ast.unparse(ast.parse(source)) + "\n"


def mutants_of(path: str, source: str) -> list[Mutant]:
    """The module's mutants, with the lines of each in the re-printed module the tests run.

    Re-printing (``ast.unparse``) keeps the tree, so the n-th candidate of both is the same node.
    """
    written, reprinted = ast.parse(source), ast.parse(unparsed(source))
    lines = source.splitlines()
    functions = _functions(written)
    options = _dataclass_options(written)
    ranges = _statement_lines(reprinted)
    defines = _defined_names(reprinted)
    at_import = _import_time_nodes(reprinted)
    mutants = []
    pairs = zip(candidates(written), candidates(reprinted), strict=True)
    for index, ((node, description), (twin, twin_description)) in enumerate(pairs):
        if description != twin_description:
            raise RuntimeError(f"{path}: re-printing changed mutant {index}: {description}")
        first, last = ranges.get(id(twin), (0, 0))
        line = getattr(node, "lineno", 0)
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        mutants.append(
            Mutant(
                path,
                index,
                line,
                text,
                description,
                first,
                last,
                _skip_reason(node, options),
                defines.get(id(twin), ()),
                id(twin) in at_import,
                _innermost(functions, line),
            )
        )
    return mutants


def mutated_source(mutant: Mutant, source: str) -> str:
    """``source`` (the module as written) with ``mutant`` applied, re-printed."""
    tree = ast.parse(source)
    node, description = list(candidates(tree))[mutant.index]
    if description != mutant.description:  # the module changed since the list was made
        raise RuntimeError(f"{mutant.path}: mutant {mutant.index} is now {description}")
    replacement = _apply(node, description)
    if replacement is not None:
        tree = _Replace(node, replacement).visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


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


def names_read_in_functions(source: str) -> dict[str, set[int]]:
    """name -> the lines (of the re-printed module) of code inside a function that read it.

    A name is matched by its last part, so ``models.keys`` and ``keys`` are both a use of
    ``keys``.
    """
    found: dict[str, set[int]] = {}
    for function in ast.walk(ast.parse(unparsed(source))):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for statement in function.body:
            for node in ast.walk(statement):
                name = node.id if isinstance(node, ast.Name) else None
                name = node.attr if isinstance(node, ast.Attribute) else name
                if name is not None:
                    found.setdefault(name, set()).add(node.lineno)
    return found


def _functions(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of every function of the module."""
    return [
        (node.lineno, node.end_lineno or node.lineno, node.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def _innermost(functions: list[tuple[int, int, str]], line: int) -> str:
    holding = [(first, name) for first, last, name in functions if first <= line <= last]
    return max(holding)[1] if holding else "(module)"


def function_of(source: str, line: int) -> str:
    """The innermost function holding ``line``, or ``(module)`` (class bodies included)."""
    return _innermost(_functions(ast.parse(source)), line)
