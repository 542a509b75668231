"""The developer's commands of ``kms``: dev certificates for a first run (``make run``), and the
documents made from the code (``make openapi``, ``make settings-doc``). None of them reads the
settings, a database or a passphrase.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("dev-certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--client-cn", help="The client certificate's CN  [default: orchestrator, or kept on renewal]"
)
@click.option(
    "--renew",
    is_flag=True,
    help="Replace the CA, server and client certificates and keys in DIRECTORY with new ones, "
    "valid 365 days, and keep master.key (the keystore it opens still opens).",
)
def dev_certs(directory: Path, client_cn: str | None, renew: bool) -> None:
    """Write a dev CA, server and client certificates and a random passphrase into DIRECTORY.

    Files and their modes: ca.pem, server.crt, client.crt (0644); ca.key, server.key,
    client.key (0600); master.key (0400). DIRECTORY is created with mode 0700 when missing.
    Refuses to overwrite any of the files, except with --renew. Certificates are valid for 365
    days; kms warns at start from 30 days before the server's expires. For development only.
    """
    from kms.devcerts import renew_dev_certificates, write_dev_certificates

    if renew:
        try:
            name = renew_dev_certificates(directory, client_common_name=client_cn)
        except OSError as error:
            click.echo(f"kms: {error}", err=True)
            sys.exit(1)
        click.echo(
            f"kms: renewed the dev CA, server and client (CN {name}) certificates in {directory} "
            "for 365 days; master.key is unchanged"
        )
        return
    try:
        write_dev_certificates(directory, client_common_name=client_cn or "orchestrator")
    except FileExistsError as error:
        click.echo(f"kms: {error}", err=True)
        sys.exit(1)
    click.echo(f"kms: wrote dev certificates and passphrase to {directory}")


@click.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
def openapi(output: Path | None) -> None:
    """Print the OpenAPI 3.1 description of the API (what GET /v1/kms/openapi.json serves).

    Needs no configuration, database or passphrase; `make openapi` writes docs/openapi.json.
    """
    from kms.api.openapi import build_spec, render
    from kms.app import routes_only_app

    text = render(build_spec(routes_only_app()))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@click.command("settings-table")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of standard output.",
)
def settings_table(output: Path | None) -> None:
    """Print every setting as a Markdown table: YAML key, KMS_* variable, default, range, meaning.

    Made from the declarations in kms/settings.py; `make settings-doc` writes docs/settings.md.
    """
    from kms.settings import settings_table

    text = settings_table()
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


#: What kms.cli adds to the ``kms`` command.
COMMANDS = (dev_certs, openapi, settings_table)
