"""A key listing reads only the keys of the caller's scope, and a bounded number of rows.

The caller's ``keys:read`` globs become SQL (kms.store.patterns): the glob translation agrees
with ``fnmatchcase`` on SQLite and PostgreSQL, escaping included; a scope is reached through the
index, so the rows the database hands back (``KeyPage.rows_examined``, and the statements'
rows counted below) are about ``limit``, whatever the number of keys outside it; a label filter
reads at most MAX_ROWS_EXAMINED rows per request (lowered here) and answers with a cursor; a
listing past its deadline is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, String, event, literal, select, text, union_all

from kms.errors import ListingTimedOut
from kms.service.keys import KMSService
from kms.store.db import create_kms_engine
from kms.store.patterns import ESCAPE, glob_to_like, successor
from kms.store.records import KeyRecord
from kms.store.repository import SQLKeyRepository
from kms.store.statements import key_id_matches
from tests.helpers.keystore import Store, make_service

#: The rows a listing may examine per request, lowered here so that a few keys exceed it
#: (the HTTP tests meet the real MAX_ROWS_EXAMINED on 200,000 keys).
CAP = 20
#: Keys outside every scope below, sorted before the billing keys: an unscoped scan meets them all.
OTHER_KEYS = CAP + 15
BILLING_KEYS = ("billing-a", "billing-b", "billing-c")


# -- the translation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "like", "prefix", "exact"),
    [
        ("billing-*", "billing-%", "billing-", True),
        ("*", "%", "", True),
        ("a**b", "a%b", "a", True),
        ("a?c", "a_c", "a", True),
        ("50%_off\\", "50\\%\\_off\\\\", "50%_off\\", True),
        ("key[0-9]x", "key_x", "key", False),
        ("[!a]*", "_%", "", False),
        ("a[bc", "a[bc", "a[bc", True),  # no closing ]: a literal [
        ("a[]]b", "a_b", "a", False),  # ] first in a set is one of its characters
    ],
)
def test_a_glob_becomes_a_like_pattern(glob: str, like: str, prefix: str, exact: bool) -> None:
    assert glob_to_like(glob) == (type(glob_to_like(glob))(like, prefix, exact))


def test_the_successor_of_a_prefix_bounds_its_range() -> None:
    assert successor("billing-") == "billing."
    assert successor("a\U0010ffff") == "b"
    assert successor("\U0010ffff") is None
    assert successor("\ud7ff") == "\ue000"


# Patterns from an alphabet of every character with a meaning in a glob or in LIKE, plus letters
# of both cases; names from the same alphabet, so that escaping and case both matter.
ALPHABET = "aAbB-._%\\*?[]!"
globs = st.text(alphabet=ALPHABET, max_size=7)
names = st.lists(
    st.text(alphabet="aAbB-._%\\[]!*?", min_size=0, max_size=6), min_size=1, max_size=25
)


def matching(
    engine: Engine, pattern: str, candidates: Sequence[str], *, seek: bool = True
) -> set[str]:
    """The candidates the SQL condition of ``pattern`` admits, evaluated by the database (kms's
    engine: on SQLite with its connection settings, case-sensitive LIKE included). Without
    ``seek``, the LIKE alone: the prefix's range would hide a fault of the LIKE in the prefix."""
    rows = union_all(*(select(literal(name, String).label("name")) for name in candidates))
    names = rows.subquery()
    column = names.c.name.collate("C") if engine.dialect.name == "postgresql" else names.c.name
    sql = glob_to_like(pattern)
    condition = key_id_matches(column, sql) if seek else column.like(sql.like, escape=ESCAPE)
    with engine.connect() as conn:
        return {name for (name,) in conn.execute(select(names.c.name).where(condition))}


def near(pattern: str) -> list[str]:
    """Names close to ``pattern``: itself, and with its special characters replaced or dropped,
    in either case: where a wrong escape or a case-blind LIKE would differ."""
    found = {pattern, pattern.upper(), pattern.lower()}
    for special in "*?[]!%_\\":
        for replacement in ("", "x", "X", "%", "_"):
            found.add(pattern.replace(special, replacement))
    return sorted(found)


def test_sql_and_fnmatch_agree_on_every_glob(store: Store) -> None:
    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pattern=globs, candidates=names)
    @example(pattern="billing-*", candidates=["billing-a", "Billing-a", "billingx", "billing-"])
    @example(pattern="a_b", candidates=["a_b", "axb", "A_b"])
    @example(pattern="a%b", candidates=["a%b", "axxb", "ab"])
    @example(pattern="a\\b", candidates=["a\\b", "ab", "a\\\\b"])
    @example(pattern="[!a]b", candidates=["ab", "bb", "b", "Ab"])
    @example(pattern="a[", candidates=["a[", "ab"])
    def agree(pattern: str, candidates: list[str]) -> None:
        candidates = [*candidates, *near(pattern)]
        expected = {name for name in candidates if fnmatchcase(name, pattern)}
        for seek in (True, False):
            found = matching(store.engine, pattern, candidates, seek=seek)
            if glob_to_like(pattern).exact:
                assert found == expected
            else:  # wider: the listing filters what comes back with fnmatchcase
                assert found >= expected

    agree()


