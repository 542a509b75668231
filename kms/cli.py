"""The ``kms`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kms.errors import ConfigurationError, KMSError

if TYPE_CHECKING:
    from kms.service.keys import KeyInfo


def _fail(error: KMSError) -> None:
    click.echo(f"kms: {error.public_message}", err=True)
    sys.exit(1)


class ProgressBar:
    """kms.master.Progress shown as a click progress bar on stderr (stdout stays for results)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, total: int, label: str) -> None:
        self.finish()
        self._bar = click.progressbar(length=total, label=f"kms: {label}", file=sys.stderr)
        self._bar.__enter__()

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


class _Commands(click.Group):
    """kms's commands, with ``kms client`` imported only when it is asked for: it brings an HTTP
    stack (requests, urllib3) that no operator command needs, and every ``kms`` command (a
    timer's rotate-due, a backup, each command the tests run) would otherwise import it."""

    LAZY = {"client": "kms.client.cli"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            import importlib

            command: click.Command = importlib.import_module(self.LAZY[cmd_name]).client
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
def main() -> None:
    """On-premise key management service.

    Settings come from the YAML file named by KMS_CONFIG; without it, KMS_ENV (dev, the default,
    or prod) picks config/config.<env>.yaml. Any single value can be overridden with
    KMS_<SECTION>_<KEY>, e.g. KMS_SERVER_PORT=8099 or KMS_DATABASE_DSN=./data/other.db
    (`kms settings-table` lists them all).
    """


#: ``--allow-short-passphrase`` of the commands that make a new master key.
ALLOW_SHORT_PASSPHRASE = click.option(
    "--allow-short-passphrase",
    is_flag=True,
    help="Accept a new passphrase shorter than 16 bytes: for throwaway keystores (tests) only.",
)


#: The master-key backends, for ``--backend`` and ``--to``.
BACKEND_CHOICE = click.Choice(["passphrase", "pkcs11"])


@main.command()
@click.option("--if-needed", is_flag=True, help="Succeed quietly if already initialised.")
@ALLOW_SHORT_PASSPHRASE
@click.option(
    "--backend",
    type=BACKEND_CHOICE,
    help="The backend that seals the new keystore; refused unless kms.master_key.backend "
    "says the same (kms starts with that setting).",
)
def init(if_needed: bool, allow_short_passphrase: bool, backend: str | None) -> None:
    """Initialise the configured database: schema, a new root secret sealed by the master-key
    backend (kms.master_key.backend), the keystore id and the init marker.

    Only a missing or empty database is initialised: on PostgreSQL one with no object (table,
    sequence, type, view, function...) in any schema but PostgreSQL's own. The passphrase must
    be at least 16 bytes long. With the pkcs11 backend, `kms hsm init` makes the HSM's key first.
    """
    from kms.errors import AlreadyInitialised
    from kms.master import init_database
    from kms.settings import load_settings
    from kms.store.faults import database_name

    try:
        settings = load_settings()
        init_database(settings, allow_short_passphrase=allow_short_passphrase, backend=backend)
    except AlreadyInitialised as error:
        if if_needed:
            return
        _fail(error)
    except KMSError as error:
        _fail(error)
    click.echo(f"kms: initialised {database_name(settings.database_url)}")


@main.command()
def upgrade() -> None:
    """Upgrade a database made by an earlier kms: migrate the schema, then MAC every row.

    Stop every kms node first. Needs the master passphrase (the MACs are keyed from the master
    key). Rows are sealed only if each wrapped key unwraps under its own identity and each
    public key is its private key's; otherwise nothing is sealed and the row is named.
    """
    from kms.master import describe_database
    from kms.settings import load_settings
    from kms.upgrade import upgrade_database

    try:
        settings = load_settings()
        result = upgrade_database(settings)
    except KMSError as error:
        _fail(error)
    where = describe_database(settings)
    if result.already_current:
        click.echo(f"kms: {where} is up to date")
    elif result.root_sealed:
        click.echo(
            f"kms: upgraded {where}: its root secret is now sealed by the passphrase backend "
            "(keystore format 4); every key and MAC is as it was"
        )
    elif result.migrated is not None and not result.sealed_keys and not result.sealed_versions:
        # Rows sealed by an earlier release keep their MACs: only the schema changed.
        before, after = result.migrated
        click.echo(f"kms: upgraded {where} from schema revision {before} to {after}")
    else:
        click.echo(
            f"kms: upgraded {where}: MACs written for {result.sealed_keys} keys and "
            f"{result.sealed_versions} key versions"
        )


@main.command()
@click.option(
    "--audit",
    "audit_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="An audit log (repeat for rotated files): name every key whose row is older than the "
    "newest generation the log records, and a database older than its newest epoch.",
)
def check(audit_files: tuple[Path, ...]) -> None:
    """Verify every key row and key version against its MAC; exit 1 naming each that fails.

    Also unwraps every version and checks that its material fits the key's algorithm and that a
    signing key's stored public key is its private key's, and that no key's generation is above
    the keystore epoch. With --audit, compares the database with the audit trail: a key rolled
    back, or the whole database, is named. Needs the master passphrase.
    """
    from kms.master import check_database, describe_database
    from kms.settings import load_settings

    try:
        settings = load_settings()
        report = check_database(settings, audit_files)
    except KMSError as error:
        _fail(error)
    for failure in report.failures:
        click.echo(f"kms: FAILED {failure}")
    where = describe_database(settings)
    summary = f"checked {report.keys} keys and {report.versions} key versions in {where}"
    summary += f" at epoch {report.epoch}"
    summary += f", root secret opened by the {settings.master_key_backend} backend"
    if report.root_secret_seconds is not None:
        summary += f" in {report.root_secret_seconds * 1000:.1f} ms"
    if report.trail_epoch is not None:
        summary += f" (the audit trail's newest: {report.trail_epoch})"
    if report.failures:
        click.echo(f"kms: {summary}: {len(report.failures)} failed", err=True)
        sys.exit(1)
    click.echo(f"kms: {summary}: all authentic")


@main.command("destroy-due")
def destroy_due() -> None:
    """Destroy every key whose scheduled deletion window has passed; print each one destroyed.

    Idempotent (a second run finds nothing due) and safe to run on several nodes at the same
    moment: each key is destroyed exactly once. Meant for a timer
    (deploy/systemd/kms-destroy-due.timer).
    Needs the master passphrase: each row's MAC is checked before it is destroyed. A row that
    fails its check is named and left alone, and the command exits 1.
    """
    from kms.master import describe_database, destroy_due_keys
    from kms.settings import load_settings

    failures: list[str] = []

    def destroyed(key: KeyInfo) -> None:
        due = key.pending_deletion_at.isoformat() if key.pending_deletion_at else "-"
        click.echo(f"kms: destroyed {key.key_id} (deletion was due {due})")

    def failed(key_id: str, error: KMSError) -> None:
        failures.append(key_id)
        detail = getattr(error, "detail", None) or error.public_message
        click.echo(f"kms: NOT destroyed {key_id}: {detail}", err=True)

    try:
        settings = load_settings()
        done = destroy_due_keys(settings, destroyed, failed)
    except KMSError as error:
        _fail(error)
    where = describe_database(settings)
    click.echo(f"kms: {len(done)} keys destroyed in {where}")
    if failures:
        click.echo(f"kms: {len(failures)} due keys were left alone: see above", err=True)
        sys.exit(1)


#: ``--key-label`` of the commands that name an HSM key instead of kms.master_key.key_label.
KEY_LABEL = click.option(
    "--key-label",
    help="The HSM key (in the token kms.master_key.token_label names) instead of "
    "kms.master_key.key_label.",
)


@main.command()
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the new passphrase from this file (owner-only mode); else prompt twice.",
)
@ALLOW_SHORT_PASSPHRASE
@click.option(
    "--to",
    "to",
    type=BACKEND_CHOICE,
    help="Move the root secret to this backend instead (only the root secret is re-sealed).",
)
@KEY_LABEL
def rekey(
    new_passphrase_file: Path | None,
    allow_short_passphrase: bool,
    to: str | None,
    key_label: str | None,
) -> None:
    """Make a new root secret and re-wrap every key version under it, in one transaction. The
    passphrase backend seals it under a new passphrase; the pkcs11 backend by the HSM's key, or
    with --key-label by another key of the token (made first with `kms hsm init --key-label`),
    then set kms.master_key.key_label to it. A new passphrase must be at least 16 bytes long.

    With --to, seal the same root secret by another backend instead (pkcs11: the
    kms.master_key.* settings; passphrase: the new passphrase), then set kms.master_key.backend
    to it.

    Stop every kms server first (kms refuses while one uses the database). Killed at any point,
    nothing changed and the old passphrase (or HSM key) still works; once it prints, only the
    new one does.
    """
    from kms.master import describe_database
    from kms.rekey import move_root_secret, rekey_database
    from kms.settings import load_settings

    if to is not None:
        try:
            settings = load_settings()
            passphrase = (
                _new_passphrase(new_passphrase_file, allow_short_passphrase)
                if to == "passphrase"
                else None
            )
            move_root_secret(settings, to, passphrase, key_label=key_label)
        except KMSError as error:
            _fail(error)
        click.echo(
            f"kms: the root secret of {describe_database(settings)} is sealed by the {to} "
            f"backend now; set kms.master_key.backend: {to}"
            + (f" and kms.master_key.key_label: {key_label}" if key_label else "")
            + " before starting kms"
        )
        return
    progress = ProgressBar()
    try:
        settings = load_settings()
        on_hsm = settings.master_key_backend == "pkcs11"
        if on_hsm and new_passphrase_file is not None:
            raise ConfigurationError(
                "--new-passphrase-file: kms.master_key.backend is pkcs11, and the HSM's key "
                "seals the new root secret (`kms rekey --to passphrase` moves it to a passphrase)"
            )
        new_passphrase = (
            None if on_hsm else _new_passphrase(new_passphrase_file, allow_short_passphrase)
        )
        result = rekey_database(settings, new_passphrase, progress, key_label=key_label)
    except KMSError as error:
        progress.finish()
        _fail(error)
    progress.finish()
    opener = "the new passphrase"
    if on_hsm:
        opener = f"the HSM key {key_label or settings.pkcs11_key_label!r}"
    after = ""
    if key_label is not None and key_label != settings.pkcs11_key_label:
        after = f"; set kms.master_key.key_label: {key_label} before starting kms"
    click.echo(
        f"kms: rekeyed {describe_database(settings)}: {result.versions} key versions of "
        f"{result.keys} keys re-wrapped; only {opener} opens it now{after}"
    )


