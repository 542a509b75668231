"""Log lines a client cannot forge.

Anything a client controls (the request line, headers, the names in its certificate) can hold
quotes, backslashes, newlines, other control characters and non-ASCII text. Written raw, a
certificate CN such as ``x"\\ncaller="admin`` would end the access log line and start a fake one.

- The access log escapes every value (atom) it writes with ``escape_log_value``: ``"`` and ``\\``
  get a backslash, printable ASCII stays, everything else becomes ``\\n``, ``\\xNN``, ``\\uNNNN``
  or ``\\UNNNNNNNN``. A value therefore never spans lines and never closes its quotes.
- The error log (gunicorn's and kms's own lines share its handlers) passes each message through
  ``escape_log_line``: the same, except that quotes and backslashes stay as written, so messages
  keep their shape; a value that kms quotes itself goes through ``escape_log_value`` first.
  Tracebacks are formatted by the handler after this, so they keep their lines.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gunicorn import glogging

_PLAIN_VALUE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")
_PLAIN_LINE = re.compile(r"[\x20-\x7e]*")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_log_value(value: object) -> str:
    """One value as printable ASCII that can sit between double quotes on one line."""
    text = value if isinstance(value, str) else str(value)
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return "".join(
        "\\" + char if char in '"\\' else char if "\x20" <= char <= "\x7e" else _escape_char(char)
        for char in text
    )


def escape_log_line(text: str) -> str:
    """A whole message as one line of printable ASCII; quotes and backslashes stay."""
    if _PLAIN_LINE.fullmatch(text):
        return text
    return "".join(char if "\x20" <= char <= "\x7e" else _escape_char(char) for char in text)


class EscapingAtoms(dict):
    """gunicorn's access-log atoms, every value escaped; an unknown atom is ``-``."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        super().__init__()
        for key, value in atoms.items():
            if value is None or isinstance(value, int | float):
                self[key] = value
            else:
                self[key] = escape_log_value(value)

    def __getitem__(self, key: str) -> Any:
        if key.startswith("{"):
            key = key.lower()
        return super().__getitem__(key) if key in self else "-"


class OneLineFilter(logging.Filter):
    """Rewrites a record's message to one escaped line (its traceback is added later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_log_line(message)
        if escaped is not message or record.args:
            record.msg = escaped
            record.args = None
        return True


class KMSLogger(glogging.Logger):
    """gunicorn's logger with escaped access-log atoms and one-line error-log messages."""

    atoms_wrapper_class = EscapingAtoms

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if not any(isinstance(f, OneLineFilter) for f in handler.filters):
                handler.addFilter(OneLineFilter())
