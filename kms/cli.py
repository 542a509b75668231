"""The ``kms`` command."""

from __future__ import annotations

import sys
from pathlib import Path

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
    from kms.store.faults import database_name

    try:
        settings = load_settings()
        init_database(settings)
    except AlreadyInitialised as error:
        if if_needed:
            return
        _fail(error)
    except KMSError as error:
        _fail(error)
    click.echo(f"kms: initialised {database_name(settings.database_url)}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def serve(gunicorn_args: tuple[str, ...]) -> None:
    """Serve the API over mutual TLS with gunicorn (extra arguments go to gunicorn).

    The passphrase is read and the master key derived once, in gunicorn's master, before the port
    is bound: a wrong passphrase stops the server before any worker starts.
    """
    import os

    argv = [sys.executable, "-m", "gunicorn", "-c", "python:kms.gunicorn_conf", *gunicorn_args]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process, so systemd sees gunicorn


@main.command("dev-certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--client-cn", default="orchestrator", show_default=True)
def dev_certs(directory: Path, client_cn: str) -> None:
    """Write a dev CA, server and client certificates and a random passphrase into DIRECTORY.

    Files: ca.pem ca.key server.crt server.key client.crt client.key master.key (mode 0400).
    Refuses to overwrite any of them. For development only.
    """
    from kms.devcerts import write_dev_certificates

    try:
        write_dev_certificates(directory, client_common_name=client_cn)
    except FileExistsError as error:
        click.echo(f"kms: {error}", err=True)
        sys.exit(1)
    click.echo(f"kms: wrote dev certificates and passphrase to {directory}")