def _new_passphrase(file: Path | None, allow_short: bool) -> bytearray:
    """A new master passphrase: from ``file``, or typed twice; refused while shorter than
    ``MIN_PASSPHRASE_BYTES`` unless ``allow_short``."""
    from kms.errors import PassphraseError
    from kms.service.passphrase import (
        prompt_passphrase,
        read_passphrase_file,
        require_long_passphrase,
    )

    if file is not None:
        new_passphrase = read_passphrase_file(file)
        require_long_passphrase(new_passphrase, "the new passphrase", allow_short=allow_short)
        return new_passphrase
    # The configured passphrase file holds the current passphrase, never the new one.
    without_terminal = (
        "the new passphrase must be typed on a terminal (stdin is not one) or read from a file: "
        "pass --new-passphrase-file FILE"
    )
    new_passphrase = prompt_passphrase("kms new master passphrase: ", without_terminal)
    require_long_passphrase(new_passphrase, "the new passphrase", allow_short=allow_short)
    again = prompt_passphrase("kms new master passphrase again: ", without_terminal)
    try:
        if again != new_passphrase:
            new_passphrase[:] = bytes(len(new_passphrase))
            raise PassphraseError("the two new passphrases differ; nothing was changed")
    finally:
        again[:] = bytes(len(again))
    return new_passphrase


