"""ClickHouse type strings (``system.columns.type``) -> a small tree of :class:`ClickHouseType`.

Every parameter syntax the servers print (18.16 to 26.x): types, numbers, strings,
Enum members (``'a' = 1``), named elements (``a Int8``, ``\\`a b\\` Int8``, and the
dotted, backquoted paths of ``JSON(\\`a.b\\` UInt32)``), settings (``max_dynamic_paths=16``)
and JSON's ``SKIP path`` / ``SKIP REGEXP 're'``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClickHouseType:
    """A parsed type: ``name`` plus arguments (types, numbers, strings, (name, value) pairs
    for Enum members and named Tuple elements or JSON paths, :class:`Setting`, :class:`Skip`)."""

    name: str
    args: tuple = ()


@dataclass(frozen=True)
class Setting:
    """A ``name=value`` parameter, as in ``JSON(max_dynamic_paths=16)``."""

    name: str
    value: Any


@dataclass(frozen=True)
class Skip:
    """JSON's ``SKIP path`` (``regexp`` False) or ``SKIP REGEXP 'pattern'``."""

    path: str
    regexp: bool = False


_TOKEN = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>')|(?P<quoted>`)"
    r"|(?P<punct>[(),=.])|(?P<bad>\S))"
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "a": "\a", "v": "\v"}


def _literal(text: str, pos: int, quote: str) -> tuple[str, int]:
    """The text of a literal quoted by `quote` whose body starts at `pos`, and the position after it."""
    chars = []
    end = len(text)
    while True:
        if pos >= end:
            raise ValueError("unterminated string literal" if quote == "'" else "unterminated quoted name")
        ch = text[pos]
        if ch == "\\" and pos + 1 < end:
            chars.append(_ESCAPES.get(text[pos + 1], text[pos + 1]))
            pos += 2
        elif ch == quote:
            if text.startswith(quote * 2, pos):  # SQL-style doubled quote
                chars.append(quote)
                pos += 2
            else:
                return "".join(chars), pos + 1
        else:
            chars.append(ch)
            pos += 1


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
            value, pos = _literal(text, pos, "'")
            tokens.append(("str", value))
        elif kind == "quoted":
            value, pos = _literal(text, pos, "`")
            tokens.append(("quoted", value))
        elif kind == "bad":
            raise ValueError(f"unexpected character {m.group(kind)!r}")
        elif kind == "num":
            number = m.group(kind)
            tokens.append(("num", int(number) if number.lstrip("-").isdigit() else float(number)))
        else:
            tokens.append((kind, m.group(kind)))
    return tokens


_NAMES = ("ident", "quoted")


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
                args.append(self.arg(name))
                while self.peek() == ("punct", ","):
                    self.take("punct", ",")
                    args.append(self.arg(name))
            self.take("punct", ")")
        return ClickHouseType(name, tuple(args))

    def name(self) -> str:
        """A name, dotted or not, each part plain or backquoted (a JSON path: ``a.b``, ``\\`a.b\\```)."""
        parts = [self.take(self.peek()[0])]
        while self.peek() == ("punct", ".") and self.peek(1)[0] in _NAMES:
            self.i += 1
            parts.append(self.take(self.peek()[0]))
        return ".".join(parts)

    def arg(self, outer: str) -> Any:
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
        if kind == "ident" and value == "SKIP" and outer in ("JSON", "Object") and self.peek(1)[0] in _NAMES:
            self.i += 1
            if self.peek() == ("ident", "REGEXP") and self.peek(1)[0] == "str":
                self.i += 1
                return Skip(self.take("str"), regexp=True)
            return Skip(self.name())
        if kind in _NAMES and self.peek(1) == ("punct", "="):  # a setting: name=value
            self.i += 2
            setting = self.peek()
            if setting[0] not in ("num", "str", "ident"):
                raise ValueError(f"expected a value for {value}, got {setting[1]!r}")
            self.i += 1
            return Setting(value, setting[1])
        if kind == "quoted" or (kind == "ident" and self.peek(1)[0] == "ident") or (
            kind == "ident" and self.peek(1) == ("punct", ".")
        ):
            name = self.name()  # a named element: name Type
            return (name, self.type_())
        return self.type_()


def parse_type(text: str) -> ClickHouseType:
    """Parse a ClickHouse type string as shown in ``system.columns.type``; ValueError if malformed."""
    parser = _TypeParser(text)
    node = parser.type_()
    if parser.peek()[0] != "end":
        raise ValueError(f"unexpected {parser.peek()[1]!r} after the type")
    return node


def _quote(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _text(arg: Any) -> str:
    if isinstance(arg, ClickHouseType):
        return type_text(arg)
    if isinstance(arg, str):
        return "'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(arg, Setting):
        return f"{arg.name}={_text(arg.value) if isinstance(arg.value, str) else arg.value}"
    if isinstance(arg, Skip):
        return f"SKIP REGEXP {_text(arg.path)}" if arg.regexp else "SKIP " + ".".join(map(_quote, arg.path.split(".")))
    if isinstance(arg, tuple):
        name, value = arg
        if isinstance(value, ClickHouseType):
            return f"{_quote(name)} {type_text(value)}"
        return f"{_text(name)} = {value}"
    return str(arg)


def type_text(t: ClickHouseType) -> str:
    """The type as ClickHouse spells it (parse_type(type_text(t)) == t)."""
    return t.name + (f"({', '.join(map(_text, t.args))})" if t.args else "")
