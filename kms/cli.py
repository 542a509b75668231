"""The ``kms`` command."""

from __future__ import annotations

import sys

import click

from kms.errors import KMSError


def _fail(error: KMSError) -> None:
    click.echo(f"kms: {error.public_message}", err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """On-premise key management service."""


@main.command()
@click.option("--if-needed", is_flag=True, help="Succeed quietly if already initialised.")
def init(if_needed: bool) -> None:
    """Initialise the configured database: schema, salt, KDF parameters and init marker."""
    from kms.errors import AlreadyInitialised
    from kms.master import init_database
    from kms.settings import load_settings

    try:
        settings = load_settings()
        init_database(settings)
    except AlreadyInitialised as error:
        if if_needed:
            return
        _fail(error)
    except KMSError as error:
        _fail(error)
    click.echo(f"kms: initialised {settings.database_dsn}")
