"""``kms client``: the API from a shell, for operators. Binary data goes through stdin/stdout."""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from kms.client.errors import KMSClientError

#: Bytes read from stdin by encrypt/sign: the server refuses bodies over 1 MiB by default.
MAX_STDIN_BYTES = 8 * 1024 * 1024


@click.group("client")
@click.option(
    "--url",
    envvar="KMS_CLIENT_URL",
    default="https://localhost:8080",
    show_default=True,
    help="The kms server (env KMS_CLIENT_URL).",
)
@click.option(
    "--cert",
    envvar="KMS_CLIENT_CERT",
    default="./secrets/client.crt",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Client certificate, PEM (env KMS_CLIENT_CERT).",
)
@click.option(
    "--key",
    envvar="KMS_CLIENT_KEY",
    default="./secrets/client.key",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The client certificate's private key, PEM (env KMS_CLIENT_KEY).",
)
@click.option(
    "--ca",
    envvar="KMS_CLIENT_CA",
    default="./secrets/ca.pem",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="CA certificate that signed the server's certificate (env KMS_CLIENT_CA).",
)
@click.pass_context
def client(context: click.Context, url: str, cert: Path, key: Path, ca: Path) -> None:
    """Call a kms server: encrypt and decrypt data or files, sign and verify files.

    The defaults fit `make run` in this directory (./secrets, https://localhost:8080).
    """
    context.obj = {"url": url, "cert": (cert, key), "ca": ca}


@contextmanager
def _client(context: click.Context) -> Iterator[Any]:
    from kms.client.client import KMSClient

    settings = context.obj
    for path in (*settings["cert"], settings["ca"]):
        if not Path(path).is_file():
            _fail(f"cannot read {path}")
    try:
        with KMSClient(settings["url"], cert=settings["cert"], ca=settings["ca"]) as kms:
            yield kms
    except KMSClientError as error:
        _fail(error.message)
    except OSError as error:  # a local file: the one the command was given
        _fail(f"{error.filename}: {error.strerror}" if error.filename else str(error))


def _fail(message: str) -> None:
    click.echo(f"kms: {message}", err=True)
    sys.exit(1)


def _stdin_bytes() -> bytes:
    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        _fail(f"standard input is over {MAX_STDIN_BYTES} bytes: use encrypt-file")
    return data


def _context_option(text: str | None, option: str) -> dict[str, str] | None:
    """An encryption context given on the command line, as a JSON object of strings."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        _fail(f'{option} must be a JSON object of strings, such as \'{{"tenant": "a"}}\'')
    return value


def _expectations(command: Callable[..., None]) -> Callable[..., None]:
    """``--expect-key-id`` and ``--expect-context``: refuse a file whose header names another."""
    command = click.option(
        "--expect-context",
        metavar="JSON",
        help="Refuse the file unless its header names this encryption context (JSON object).",
    )(command)
    return click.option(
        "--expect-key-id",
        metavar="KEY_ID",
        help="Refuse the file unless its header names this key.",
    )(command)


@client.command()
@click.argument("key_id")
@click.pass_context
def encrypt(context: click.Context, key_id: str) -> None:
    """Encrypt standard input under KEY_ID; print the ciphertext."""
    data = _stdin_bytes()
    with _client(context) as kms:
        click.echo(kms.encrypt(key_id, data))


@client.command()
@click.argument("key_id")
@click.pass_context
def decrypt(context: click.Context, key_id: str) -> None:
    """Decrypt the ciphertext on standard input; write the plaintext to standard output."""
    ciphertext = sys.stdin.read().strip()
    with _client(context) as kms:
        plaintext = kms.decrypt(key_id, ciphertext)
    sys.stdout.buffer.write(plaintext)
    sys.stdout.buffer.flush()


@client.command("encrypt-file")
@click.argument("key_id")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--context", "encryption_context", metavar="JSON", help="Encryption context (JSON object)."
)
@click.pass_context
def encrypt_file(
    context: click.Context, key_id: str, src: Path, dst: Path, encryption_context: str | None
) -> None:
    """Encrypt the file SRC into DST locally, under one data key that KEY_ID wraps."""
    pairs = _context_option(encryption_context, "--context")
    with _client(context) as kms:
        size = kms.encrypt_file(key_id, src, dst, context=pairs)
    click.echo(f"kms: encrypted {size} bytes from {src} into {dst}", err=True)


@client.command("decrypt-file")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@_expectations
@click.pass_context
def decrypt_file(
    context: click.Context,
    src: Path,
    dst: Path,
    expect_key_id: str | None,
    expect_context: str | None,
) -> None:
    """Decrypt SRC (written by encrypt-file) into DST; a changed file writes nothing."""
    expected_context = _context_option(expect_context, "--expect-context")
    with _client(context) as kms:
        size = kms.decrypt_file(
            src, dst, expected_key_id=expect_key_id, expected_context=expected_context
        )
    click.echo(f"kms: decrypted {size} bytes from {src} into {dst}", err=True)


@client.command("rewrap-file")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_expectations
@click.pass_context
def rewrap_file(
    context: click.Context, file: Path, expect_key_id: str | None, expect_context: str | None
) -> None:
    """Re-wrap the data key of FILE (written by encrypt-file) under its key's latest version, in
    place; the encrypted chunks are not touched. Then older versions may be trimmed."""
    expected_context = _context_option(expect_context, "--expect-context")
    with _client(context) as kms:
        rewrapped = kms.rewrap_file(
            file, expected_key_id=expect_key_id, expected_context=expected_context
        )
    click.echo(
        f"kms: {file}: data key re-wrapped under {rewrapped.key_id} version {rewrapped.version}",
        err=True,
    )


@client.command()
@click.argument("key_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def sign(context: click.Context, key_id: str, file: Path) -> None:
    """Sign FILE with KEY_ID; print the signature (base64)."""
    message = file.read_bytes()
    with _client(context) as kms:
        signature = kms.sign(key_id, message)
    click.echo(base64.b64encode(signature.signature).decode("ascii"))


@client.command()
@click.argument("key_id")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("signature")
@click.option(
    "--require-low-s",
    is_flag=True,
    help="ECDSA keys: refuse the high-s form (r, n-s) of a signature; kms signs low-s.",
)
@click.pass_context
def verify(
    context: click.Context, key_id: str, file: Path, signature: str, require_low_s: bool
) -> None:
    """Verify SIGNATURE (base64, as `sign` prints it) of FILE; exit 0 if valid, 1 if not."""
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        _fail("SIGNATURE must be base64")
    message = file.read_bytes()
    with _client(context) as kms:
        valid = kms.verify(key_id, message, raw, require_low_s=require_low_s)
    if not valid:
        _fail(f"{file}: signature invalid")
    click.echo(f"kms: {file}: signature valid")
