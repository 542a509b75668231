"""Tags, MACs, digests, signatures and hashes are compared in constant time, never with ``==``.

``==`` on bytes stops at the first byte that differs, so the time a refusal takes tells a caller
how much of a forged tag was right. The check reads kms's source (``ast``) and fails on any ``==``
or ``!=`` with an operand whose name says it is one of those values:

- the name of the operand itself (a variable, an attribute, the function or method that made it,
  a string subscript such as ``trailer["tag"]``), judged by its last word: ``stored_tag``,
  ``key.mac``, ``self.tag(...)``, ``h.digest()`` and ``prev_hash`` are such values,
  ``digest_size`` and ``signature_scheme`` are not;
- through conversions that keep the value (``bytes(tag)``, ``tag.hex()``, ``b64decode(...)``,
  ``prefix + tag``);
- through local variables: ``expected = mac.tag(data)`` makes ``expected`` a tag too.

The few comparisons of such values that guard nothing secret are listed in ``NOT_SECRET`` with
the reason; each must still be found in the source, so the list cannot outlive its code. Then the
two checks that authenticate stored data must use ``hmac.compare_digest``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import kms

PACKAGE = Path(kms.__file__).resolve().parent

#: The last word of a name that holds one of these values.
SECRET_WORDS = frozenset(
    {
        "tag",
        "tags",
        "mac",
        "macs",
        "hmac",
        "digest",
        "digests",
        "hexdigest",
        "signature",
        "signatures",
        "sig",
        "hash",
        "hashes",
        "checksum",
    }
)
#: Calls whose result is their argument (or receiver) in another form.
CONVERSIONS = frozenset(
    {
        "bytes",
        "bytearray",
        "memoryview",
        "str",
        "hex",
        "fromhex",
        "encode",
        "decode",
        "lower",
        "upper",
        "strip",
        "rstrip",
        "lstrip",
        "b64decode",
        "b64encode",
        "urlsafe_b64decode",
        "urlsafe_b64encode",
        "hexlify",
        "unhexlify",
    }
)

AUDIT_LINK = (
    "the audit chain's link: SHA-256 of the previous line, computed from the file itself "
    "without any key; anyone may recompute it (the MACs are compared with compare_digest)"
)
TLS_FILES_CHANGED = "the TLS files' stat signature (size, mtime, inode): did the files change"
#: Comparisons of such values that guard no secret: the source text, and why.
NOT_SECRET: dict[str, str] = {
    "fresh.mac == key.mac": (
        "is a cached key row still the row in the database: both MACs are read from storage, "
        "neither is computed from a secret, and the answer only decides whether to read again"
    ),
    "current.mac != key.mac": (
        "did the key row change since it was read: two stored MACs, as above"
    ),
    "digest_algorithm != chosen.digest": (
        "the name of a digest algorithm a client asked for (SHA-256), not a digest value"
    ),
    "owner == digest": (
        "the rate limiter's hash table: a slot's owner against the hash of a caller's name, "
        "both known to whoever can read the table; no secret is involved"
    ),
    "_signature(self._paths) != seen": TLS_FILES_CHANGED,
    "seen == self._loaded": TLS_FILES_CHANGED,
    "seen != self._refused": TLS_FILES_CHANGED,
    "record.get('prev_hash') != expected": AUDIT_LINK,
    "record.get('prev_hash') != last_hash": AUDIT_LINK,
    "prev_hash != GENESIS_HASH": AUDIT_LINK,
    "prev_hash == last_hash": AUDIT_LINK,
}


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    source: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}: {self.source}"


def words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    return [word for word in re.split(r"[^a-z0-9]+", spaced) if word]


def names_a_secret_value(name: str) -> bool:
    split = words(name)
    return bool(split) and split[-1] in SECRET_WORDS


def call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def string_constant(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def value_names(node: ast.expr) -> set[str]:
    """The names that say what ``node``'s value is."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Subscript):  # record["tag"], tag[:16]
        key = string_constant(node.slice)
        return value_names(node.value) | ({key} if key else set())
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return value_names(node.left) | value_names(node.right)
    if isinstance(node, ast.Call):
        name = call_name(node)
        key = string_constant(node.args[0]) if name == "get" and node.args else None
        if key:  # record.get("tag")
            return {key}
        if name in CONVERSIONS:
            converted: set[str] = set()
            if isinstance(node.func, ast.Attribute):
                converted |= value_names(node.func.value)
            if node.args:
                converted |= value_names(node.args[0])
            return converted
        return set() if name is None else {name}
    return set()


def scopes(tree: ast.Module) -> Iterator[ast.AST]:
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield node


