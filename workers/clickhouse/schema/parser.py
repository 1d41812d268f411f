"""ClickHouse type strings (``system.columns.type``) -> a small tree of :class:`ClickHouseType`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClickHouseType:
    """A parsed type: ``name`` plus arguments (types, ints, strings, or (name, value) pairs
    for Enum members and named Tuple elements)."""

    name: str
    args: tuple = ()


_TOKEN = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>-?\d+)|(?P<str>')|(?P<punct>[(),=])|(?P<bad>\S))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "a": "\a", "v": "\v"}


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        kind = m.lastgroup
        if kind == "str":
            chars = []
            while True:
                if pos >= end:
                    raise ValueError("unterminated string literal")
                ch = text[pos]
                if ch == "\\" and pos + 1 < end:
                    chars.append(_ESCAPES.get(text[pos + 1], text[pos + 1]))
                    pos += 2
                elif ch == "'":
                    if text.startswith("''", pos):  # SQL-style doubled quote
                        chars.append("'")
                        pos += 2
                    else:
                        pos += 1
                        break
                else:
                    chars.append(ch)
                    pos += 1
            tokens.append(("str", "".join(chars)))
        elif kind == "bad":
            raise ValueError(f"unexpected character {m.group(kind)!r}")
        elif kind == "num":
            tokens.append(("num", int(m.group(kind))))
        else:
            tokens.append((kind, m.group(kind)))
    return tokens


class _TypeParser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> tuple[str, Any]:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else ("end", None)

    def take(self, kind: str, value: Any = None) -> Any:
        tok = self.peek()
        if tok[0] != kind or (value is not None and tok[1] != value):
            want = value if value is not None else kind
            got = tok[1] if tok[0] != "end" else "end of text"
            raise ValueError(f"expected {want!r}, got {got!r}")
        self.i += 1
        return tok[1]

    def type_(self) -> ClickHouseType:
        name = self.take("ident")
        args: list[Any] = []
        if self.peek() == ("punct", "("):
            self.take("punct", "(")
            if self.peek() != ("punct", ")"):
                args.append(self.arg())
                while self.peek() == ("punct", ","):
                    self.take("punct", ",")
                    args.append(self.arg())
            self.take("punct", ")")
        return ClickHouseType(name, tuple(args))

    def arg(self) -> Any:
        kind, value = self.peek()
        if kind == "num":
            self.i += 1
            return value
        if kind == "str":
            self.i += 1
            if self.peek() == ("punct", "="):  # Enum member 'name' = value
                self.take("punct", "=")
                return (value, self.take("num"))
            return value
        if kind == "ident" and self.peek(1)[0] == "ident":  # named Tuple element: name Type
            self.i += 1
            return (value, self.type_())
        return self.type_()


def parse_type(text: str) -> ClickHouseType:
    """Parse a ClickHouse type string as shown in ``system.columns.type``; ValueError if malformed."""
    parser = _TypeParser(text)
    node = parser.type_()
    if parser.peek()[0] != "end":
        raise ValueError(f"unexpected {parser.peek()[1]!r} after the type")
    return node
