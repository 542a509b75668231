"""Strict marshmallow fields: the one way kms says "an integer from 1 to 30" or "true or false".

The API's schemas (``kms.api.schemas``) load request bodies and query strings with these, and the
settings (``kms.settings``) load YAML values and ``KMS_*`` environment variables with the same
classes. They refuse what a lenient parser would guess at: a bool where an integer is wanted
(``True`` is an ``int`` in Python), a float, or a string where JSON must hold a number. Text is
read only where a value can only be text (``from_text``: a query string, an environment variable,
or a YAML value that was quoted).

This module imports nothing from kms, so every layer may use it.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, fields

#: At most 12 digits: enough for every bound kms sets (64 GiB is 11), and int() of it costs nothing.
_DECIMAL = re.compile(r"[0-9]{1,12}")


class StrictInteger(fields.Field):
    """An integer from ``low`` to ``high``; never a bool or a float. With ``from_text``, also a
    string of ASCII decimal digits (no sign, no spaces), as a query string or a variable holds."""

    def __init__(self, *, low: int, high: int, from_text: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high, self.from_text = low, high, from_text

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if self.from_text and isinstance(value, str) and _DECIMAL.fullmatch(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be an integer")
        if not self.low <= value <= self.high:
            raise ValidationError(f"must be between {self.low} and {self.high}")
        return value

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> int | None:
        return value


class StrictBoolean(fields.Field):
    """true or false; never 1, 0 or "yes". With ``from_text``, also the text ``true`` or
    ``false`` in any case."""

    def __init__(self, *, from_text: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_text = from_text

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if self.from_text and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value
