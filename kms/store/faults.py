"""What is wrong with a database, in words an operator can act on (startup and ``kms init``).

Only the driver's own words and the database's name are used: a SQLAlchemy URL is shown with its
password hidden, and statement parameters never appear (engines hide them).
"""

from __future__ import annotations

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

# SQLite's extended result names (sqlite3 exceptions carry ``sqlite_errorname``), by prefix.
_SQLITE_CAUSES: tuple[tuple[str, str], ...] = (
    ("SQLITE_NOTADB", "it is not a SQLite database, or its header is damaged"),
    ("SQLITE_CORRUPT", "the database file is damaged (malformed)"),
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_READONLY", "the database file or its directory is read-only"),
    ("SQLITE_CANTOPEN", "the file cannot be opened (missing directory or no permission)"),
    ("SQLITE_PERM", "permission denied"),
    ("SQLITE_AUTH", "permission denied"),
    ("SQLITE_BUSY", "the database is locked by another process"),
    ("SQLITE_LOCKED", "the database is locked by another process"),
    ("SQLITE_IOERR", "disk I/O error"),
)


def database_name(url: str) -> str:
    """How the operator knows this database: a SQLite file's path, or the URL without password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True)


def describe_database_error(error: BaseException | None) -> str:
    """The cause of a driver error (or SQLAlchemy's wrapper of one) in a few words, one line."""
    original = getattr(error, "orig", None) or error
    if original is None:
        return "unknown database error"
    errorname = getattr(original, "sqlite_errorname", None)
    if isinstance(errorname, str):
        for prefix, cause in _SQLITE_CAUSES:
            if errorname.startswith(prefix):
                return cause
    text = " ".join(str(original).split())  # psycopg's messages span lines; keep one
    return text or type(original).__name__


def existing_tables(engine: Engine) -> list[str]:
    """Tables and views in the database's default schema (``main`` for SQLite, the search path's
    first schema for PostgreSQL), sorted."""
    with engine.connect() as conn:
        inspector = inspect(conn)
        return sorted({*inspector.get_table_names(), *inspector.get_view_names()})
