"""Schema management through Alembic, configured in code so an installed kms finds its
migrations (shipped as the ``kms.migrations`` package) wherever it is installed."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("kms.migrations")))
    return config


def upgrade_to_head(bind: Engine | Connection) -> None:
    """Migrate in a transaction of its own (an Engine), or inside the caller's (a Connection)."""
    config = alembic_config()
    if isinstance(bind, Connection):
        config.attributes["connection"] = bind
        command.upgrade(config, "head")
        return
    with bind.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise RuntimeError("kms ships no migrations")
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a database Alembic never touched."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
