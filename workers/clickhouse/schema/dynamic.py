"""Dynamic: the type ClickHouse's JSON inference gives a value, with the value, or a refusal.

ClickHouse stores a JSON value in a Dynamic column as the type its schema inference
gives it (``SELECT dynamicType(d) FROM format(JSONEachRow, 'd Dynamic', ...)``).
jetsink infers the same types for the values where the inference does not depend on
server settings, and refuses the rest (``invalid_value``) rather than guess:

- ``null``: NULL; ``true``/``false``: Bool; an integer: Int64, above Int64's range
  UInt64; a fraction or exponent: Float64;
- a string: String, except ``"YYYY-MM-DD"`` (Date, 1970-01-01 .. 2149-06-06),
  ``"YYYY-MM-DD hh:mm:ss"`` or with ``T`` (DateTime, read in the server's zone), the same
  with 1..9 fraction digits (DateTime64(9)).  Other strings ClickHouse may read as a
  date or time (by ``date_time_input_format``: a year-like 4-digit group with other
  digits, ``d/m`` digits, a month name with digits; impossible or out-of-range dates)
  are refused;
- an array: Array(T) of the elements' one type (integers and floats together:
  Float64; ``null`` among scalars: Nullable(T); empty arrays and only nulls: String),
  nested arrays alike; elements of different kinds (ClickHouse: Array(Dynamic) or a
  common type) are refused;
- an object: refused (ClickHouse infers a named Tuple of its keys).

The converter emits ``(type name, driver value)``; workers/clickhouse/native_variant.py
writes the column, with ``max_types`` (default 32) types as their own variants and
the rest in the shared variant.
"""

from __future__ import annotations

import re
from typing import Any

from workers.clickhouse.schema.converter import Converter
from workers.clickhouse.schema.errors import Rejected, show
from workers.clickhouse.schema.parser import ClickHouseType, Setting
from workers.clickhouse.schema.temporal import date_converter, datetime64_converter, datetime_converter, local_bounds

# ``b`` below is builder.Builder (which imports this module): its features, zones, problems and build().
Builder = Any
DEFAULT_MAX_TYPES = 32
_UNKNOWN = "?"  # an empty array's or a null's element type, String if nothing else decides it

_DIGIT = re.compile(r"\d", re.ASCII)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z", re.ASCII)
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}\Z", re.ASCII)
_DATETIME64 = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}\.\d{1,9}\Z", re.ASCII)
_YEAR = re.compile(r"(?<!\d)[12]\d{3}(?!\d)", re.ASCII)
_SLASHED = re.compile(r"\d\s*/\s*\d", re.ASCII)
_MONTH = re.compile(r"(?i)jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec")


def _date_like(s: str) -> bool:
    """Whether ClickHouse's date inference (basic or best effort) might read the string as a date or time."""
    year = _YEAR.search(s)
    if year is not None and _DIGIT.search(s[: year.start()] + s[year.end():]):
        return True
    return _SLASHED.search(s) is not None or (_MONTH.search(s) is not None)