@main.group()
def hsm() -> None:
    """The HSM that seals the root secret (kms.master_key.backend: pkcs11)."""


@hsm.command("init")
@KEY_LABEL
def hsm_init(key_label: str | None) -> None:
    """Create the AES-256 key kms.master_key.key_label (or --key-label) names in the token, if
    it is absent: sensitive, not extractable, encrypt and decrypt only, kept in the token. An
    existing key is left alone, and refused if its attributes are weaker."""
    from kms.settings import load_settings

    try:
        settings = load_settings()
        if key_label is not None:
            settings = settings.with_overrides(pkcs11_key_label=key_label)
        from kms.service.pkcs11 import HSMSettings, create_hsm_key

        hsm_settings = HSMSettings.from_settings(settings)
        created = create_hsm_key(settings)
    except KMSError as error:
        _fail(error)
    verb = "created" if created else "found (unchanged)"
    click.echo(f"kms: {verb} the {hsm_settings.key_name}")


@main.command("rotate-due")
def rotate_due() -> None:
    """Rotate every key whose latest version is older than its rotation_period.

    Safe to run while kms serves, from a timer on every node: each due key is rotated exactly
    once however many run at the same moment. Prints one line per rotated key.
    """
    from kms.master import describe_database, rotate_due_database
    from kms.settings import load_settings

    progress = ProgressBar()
    try:
        settings = load_settings()
        rotated = rotate_due_database(settings, progress)
    except KMSError as error:
        progress.finish()
        _fail(error)
    progress.finish()
    for done in rotated:
        click.echo(f"kms: rotated {done.key_id} to version {done.version}")
    click.echo(f"kms: {len(rotated)} keys rotated in {describe_database(settings)}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def backup(file: Path) -> None:
    """Write a consistent snapshot of the keystore to FILE (mode 0600), safe while kms serves.

    Keys stay wrapped under the master key, and the whole snapshot is encrypted and authenticated
    under a key derived from it: only the KDF parameters and the keystore id, which a restore
    needs, are readable without the passphrase. Needs the master passphrase. Never overwrites
    FILE.
    """
    from kms.backups import backup_database
    from kms.master import describe_database
    from kms.settings import load_settings

    progress = ProgressBar()
    try:
        settings = load_settings()
        result = backup_database(settings, file, progress)
    except KMSError as error:
        progress.finish()
        _fail(error)
    progress.finish()
    click.echo(
        f"kms: backed up {describe_database(settings)} to {file}: {result.rows} rows, "
        f"schema {result.schema}"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--as-clone",
    is_flag=True,
    help="Restore as another keystore (staging, tests): a new keystore id and a new master "
    "passphrase, every key version re-wrapped under it.",
)
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --as-clone: the clone's passphrase from this file (owner-only mode); else "
    "prompt twice.",
)
@ALLOW_SHORT_PASSPHRASE
def restore(
    file: Path, as_clone: bool, new_passphrase_file: Path | None, allow_short_passphrase: bool
) -> None:
    """Load the backup FILE into the configured database, which must be missing or empty.

    Stop every kms server first (kms refuses while one uses the database). The passphrase is that
    of the keystore the backup was taken from. A truncated, edited, reordered or foreign backup is
    refused before anything is written; killed at any point, the database is as it was. A restore
    is a deliberate rollback: this node's journal of generations starts afresh (remove the other
    nodes' too). With --as-clone the restored keystore is a keystore of its own, whose rows are
    refused by the original and which cannot unwrap what the original wraps from then on.
    """
    from kms.backups import restore_database
    from kms.master import describe_database
    from kms.settings import load_settings

    progress = ProgressBar()
    try:
        settings = load_settings()
        if (new_passphrase_file is not None or allow_short_passphrase) and not as_clone:
            raise KMSError("--new-passphrase-file and --allow-short-passphrase need --as-clone")
        clone_passphrase = (
            _new_passphrase(new_passphrase_file, allow_short_passphrase) if as_clone else None
        )
        rows = restore_database(settings, file, progress, clone_passphrase=clone_passphrase)
    except KMSError as error:
        progress.finish()
        _fail(error)
    progress.finish()
    kind = "a clone (a new keystore id and master key) " if as_clone else ""
    click.echo(f"kms: restored {rows} rows from {file} into {kind}{describe_database(settings)}")


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


