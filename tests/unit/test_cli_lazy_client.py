"""``kms client`` is imported only when it is asked for (kms.cli._Commands): the operator
commands (a timer's rotate-due, a backup) do not pay for its HTTP stack, and it is still there."""

from __future__ import annotations

from click.testing import CliRunner

from kms.cli import main
from tests.helpers.imports import imported_with


def test_the_operator_commands_do_not_import_the_http_client() -> None:
    assert imported_with("kms.cli", ("requests", "kms.client.cli")) == []


def test_kms_client_is_listed_and_runs() -> None:
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert listing.exit_code == 0 and "  client " in listing.output
    help_text = runner.invoke(main, ["client", "--help"])
    assert help_text.exit_code == 0
    assert "Call a kms server" in help_text.output