class _Inference:
    """The inference, with the server's date and time converters."""

    def __init__(self, b: Builder):
        zone = b.zone(b.server_timezone)
        f = b.features
        self.date = date_converter("Date", f.date_range).convert
        self.datetime = datetime_converter("DateTime", zone, f.datetime_range, "s").convert
        self.datetime64 = datetime64_converter(
            "DateTime64(9)", 9, zone, local_bounds(f.datetime64_range, zone), "s"
        ).convert
        self.dated = ((_DATE, "Date", self.date), (_DATETIME, "DateTime", self.datetime),
                      (_DATETIME64, "DateTime64(9)", self.datetime64))

    def value(self, v: Any) -> tuple[str, Any]:
        t = type(v)
        if t is bool:
            return "Bool", v
        if t is int:
            if -(2**63) <= v < 2**63:
                return "Int64", v
            if 0 <= v < 2**64:
                return "UInt64", v
            raise Rejected("out_of_range", f"{show(v)} is beyond Int64 and UInt64")
        if t is float:
            return "Float64", v
        if t is str:
            return self.string(v)
        if t is list:
            element, items = self.elements(v)
            return f"Array({element})".replace(_UNKNOWN, "String"), items
        if t is dict:
            raise Rejected("wrong_type", f"an object ({show(v)}): ClickHouse infers a named Tuple of its keys, "
                                         "which jetsink does not write into Dynamic")
        raise Rejected("wrong_type", f"{show(v)} is not a JSON value")

    def string(self, s: str) -> tuple[str, Any]:
        if _DIGIT.search(s) is None:
            return "String", s
        for pattern, name, convert in self.dated:
            if pattern.match(s):
                try:
                    return name, convert(s)
                except Rejected as e:
                    raise self.unsure(s, f"a {name} ClickHouse would read otherwise ({e.message})") from None
        if _date_like(s):
            raise self.unsure(s, "ClickHouse may infer a date or date-time from it (by date_time_input_format)")
        return "String", s

    def elements(self, xs: list) -> tuple[str, list]:
        """The elements' one type (with _UNKNOWN where nothing decides it) and their values."""
        types, items, nulls = set(), [], False
        for x in xs:
            if x is None:
                nulls = True
                items.append(None)
                continue
            if type(x) is list:
                inner, values = self.elements(x)
                name = f"Array({inner})"
            else:
                name, values = self.value(x)
            types.add(name)
            items.append(values)
        if types == {"Int64", "Float64"} or types == {"UInt64", "Float64"}:
            items = [self.exact_float(x, xs) for x in items]
            types = {"Float64"}
        element = _unify(types)
        if element is None:
            raise self.unsure(xs, f"its elements are of different types ({', '.join(sorted(types))}): ClickHouse "
                                  "infers a common type or Array(Dynamic)")
        if nulls:
            if element.startswith("Array("):
                raise self.unsure(xs, "null among arrays")
            element = f"Nullable({element})"
        return element, items

    @staticmethod
    def exact_float(x: Any, xs: list) -> Any:
        if type(x) is int:
            f = float(x)
            if f != x:
                raise Rejected("invalid_value", f"{show(xs)}: {x} among floats would be rounded to Float64")
            return f
        return x

    @staticmethod
    def unsure(v: Any, why: str) -> Rejected:
        return Rejected("invalid_value", f"{show(v)}: {why}")


def _unify(types: set[str]) -> str | None:
    """One type for all, where the only differences are unknown element types; None if there is none."""
    if not types:
        return _UNKNOWN
    known = sorted(types, key=lambda t: t.count(_UNKNOWN))
    out = known[0]
    for t in known[1:]:
        out = _unify_two(out, t)
        if out is None:
            return None
    return out


def _unify_two(a: str, b: str) -> str | None:
    if a == b:
        return a
    if a == _UNKNOWN:
        return b
    if b == _UNKNOWN:
        return a
    for wrapper in ("Array(", "Nullable("):
        if a.startswith(wrapper) and b.startswith(wrapper):
            inner = _unify_two(a[len(wrapper):-1], b[len(wrapper):-1])
            return None if inner is None else f"{wrapper}{inner})"
    return None


def max_types(t: ClickHouseType) -> int | None:
    """Dynamic's ``max_types`` parameter (default 32), or None if the arguments are not that."""
    if not t.args:
        return DEFAULT_MAX_TYPES
    if len(t.args) == 1 and isinstance(t.args[0], Setting) and t.args[0].name == "max_types":
        value = t.args[0].value
        return value if isinstance(value, int) and 0 <= value <= 254 else None
    return None


def dynamic_converter(b: Builder, t: ClickHouseType) -> Converter:
    """Dynamic[(max_types=N)]: ``(type name, value)`` as ClickHouse's JSON inference types it, None for null."""
    if max_types(t) is None:
        return b.unsupported(t, "takes only max_types=N (0..254)")
    infer = _Inference(b)
    value = infer.value

    def convert(v: Any) -> Any:
        return None if v is None else value(v)

    return Converter(convert, None, nullable=True, accepts_str_keys=False)
