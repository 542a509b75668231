"""Opening the small files kms keeps beside a SQLite database (``<database>.serving``,
``<database>.changes``) without letting anyone else choose what kms writes into.

The database's directory may be writable by another user. Such a user could put a symbolic link
(or a file, a FIFO, a hard link to a file of theirs) where a side file belongs, and kms, which
creates and writes these files, would then write into whatever it names. So a side file is opened
with ``O_NOFOLLOW`` (a symbolic link as the last component is refused by the kernel, not checked
first and raced), ``O_NONBLOCK`` (a FIFO does not hang the open) and ``O_CLOEXEC``, and what was
opened must be a regular file owned by the effective user: anything else is closed unused and
refused with ``UnsafeSideFile`` naming the file. The check is on the opened descriptor
(``fstat``), so the file checked is the file used.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kms.errors import UnsafeSideFile


def open_side_file(path: Path, *, create: bool) -> int:
    """A read-write descriptor for ``path``, made (mode 0600) if ``create`` and missing.

    Raises ``UnsafeSideFile`` for a symbolic link, anything but a regular file, or a file owned
    by another user; ``FileNotFoundError`` when it is missing and not ``create``; any other
    ``OSError`` as it comes.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _refused(path, "it is a symbolic link") from None
        if error.errno == errno.ENXIO:  # a FIFO or socket with no reader
            raise _refused(path, "it is not a regular file") from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _refused(path, "it is not a regular file")
        if status.st_uid != os.geteuid():
            raise _refused(path, f"it is owned by uid {status.st_uid}, not by kms's user")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _refused(path: Path, why: str) -> UnsafeSideFile:
    return UnsafeSideFile(
        f"refusing to use {path}: {why}; kms creates it (a regular file, mode 0600, owned by "
        "its own user) beside the database: remove it and make sure no other user can write to "
        f"the directory {path.parent}"
    )