# -- the listing ---------------------------------------------------------------------------------


class CountingRepository(SQLKeyRepository):
    """The real repository, counting the key rows its listing statements return."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows_returned = 0

    def scan_keys(self, *args: Any, **kwargs: Any) -> list[KeyRecord]:
        rows = super().scan_keys(*args, **kwargs)
        self.rows_returned += len(rows)
        return rows


@pytest.fixture
def keys_and_service(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KMSService, CountingRepository]]:
    monkeypatch.setattr("kms.service.keys.reading.MAX_ROWS_EXAMINED", CAP)
    writer = store.service()
    for index in range(OTHER_KEYS):
        writer.create_key(f"app-{index:05d}", labels={"team": "apps"})
    for key_id in BILLING_KEYS:
        writer.create_key(key_id, labels={"team": "billing"})
    repository = CountingRepository(create_kms_engine(store.settings.database_url))
    store.repositories.append(repository)
    yield make_service(repository, store.keyring), repository


def test_a_scoped_listing_reads_only_its_keys(
    keys_and_service: tuple[KMSService, CountingRepository],
) -> None:
    service, repository = keys_and_service
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = service.list_page(limit=1, after=after, key_patterns=("billing-*",))
        seen += [key.key_id for key in page.keys]
        pages += 1
        assert page.rows_examined <= 1
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == list(BILLING_KEYS)
    # One row per key of the scope, and none of the other OTHER_KEYS keys.
    assert repository.rows_returned == len(BILLING_KEYS)
    assert pages == len(BILLING_KEYS) + 1


def test_several_globs_and_sets_are_merged_in_order(
    keys_and_service: tuple[KMSService, CountingRepository],
) -> None:
    service, repository = keys_and_service
    patterns = ("billing-[ac]", "app-0000[12]", "billing-*", "nothing-*")
    page = service.list_page(limit=10, key_patterns=patterns)
    assert [key.key_id for key in page.keys] == [
        "app-00001",
        "app-00002",
        "billing-a",
        "billing-b",
        "billing-c",
    ]
    assert page.next_after is None
    # Each glob's statement returned its own rows only: app-0000[12] widened to app-0000_.
    assert repository.rows_returned <= 10 + 2 + 3 + 3


def test_a_label_filter_without_a_match_is_cut_at_the_cap(
    keys_and_service: tuple[KMSService, CountingRepository],
) -> None:
    service, repository = keys_and_service
    first = service.list_page(limit=1, label="team:nobody")
    assert first.keys == []
    assert first.rows_examined == CAP
    assert first.next_after == f"app-{CAP - 1:05d}"
    second = service.list_page(limit=1, after=first.next_after, label="team:nobody")
    assert second.keys == []
    assert second.next_after is None
    assert repository.rows_returned == OTHER_KEYS + len(BILLING_KEYS)
    # A match beyond the cap is found by following the cursor, and only what the scope allows.
    found = service.list_page(limit=5, label="team:billing", key_patterns=("billing-*",))
    assert [key.key_id for key in found.keys] == list(BILLING_KEYS)


def test_a_listing_past_its_deadline_is_stopped(store: Store) -> None:
    repository = SQLKeyRepository(store.engine)
    writer = store.service()
    for index in range(200):
        writer.create_key(f"late-{index:03d}")
    if store.engine.dialect.name == "postgresql":
        # A statement that cannot finish: another transaction holds the table; the statement
        # timeout set from the deadline ends the wait.
        with store.engine.connect() as holder:
            holder.execute(text("LOCK TABLE keys IN ACCESS EXCLUSIVE MODE"))
            with pytest.raises(ListingTimedOut):
                repository.scan_keys(10, None, patterns=("*-1*",), deadline=time.monotonic() + 0.2)
            holder.rollback()
    else:
        # The progress handler stops a statement that runs on after the deadline.
        with pytest.raises(ListingTimedOut):
            repository.scan_keys(10, None, patterns=("*-19*",), deadline=time.monotonic() - 1)
    assert len(repository.scan_keys(10, None, patterns=("*-19*",), deadline=None)) == 10


@pytest.mark.parametrize(
    ("patterns", "state", "index"),
    [
        (("billing-*",), None, "sqlite_autoindex_keys_1 (key_id>? AND key_id<?)"),
        (("billing-*",), "disabled", "ix_keys_state_key_id (state=? AND key_id>? AND key_id<?)"),
        (None, "pending_deletion", "ix_keys_state_key_id (state=? AND key_id>?)"),
    ],
)
def test_a_scope_and_a_state_are_seeks_of_an_index(
    repository: SQLKeyRepository, patterns: tuple[str, ...] | None, state: str | None, index: str
) -> None:
    # The query's shape, as SQLite plans it: a seek of the range, not a scan of every key.
    engine = repository._engine
    statements: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if statement.lstrip().startswith("SELECT keys.key_id"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        repository.scan_keys(10, "billing-0", state, patterns)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert statements
    with engine.connect() as conn:
        for statement, parameters in statements:
            plan = [
                row[-1]
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
            assert plan == [f"SEARCH keys USING INDEX {index}"]