def tainted_names(scope: ast.AST) -> set[str]:
    """Local names assigned a value that names a secret, directly or through another such name."""
    assignments: list[tuple[str, ast.expr]] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            assignments += [(t.id, node.value) for t in targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.NamedExpr):
            assignments.append((node.target.id, node.value))
    tainted: set[str] = set()
    changed = True
    while changed:
        changed = False
        for target, value in assignments:
            if target in tainted:
                continue
            if any(names_a_secret_value(name) or name in tainted for name in value_names(value)):
                tainted.add(target)
                changed = True
    return tainted


def equality_on_secret_values(path: Path, text: str) -> list[Finding]:
    tree = ast.parse(text, filename=str(path))
    found: dict[tuple[int, int], Finding] = {}
    for scope in scopes(tree):
        tainted = tainted_names(scope)

        def suspicious(operand: ast.expr, tainted: set[str] = tainted) -> bool:
            return any(names_a_secret_value(n) or n in tainted for n in value_names(operand))

        for node in ast.walk(scope):
            if not isinstance(node, ast.Compare):
                continue
            lefts = [node.left, *node.comparators[:-1]]
            for op, left, right in zip(node.ops, lefts, node.comparators, strict=True):
                if isinstance(op, ast.Eq | ast.NotEq) and (suspicious(left) or suspicious(right)):
                    where = (node.lineno, node.col_offset)
                    found[where] = Finding(path, node.lineno, ast.unparse(node))
    return [found[where] for where in sorted(found)]


def every_finding() -> list[Finding]:
    findings: list[Finding] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        findings += equality_on_secret_values(path, path.read_text(encoding="utf-8"))
    return findings


def test_no_tag_mac_digest_signature_or_hash_is_compared_with_equality() -> None:
    findings = every_finding()
    unexplained = [str(f) for f in findings if f.source not in NOT_SECRET]
    assert unexplained == [], "compare these with hmac.compare_digest:\n" + "\n".join(unexplained)
    stale = sorted(set(NOT_SECRET) - {finding.source for finding in findings})
    assert stale == [], f"NOT_SECRET names comparisons the source no longer has: {stale}"


@pytest.mark.parametrize(
    "source",
    [
        "def f(tag, expected):\n    return tag == expected\n",
        "def f(a, b):\n    return a.mac != b\n",
        "def f(self, encoded, stored):\n    return self.tag(encoded) == bytes(stored)\n",
        "def f(h, other):\n    return other == h.digest()\n",
        "def f(signature, stored):\n    return signature.hex() == stored\n",
        "def f(trailer, other):\n    return trailer['tag'] == other\n",
        "def f(record, other):\n    return record.get('prev_hash') == other\n",
        "def f(mac, data, stored):\n    expected = mac.tag(data)\n    return expected != stored\n",
        "def f(a, b):\n    first = a.signature\n    second = first\n    return second == b\n",
        "def f(prefix, computed_hmac, x):\n    return prefix + computed_hmac == x\n",
        "def f(storedMac, x):\n    return x == storedMac\n",
        "def f(x, y, tag):\n    return x < y == tag\n",
    ],
    ids=lambda source: source.splitlines()[-1].strip(),
)
def test_the_check_sees_equality_on_a_secret_value(source: str) -> None:
    assert len(equality_on_secret_values(Path("example.py"), source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "def f(message, algorithm):\n    return len(message) != algorithm.digest_size\n",
        "def f(tag):\n    return len(tag) == 32\n",
        "def f(name, scheme):\n    return name == DEFAULT_SIGNATURE_SCHEME\n",
        "def f(tag, expected):\n    return hmac.compare_digest(tag, expected)\n",
        "def f(tag):\n    return tag is None\n",
        "def f(digest_algorithm, chosen):\n    return digest_algorithm is chosen.digest_size\n",
        "def f(a, b):\n    return a.version == b.version\n",
    ],
    ids=lambda source: source.splitlines()[-1].strip(),
)
def test_the_check_leaves_other_comparisons_alone(source: str) -> None:
    assert equality_on_secret_values(Path("example.py"), source) == []


def calls_compare_digest(function: ast.FunctionDef) -> bool:
    return any(
        isinstance(node, ast.Call) and call_name(node) == "compare_digest"
        for node in ast.walk(function)
    )


def function_in(path: Path, qualified_name: str) -> ast.FunctionDef:
    """``name`` or ``Class.name`` defined at the top of the module at ``path``."""
    body: list[ast.stmt] = ast.parse(path.read_text(encoding="utf-8")).body
    *classes, name = qualified_name.split(".")
    for class_name in classes:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == class_name)
    return next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)


@pytest.mark.parametrize(
    ("module", "function"),
    [
        # Every key row and version row is checked here (kms.crypto.integrity).
        ("crypto/integrity.py", "RecordMAC.verify"),
        # A backup file's integrity tag, before anything is restored.
        ("service/backup.py", "verify_backup"),
    ],
)
def test_stored_data_is_authenticated_with_compare_digest(module: str, function: str) -> None:
    assert calls_compare_digest(function_in(PACKAGE / module, function))
