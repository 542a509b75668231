"""Schema management through Alembic, configured in code so an installed kms finds its
migrations (shipped as the ``kms.migrations`` package) wherever it is installed.

Alembic is imported only to migrate (``kms init``, ``kms upgrade``): it costs about 0.15 s of CPU
per process, and every ``kms serve`` and operator command checks the schema revision. That check
reads the two revisions without it: the database's from Alembic's own version table, this kms's
head from the ``revision``/``down_revision`` lines of its migration files
(tests/unit/test_schema_revisions.py holds both to Alembic's answers).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

#: Alembic's table of the revision a database is at (its default name, which kms keeps).
VERSION_TABLE = "alembic_version"
#: A migration's own lines, as Alembic's template writes them (``revision = "0008"``,
#: ``down_revision = "0007"`` or ``None``), with or without a type annotation or either quote.
_REVISION = re.compile(r"""^revision\s*(?::[^=]+)?=\s*["']([^"']+)["']\s*$""", re.MULTILINE)
_DOWN_REVISION = re.compile(
    r"""^down_revision\s*(?::[^=]+)?=\s*(?:["']([^"']+)["']|None)\s*$""", re.MULTILINE
)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("kms.migrations")))
    return config


def upgrade_to_head(bind: Engine | Connection) -> None:
    """Migrate in a transaction of its own (an Engine), or inside the caller's (a Connection)."""
    from alembic import command

    config = alembic_config()
    if isinstance(bind, Connection):
        config.attributes["connection"] = bind
        command.upgrade(config, "head")
        return
    with bind.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def script_revisions(source: str, name: str) -> tuple[str, str | None]:
    """A migration's revision and the one it builds on (None for the first)."""
    revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
    if revision is None or down is None:
        raise RuntimeError(f"migration {name} names no revision or down_revision")
    return revision.group(1), down.group(1)


def head_revision() -> str:
    """The revision no migration builds on: the one this kms's schema is at."""
    revisions: dict[str, str | None] = {}
    for script in resources.files("kms.migrations").joinpath("versions").iterdir():
        if not script.name.endswith(".py") or script.name.startswith("__"):
            continue
        revision, down = script_revisions(script.read_text(encoding="utf-8"), script.name)
        revisions[revision] = down
    heads = set(revisions) - set(revisions.values())
    if len(heads) != 1:  # pragma: no cover - the package ships one line of migrations
        raise RuntimeError(f"kms ships {len(heads)} migration heads, not one: {sorted(heads)}")
    (head,) = heads
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a database Alembic never touched."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:  # as Alembic refuses it: kms's migrations never branch
        raise RuntimeError(f"{VERSION_TABLE} holds {len(rows)} revisions, not one")
    return rows[0] if rows else None
