"""Where the master passphrase comes from: a file that only its owner can read, or a prompt.

Never an environment variable, never a command-line argument.
"""

from __future__ import annotations

import errno
import getpass
import os
import stat
import sys
from pathlib import Path

from kms.errors import PassphraseError

#: Far more than any passphrase; a larger file is a mistake (a key file, a log) worth refusing.
MAX_PASSPHRASE_BYTES = 64 * 1024
#: The shortest passphrase a new master key is derived from (``kms init``, ``kms rekey``, ``kms
#: restore --as-clone``), unless the operator passes ``--allow-short-passphrase``. Whoever holds
#: the database needs only the passphrase, and can try guesses offline at the cost of PBKDF2
#: each: NIST SP 800-63B (rev. 4) asks at least 15 characters of a password that stands alone.
#: Counted in bytes, as stored (one trailing newline of a file excluded): a character outside
#: ASCII counts for two to four. Existing keystores open whatever their passphrase's length.
MIN_PASSPHRASE_BYTES = 16
#: The command-line flag that lifts ``MIN_PASSPHRASE_BYTES``, for throwaway keystores (tests).
ALLOW_SHORT_FLAG = "--allow-short-passphrase"


def read_passphrase_file(path: Path) -> bytearray:
    """Read the passphrase from ``path``; refuse a file any group or other bit is set on.

    One trailing newline is stripped (``echo secret > file`` writes one). The returned buffer is
    the caller's to overwrite once the master key is derived.
    """
    return read_secret_file(path, "passphrase file")


def read_secret_file(path: Path, what: str) -> bytearray:
    """Read a secret (passphrase, PIN) from the file configured at ``path``, as configured.

    The path is opened with ``O_NOFOLLOW``: a symlink is refused, so the mode checked is that of
    the file actually read. ``O_NONBLOCK`` makes the open of a FIFO return at once (a blocking
    open would wait for a writer forever), and ``fstat`` then refuses anything that is not a
    regular file (FIFO, device, directory) before a byte is read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PassphraseError(
                f"{what} {path} is a symbolic link; configure the file itself"
            ) from None
        raise PassphraseError(f"cannot open {what} {path}: {exc.strerror or 'error'}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PassphraseError(f"{what} {path} is not a regular file ({_kind(info.st_mode)})")
        if info.st_mode & 0o077:
            raise PassphraseError(
                f"{what} {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 0400 {path}"
            )
        buffer = _read_into_buffer(fd, path)
    finally:
        os.close(fd)
    if buffer.endswith(b"\n"):
        del buffer[-1]
    if not buffer:
        raise PassphraseError(f"{what} {path} is empty")
    return buffer


def _read_into_buffer(fd: int, path: Path) -> bytearray:
    """Read the whole file into ``bytearray`` buffers only.

    No ``bytes`` chunk (which could not be overwritten) ever holds the passphrase, and the large
    read buffer is overwritten once the passphrase is moved into one of its exact size.
    """
    buffer = bytearray(MAX_PASSPHRASE_BYTES + 1)
    length = 0
    try:
        with memoryview(buffer) as view:
            while length < len(buffer):
                count = os.readv(fd, [view[length:]])
                if count == 0:
                    break
                length += count
            if length > MAX_PASSPHRASE_BYTES:
                raise PassphraseError(
                    f"passphrase file {path} is longer than {MAX_PASSPHRASE_BYTES} bytes"
                )
            passphrase = bytearray(length)
            passphrase[:] = view[:length]  # copied buffer to buffer, no temporary object
    finally:
        buffer[:] = bytes(len(buffer))
    return passphrase


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


#: Why the master passphrase is prompted for, said when there is no terminal to prompt on.
NO_FILE_NOR_TERMINAL = (
    "no passphrase file is configured (kms.master_passphrase_file) and stdin is not a terminal "
    "to prompt on"
)


def prompt_passphrase(
    prompt: str = "kms master passphrase: ", without_terminal: str = NO_FILE_NOR_TERMINAL
) -> bytearray:
    """Ask on the terminal without echo; refuse with ``without_terminal`` when there is no
    terminal to ask on (it says where else the passphrase may come from)."""
    if not sys.stdin.isatty():
        raise PassphraseError(without_terminal)
    buffer = bytearray(getpass.getpass(prompt).encode("utf-8"))
    if not buffer:
        raise PassphraseError("the passphrase is empty")
    return buffer


def obtain_passphrase(path: Path | None) -> bytearray:
    return read_passphrase_file(path) if path is not None else prompt_passphrase()


def require_long_passphrase(passphrase: bytearray, what: str, *, allow_short: bool) -> None:
    """Raise ``PassphraseError`` if ``passphrase`` (a new master passphrase) is shorter than
    ``MIN_PASSPHRASE_BYTES`` and ``allow_short`` is false; the buffer is overwritten then.

    The message names neither the passphrase nor its length.
    """
    if allow_short or len(passphrase) >= MIN_PASSPHRASE_BYTES:
        return
    passphrase[:] = bytes(len(passphrase))
    raise PassphraseError(
        f"{what} is shorter than {MIN_PASSPHRASE_BYTES} bytes: choose a longer one (e.g. "
        f"`openssl rand -base64 32`), or pass {ALLOW_SHORT_FLAG} for a throwaway keystore"
    )
