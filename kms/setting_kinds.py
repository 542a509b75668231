"""The kinds of value a setting may have (kms.settings declares each setting with one): a
marshmallow field that loads the YAML or ``KMS_*`` text, and the words docs/settings.md shows
for it (``accepts``) and says when it is missing (``null``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marshmallow import ValidationError, fields, validate

from kms.fields import StrictBoolean, StrictInteger


class _Text(fields.String):
    """A string that is not empty."""

    default_error_messages = {"invalid": "must be a non-empty string"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not text:
            raise self.make_error("invalid")
        return text


class FilePath(fields.Field):
    """A file path, absolute once loaded; ``${CREDENTIALS_DIRECTORY}`` is expanded before."""

    default_error_messages = {"invalid": "must be a non-empty string"}

    def __init__(self, *, resolve: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resolve = resolve

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        return self.path(value)

    def path(self, value: object) -> Path:
        if not isinstance(value, str) or not value:
            raise self.make_error("invalid")
        path = Path(value).expanduser()
        if self.resolve:
            # Resolved now: a later chdir (a daemonising server does one) must not move it.
            return path.resolve()
        return path if path.is_absolute() else Path.cwd() / path


#: URL schemes that name PostgreSQL without a driver kms installs: SQLAlchemy reads ``postgres``
#: as no dialect at all and ``postgresql`` as psycopg2, which the ``postgres`` extra does not
#: install (it installs psycopg 3).
_POSTGRES_WITHOUT_DRIVER = ("postgres", "postgresql")
POSTGRES_SCHEME = "postgresql+psycopg"


class _DSN(FilePath):
    """A SQLAlchemy URL, kept as written, or a SQLite file path, resolved like other paths.

    A ``postgres://`` or ``postgresql://`` URL (libpq's and many providers' form) is refused
    with the one kms takes, ``postgresql+psycopg://``; the message names the scheme only, never
    the rest of the URL, which may hold a password."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and "://" in value:
            scheme = value.split("://", 1)[0]
            if scheme.lower() in _POSTGRES_WITHOUT_DRIVER:
                raise ValidationError(
                    f"{scheme}:// names no driver kms installs: write {POSTGRES_SCHEME}:// "
                    "(the rest of the URL stays as it is)"
                )
            return value
        return str(self.path(value))


def _described(field: fields.Field, accepts: str, null: str) -> fields.Field:
    field.metadata = {**field.metadata, "accepts": accepts}  # for docs/settings.md
    # A YAML key with nothing after it is null: say what it must be, not marshmallow's words.
    field.error_messages["null"] = null
    return field


def integer_between(low: int, high: int) -> fields.Field:
    field = StrictInteger(low=low, high=high, from_text=True)
    return _described(field, f"integer, {low} to {high}", "must be an integer")


def number_above_zero(high: int) -> fields.Field:
    words = f"must be a number above 0 and at most {high}"
    field = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0, max=high, min_inclusive=False, error=words),
        error_messages={"invalid": "must be a number", "special": words},
    )
    return _described(field, f"number above 0, at most {high}", "must be a number")


def boolean() -> fields.Field:
    return _described(StrictBoolean(from_text=True), "`true` or `false`", "must be true or false")


def text() -> fields.Field:
    return _described(_Text(), "text", "must be a non-empty string")


def text_matching(pattern: str, accepts: str, example: str) -> fields.Field:
    """Text that fully matches ``pattern``; ``example`` is one such text (for the tests)."""
    field = _Text(
        validate=validate.Regexp(f"^{pattern}$", error=f"must be {accepts}"),
        metadata={"example": example},
    )
    return _described(field, accepts, f"must be {accepts}")


def one_of(*choices: str) -> fields.Field:
    words = "must be one of " + ", ".join(choices)
    field = _Text(validate=validate.OneOf(choices, error=words), metadata={"choices": choices})
    return _described(field, " or ".join(f"`{choice}`" for choice in choices), words)


def file_path(*, resolve: bool = True) -> fields.Field:
    return _described(FilePath(resolve=resolve), "file path", "must be a non-empty string")


def dsn() -> fields.Field:
    return _described(_DSN(resolve=True), "file path or URL", "must be a non-empty string")
