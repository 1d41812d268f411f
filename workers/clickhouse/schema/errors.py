"""What a failed mapping raises: SchemaError at compile time, MappingError per document.

Converters raise the lighter :class:`Rejected`; the mapper turns it into a
MappingError naming the column.  ``show`` keeps huge values out of messages.
"""

from __future__ import annotations

import reprlib
from typing import Any


class SchemaError(Exception):
    """The table schema or the column overrides cannot be mapped; ``problems`` lists every reason."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class MappingError(Exception):
    """One document cannot be mapped; ``reason`` is a short code, ``detail`` names column and value."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(reason, detail)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Rejected(Exception):
    """A value a converter refuses; ``where`` grows as nested converters re-raise it."""

    def __init__(self, reason: str, message: str, where: str = ""):
        self.reason = reason
        self.message = message
        self.where = where
        super().__init__(reason, message)

    def at(self, step: str) -> "Rejected":
        return Rejected(self.reason, self.message, step + self.where)


def show(value: Any) -> str:
    r = reprlib.Repr()
    r.maxstring = r.maxother = 80
    r.maxlist = r.maxdict = r.maxtuple = 6
    r.maxlevel = 2
    return r.repr(value)


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def wrong_type(expected: str, value: Any) -> Rejected:
    if value is None:
        return Rejected("wrong_type", f"null is not allowed (column is not Nullable); expected {expected}")
    return Rejected("wrong_type", f"expected {expected}, got JSON {json_kind(value)} {show(value)}")