@main.group()
def audit() -> None:
    """Work with the audit log."""


@audit.command("verify")
@click.option(
    "--links-only",
    is_flag=True,
    help="Check the links and the structure without the passphrase: this does not prove that "
    "kms wrote the lines.",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def audit_verify(files: tuple[Path, ...], links_only: bool) -> None:
    """Check the chain of the audit log FILE..., oldest first (rotated files, then the current).

    Every line's MAC is checked under the keystore's audit key (derived from the master key:
    needs the passphrase, like `kms check`), every link, and that each file continues the one
    before. Prints each file's count of lines and exits 0, or names the first line that fails
    (FILE:LINE and why) and exits 1.
    """
    from kms.audit import AuditKey
    from kms.audit_verify import verify_files

    for path in files:  # a file that cannot be read is named before any passphrase is read
        try:
            path.open("rb").close()
        except OSError as error:
            click.echo(f"kms: cannot read {path}: {error.strerror}", err=True)
            sys.exit(1)
    key = None
    if not links_only:
        from kms.master import open_master_keyring
        from kms.settings import load_settings

        try:
            keyring = open_master_keyring(load_settings())
        except KMSError as error:
            _fail(error)
        try:
            key = AuditKey.of(keyring)
        finally:
            keyring.close()
    try:
        result = verify_files(files, key)
    except OSError as error:
        click.echo(f"kms: cannot read {error.filename}: {error.strerror}", err=True)
        sys.exit(1)
    for file in result.files[: len(result.files) - (result.failure is not None)]:
        click.echo(f"kms: {file.path}: {file.describe(keyed=key is not None)}")
    if result.failure is not None:
        failure = result.failure
        click.echo(f"kms: {failure.path}:{failure.line}: chain broken: {failure.reason}")
        sys.exit(1)
    if links_only:
        click.echo(
            "kms: links only: no MAC was checked, so this does not prove that kms wrote these "
            "lines (run without --links-only, with the passphrase)"
        )


def _add_developer_commands() -> None:
    from kms.cli_dev import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_developer_commands()
