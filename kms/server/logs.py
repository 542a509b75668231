"""Log lines a client cannot forge.

Anything a client controls (the request line, headers, the names in its certificate) can hold
quotes, backslashes, newlines, other control characters and non-ASCII text. Written raw, a
certificate CN such as ``x"\\ncaller="admin`` would end the access log line and start a fake one.

- The access log escapes every value (atom) it writes with ``escape_log_value``: ``"`` and ``\\``
  get a backslash, printable ASCII stays, everything else becomes ``\\n``, ``\\xNN``, ``\\uNNNN``
  or ``\\UNNNNNNNN``. A value therefore never spans lines and never closes its quotes. Only the
  atoms the format names are computed and escaped (``RequestAtoms``), one line per request;
  gunicorn's own way (``EscapingAtoms``: every atom of the request, its headers and its whole
  environ, each escaped) writes the same line at about twice the cost.
- The error log (gunicorn's and kms's own lines share its handlers) passes each message through
  ``escape_log_line``: the same, except that quotes and backslashes stay as written, so messages
  keep their shape; a value that kms quotes itself goes through ``escape_log_value`` first.
  Tracebacks are formatted by the handler after this, so they keep their lines.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
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


def _status(resp: Any) -> Any:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(resp: Any) -> Any:
    sent = getattr(resp, "sent", None)
    return sent is not None and str(sent) or "-"


#: gunicorn's atoms (``glogging.Logger.atoms``), each computed only when a format names it:
#: ``(logger, resp, req, environ, request_time) -> value``.
_ATOMS: dict[str, Callable[[Any, Any, Any, dict[str, Any], Any], Any]] = {
    "h": lambda log, resp, req, environ, took: environ.get("REMOTE_ADDR", "-"),
    "l": lambda log, resp, req, environ, took: "-",
    "u": lambda log, resp, req, environ, took: log._get_user(environ) or "-",
    "t": lambda log, resp, req, environ, took: log.now(),
    "r": lambda log, resp, req, environ, took: (
        f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"
    ),
    "s": lambda log, resp, req, environ, took: _status(resp),
    "m": lambda log, resp, req, environ, took: environ.get("REQUEST_METHOD"),
    "U": lambda log, resp, req, environ, took: environ.get("PATH_INFO"),
    "q": lambda log, resp, req, environ, took: environ.get("QUERY_STRING"),
    "H": lambda log, resp, req, environ, took: environ.get("SERVER_PROTOCOL"),
    "b": lambda log, resp, req, environ, took: _sent(resp),
    "B": lambda log, resp, req, environ, took: getattr(resp, "sent", None),
    "f": lambda log, resp, req, environ, took: environ.get("HTTP_REFERER", "-"),
    "a": lambda log, resp, req, environ, took: environ.get("HTTP_USER_AGENT", "-"),
    "T": lambda log, resp, req, environ, took: took.seconds,
    "D": lambda log, resp, req, environ, took: took.seconds * 1000000 + took.microseconds,
    "M": lambda log, resp, req, environ, took: took.seconds * 1000 + int(took.microseconds / 1000),
    "L": lambda log, resp, req, environ, took: f"{took.seconds}.{took.microseconds:06d}",
    "p": lambda log, resp, req, environ, took: f"<{os.getpid()}>",
}


def _last_named(pairs: Any, name: str) -> Any:
    """The value of the last pair whose name, lowercased, is ``name`` (as gunicorn's dict of
    atoms keeps the last); None if there is none."""
    if hasattr(pairs, "items"):
        pairs = pairs.items()
    found = None
    for key, value in pairs:
        if key.lower() == name:
            found = value
    return found


class RequestAtoms(Mapping[str, Any]):
    """The atoms of one request, each computed and escaped when the format asks for it.

    The same values, escaped the same way, as ``EscapingAtoms`` over gunicorn's ``atoms`` (a
    test keeps the two lines equal for every atom), without building and escaping every atom,
    request header and environ entry of the request: with kms's format (8 atoms) this cut the
    access log from 14% to 5% of an encrypt's CPU time in process (see docs/performance.md).
    """

    def __init__(
        self, logger: Any, resp: Any, req: Any, environ: dict[str, Any], request_time: Any
    ) -> None:
        self._logger, self._resp, self._req = logger, resp, req
        self._environ, self._request_time = environ, request_time

    def __getitem__(self, key: str) -> Any:
        if key.startswith("{"):
            value = self._named(key.lower())
        else:
            atom = _ATOMS.get(key)
            if atom is None:
                return "-"
            value = atom(self._logger, self._resp, self._req, self._environ, self._request_time)
        if value is None or isinstance(value, int | float):
            return value
        return escape_log_value(value)

    def _named(self, key: str) -> Any:
        """``{name}e`` (environ), ``{name}i`` (request header), ``{name}o`` (response header);
        ``-`` for one the request does not have."""
        name, kind = key[1:-2], key[-2:]
        if kind == "}e":
            value = self._environ.get(name)
            if value is None:
                value = _last_named(self._environ, name)
        elif kind == "}i":
            value = _last_named(getattr(self._req, "headers", self._req), name)
        elif kind == "}o":
            value = _last_named(self._resp.headers, name)
        else:
            return "-"
        # gunicorn keeps a None value as None; one it lacks is "-".
        return "-" if value is None and not self._has(name, kind) else value

    def _has(self, name: str, kind: str) -> bool:
        if kind == "}e":
            return any(key.lower() == name for key in self._environ)
        pairs = self._resp.headers if kind == "}o" else getattr(self._req, "headers", self._req)
        if hasattr(pairs, "items"):
            pairs = pairs.items()
        return any(key.lower() == name for key, _ in pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(_ATOMS)

    def __len__(self) -> int:
        return len(_ATOMS)


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

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """One access line, from the atoms the format names (``RequestAtoms``)."""
        if not self.access_log_enabled:
            return
        try:
            line = self.cfg.access_log_format % RequestAtoms(self, resp, req, environ, request_time)
            # Formatted already: no arguments, so logging does not format it again.
            self.access_log.info(line)
        except Exception:
            self.error(traceback.format_exc())

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            if not any(isinstance(f, OneLineFilter) for f in handler.filters):
                handler.addFilter(OneLineFilter())
