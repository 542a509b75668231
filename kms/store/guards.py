"""What every repository method goes through: database failures turned into kms's own error, and
a deadline on the statements of a listing."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DBAPIError

from kms.errors import ListingTimedOut, StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def translate_database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn a failure of the database itself into ``StoreUnavailable``.

    Integrity errors are handled where they mean something (a duplicate key); whatever else the
    driver raises (locked, unreachable, disk full, schema missing) must not cross this layer.
    """

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            raise StoreUnavailable() from exc

    return translated


@contextmanager
def statement_deadline(conn: Connection, deadline: float | None) -> Iterator[None]:
    """Interrupt the statements run inside when ``time.monotonic()`` passes ``deadline``.

    SQLite: a progress handler, called every thousand virtual machine steps, stops the
    statement; PostgreSQL: ``statement_timeout`` for the rest of the time, local to a
    transaction. Either way the driver's error becomes ``ListingTimedOut``.
    """
    if deadline is None:
        yield
        return
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        driver: Any = conn.connection.driver_connection
        driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    else:
        conn.begin()
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        conn.execute(select(func.set_config("statement_timeout", str(remaining_ms), True)))
    try:
        yield
    except DBAPIError as exc:
        if time.monotonic() >= deadline:
            raise ListingTimedOut() from exc
        raise
    finally:
        if sqlite:
            driver.set_progress_handler(None, 0)
