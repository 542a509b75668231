"""Schema management through Alembic, configured in code so an installed kms finds its
migrations (shipped as the ``kms.migrations`` package) wherever it is installed."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
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
