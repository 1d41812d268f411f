"""ClickHouse column types -> strict converters from JSON values to driver values.

A table's schema (rows of ``system.columns``) and the pipeline's column
overrides are compiled ONCE into a :class:`ColumnMapper`; its
:meth:`ColumnMapper.map_rows` turns parsed JSON documents into the columnar
lists clickhouse-driver inserts.  Everything that can be known from the schema
(unknown types, types the server is too old for, bad override defaults,
overrides naming missing or computed columns) is a :class:`SchemaError` at
compile time, never a surprise at the first row.

Strictness: a value is stored only if it is exactly the value that was sent.
Nothing is wrapped, truncated, rounded or guessed, even where ClickHouse's own
text parsers would; such a document fails with :class:`MappingError` and goes
to the dead-letter queue instead.

Server versions (approximate first release with the type/feature usable
without experimental settings; a column of a type the connected server lacks
is a compile-time SchemaError):

=================================================  ==========  ==========================================
Type / feature                                     Needs       Notes
=================================================  ==========  ==========================================
(U)Int8..64, Float32/64, String, FixedString(N)    any         18.16 is the oldest server we target
Date, DateTime, DateTime('tz'), UUID, Enum8/16     any
Decimal(P,S) with P <= 38, Decimal32/64/128(S)     any
Nullable, Array, Tuple                             any
IPv4, IPv6                                         19.3
LowCardinality(T)                                  19.9        experimental (allow_experimental_...) before
DateTime64(P[, 'tz'])                              20.1
Int128, Int256, UInt256, Decimal256 (P > 38)       20.8        experimental until 21.x
opentelemetry_traceparent (client trace context)   20.11       protocol revision 54442
UInt128                                            21.6
Map(K, V)                                          21.8        experimental 21.1 .. 21.7
Date32                                             21.9
Bool                                               21.12
insert_deduplication_token (insert setting)        22.2
Date up to 2149-06-06, DateTime up to 2106-02-07   21.4        before: dates up to 2105-12-31 only
DateTime64 range 1925-01-01 .. 2283-11-11          21.4        before: 1970-01-01 .. 2105-12-31
DateTime64/Date32 range 1900-01-01 .. 2299-12-31   22.8
=================================================  ==========  ==========================================

What each type accepts (JSON value) and what is emitted for the driver
(the fastest form clickhouse-driver 0.2.x accepts for columnar inserts):

* (U)Int8..64: a JSON integer in the type's range -> int.  A JSON float is
  accepted only if it is integral and below 2**53 in magnitude (``3.0``);
  ``true``/``false`` are not integers.  (U)Int128/256 also accept a canonical
  decimal string ("-12", no "+", no leading zeros) because JSON parsers cap
  integers at 64 bits.
* Float32/64: a JSON number -> float.  Integers must be exactly representable;
  Float32 rejects magnitudes beyond its range (and non-zero values that would
  underflow to zero) but, by the column's nature, rounds to the nearest float32.
* Bool: ``true``/``false`` -> bool.
* String: a JSON string -> str.  FixedString(N): a string of at most N UTF-8
  bytes -> str (ClickHouse pads it with NUL bytes).
* Date/Date32: "YYYY-MM-DD" (a real date in range) -> datetime.date (the driver
  accepts nothing else).
* DateTime / DateTime64(P): "YYYY-MM-DD[T ]hh:mm:ss[.fff...]" with "Z" or an
  offset ("+02:00"/"+0200"); a string without offset only if the column
  declares a time zone (and the local time is neither ambiguous nor skipped
  by a DST change there); or a JSON number of epoch seconds/milliseconds as
  per the override's ``epoch_unit``.  Non-zero fraction digits the column
  cannot hold are rejected ("use DateTime64(3)").  A fractional JSON float
  epoch is read by its shortest repr (what JSON encoders write).
  Emitted: int epoch seconds (DateTime) / int ticks of 10**-P s (DateTime64).
* UUID: canonical 8-4-4-4-12 hex string, any case -> uuid.UUID.
* Decimal(P,S): a JSON string "-123.45" (plain notation) or a JSON integer ->
  decimal.Decimal / int.  JSON floats are rejected: the double a parser made
  of "0.1" is not 0.1, so decimals must travel as strings.  More than S
  non-zero fraction digits or more than P-S integer digits -> out_of_range.
* Enum8/16: one of the names (string) or one of the values (integer) -> the
  name (str).
* IPv4: dotted quad string -> int.  IPv6: an IPv6 literal (no zone id, an
  IPv4 address is rejected rather than guessed into ::ffff:a.b.c.d) -> the
  16 packed bytes.
* Nullable(T): ``null`` -> None, else T.  LowCardinality(T): as T.
* Array(T): a JSON array -> list.  Map(K, V): a JSON object -> dict; keys are
  converted to K (integer keys must be canonical decimal strings; keys that
  collide after conversion are rejected).  Tuple(...): a JSON array of the
  right length (named tuples also accept an object with exactly those keys)
  -> tuple.

``null`` for a non-Nullable column is a "wrong_type" error, never a default:
only an absent field is "missing".  A missing field is filled, in order, by:
the override's ``required`` (-> "missing_required"), the override's default
(converted at compile time), the column's constant DEFAULT (the value the
caller evaluated into ``constant_defaults``, in the form clickhouse-driver
returns for ``SELECT CAST(expr AS type)`` and passed through unchanged), the
server (a non-constant DEFAULT column with no override is not inserted at all;
a document that nevertheless carries that field is rejected rather than
silently losing the value), None for Nullable columns, else the type's zero
value.  A constant DEFAULT wins over Nullable's None because it is what
ClickHouse itself would store for an omitted column.
"""

from __future__ import annotations

import difflib
import re
import reprlib
import socket
import struct
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import chain, compress, repeat
from operator import add, itemgetter, lshift, or_
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from uuid import UUID, SafeUUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:  # only its attributes are read
    from workers.settings import ColumnOverride


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


# --------------------------------------------------------------------------- server features

_TYPE_SINCE: Mapping[str, tuple[int, ...]] = {
    "IPv4": (19, 3),
    "IPv6": (19, 3),
    "LowCardinality": (19, 9),
    "DateTime64": (20, 1),
    "Int128": (20, 8),
    "Int256": (20, 8),
    "UInt256": (20, 8),
    "Decimal256": (20, 8),
    "UInt128": (21, 6),
    "Map": (21, 8),
    "Date32": (21, 9),
    "Bool": (21, 12),
}

_EXTENDED_DATES = (21, 4)
_WIDEST_DATES = (22, 8)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _epoch(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return (date(y, m, d).toordinal() - _EPOCH_ORDINAL) * 86400 + hh * 3600 + mm * 60 + ss


def _version_text(v: tuple[int, ...]) -> str:
    return ".".join(str(x) for x in v)


@dataclass(frozen=True)
class ServerFeatures:
    """What the connected ClickHouse server supports, derived from its version (see module table)."""

    version: tuple[int, ...]

    @classmethod
    def from_version(cls, v: tuple[int, ...]) -> "ServerFeatures":
        """Features of a server reporting version ``v`` (e.g. ``(18, 16, 1)``)."""
        return cls(tuple(int(x) for x in v))

    def _has(self, since: tuple[int, ...]) -> bool:
        return self.version >= since

    def type_needs(self, type_name: str) -> tuple[int, ...] | None:
        """The version a type constructor needs if this server lacks it, else None."""
        since = _TYPE_SINCE.get(type_name)
        return since if since is not None and not self._has(since) else None

    @property
    def version_text(self) -> str:
        return _version_text(self.version)

    @property
    def ipv4_ipv6(self) -> bool:
        return self._has(_TYPE_SINCE["IPv4"])

    @property
    def low_cardinality(self) -> bool:
        return self._has(_TYPE_SINCE["LowCardinality"])

    @property
    def datetime64(self) -> bool:
        return self._has(_TYPE_SINCE["DateTime64"])

    @property
    def big_integers(self) -> bool:
        return self._has(_TYPE_SINCE["Int128"])

    @property
    def map(self) -> bool:
        return self._has(_TYPE_SINCE["Map"])

    @property
    def date32(self) -> bool:
        return self._has(_TYPE_SINCE["Date32"])

    @property
    def bool_type(self) -> bool:
        return self._has(_TYPE_SINCE["Bool"])

    @property
    def opentelemetry_traceparent(self) -> bool:
        return self._has((20, 11))

    @property
    def insert_deduplication_token(self) -> bool:
        return self._has((22, 2))

    @property
    def date_range(self) -> tuple[date, date]:
        """Dates the server's date functions handle correctly (older LUTs end in 2105)."""
        if self._has(_EXTENDED_DATES):
            return date(1970, 1, 1), date(2149, 6, 6)
        return date(1970, 1, 1), date(2105, 12, 31)

    @property
    def date32_range(self) -> tuple[date, date]:
        if self._has(_WIDEST_DATES):
            return date(1900, 1, 1), date(2299, 12, 31)
        return date(1925, 1, 1), date(2283, 11, 11)

    @property
    def datetime_range(self) -> tuple[int, int]:
        """Inclusive epoch-second bounds of DateTime."""
        if self._has(_EXTENDED_DATES):
            return 0, 2**32 - 1
        return 0, _epoch(2105, 12, 31, 23, 59, 59)

    @property
    def datetime64_range(self) -> tuple[int, int]:
        """Inclusive epoch-second bounds of DateTime64 (whole seconds; any fraction is allowed in the last)."""
        if self._has(_WIDEST_DATES):
            return _epoch(1900, 1, 1), _epoch(2299, 12, 31, 23, 59, 59)
        if self._has(_EXTENDED_DATES):
            return _epoch(1925, 1, 1), _epoch(2283, 11, 11, 23, 59, 59)
        return 0, _epoch(2105, 12, 31, 23, 59, 59)


# --------------------------------------------------------------------------- type strings

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


# --------------------------------------------------------------------------- converters

class _Rejected(Exception):
    """A value a converter refuses; ``where`` grows as nested converters re-raise it."""

    def __init__(self, reason: str, message: str, where: str = ""):
        self.reason = reason
        self.message = message
        self.where = where
        super().__init__(reason, message)

    def at(self, step: str) -> "_Rejected":
        return _Rejected(self.reason, self.message, step + self.where)


def _show(value: Any) -> str:
    r = reprlib.Repr()
    r.maxstring = r.maxother = 80
    r.maxlist = r.maxdict = r.maxtuple = 6
    r.maxlevel = 2
    return r.repr(value)


def _json_kind(value: Any) -> str:
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


def _wrong_type(expected: str, value: Any) -> _Rejected:
    if value is None:
        return _Rejected("wrong_type", f"null is not allowed (column is not Nullable); expected {expected}")
    return _Rejected("wrong_type", f"expected {expected}, got JSON {_json_kind(value)} {_show(value)}")


@dataclass(frozen=True)
class _Converter:
    convert: Callable[[Any], Any]  # JSON value -> driver value; raises _Rejected
    zero: Any  # what ClickHouse stores for an omitted column, in emitted form
    nullable: bool = False
    # (allowed exact python types, lo, hi) when a whole column can be validated with
    # C-level set(map(type, ...)) / min / max and emitted unchanged; lo/hi are None
    # when the type needs no range check.
    fast: tuple | None = None
    accepts_str_keys: bool = True  # usable as a Map key converter given the JSON key text
    # Parsing a string is costly and values repeat within a batch (timestamps of one
    # second, a handful of IPs): convert each distinct string once per batch.
    dedupe_strings: bool = False
    # A whole-column fast path for the common, valid case: list of JSON values -> the
    # list convert() would make of them, or None when any value is not of the type and
    # shape it handles (null and the mapper's missing marker included; the per-value
    # converter then decides and names the error).  It must accept only what convert()
    # accepts, and emit exactly what convert() emits.
    column: Callable[[list], list | None] | None = None


_STR = frozenset({str})
_LIST = frozenset({list})
_MAX_EXACT_FLOAT_INT = 2**53
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z", re.ASCII)


def _int_converter(type_name: str, bits: int, signed: bool) -> _Converter:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    big = bits > 64
    expected = "an integer" + (" (number or decimal string)" if big else "")

    def out_of_range(v: int) -> _Rejected:
        return _Rejected("out_of_range", f"{_show(v)} is out of range for {type_name} [{lo}, {hi}]")

    def convert(v: Any) -> int:
        t = type(v)
        if t is int:
            if lo <= v <= hi:
                return v
            raise out_of_range(v)
        if t is float:
            if v.is_integer() and -_MAX_EXACT_FLOAT_INT < v < _MAX_EXACT_FLOAT_INT:
                iv = int(v)
                if lo <= iv <= hi:
                    return iv
                raise out_of_range(v)
            raise _Rejected(
                "wrong_type",
                f"{_show(v)} is not provably an exact integer for {type_name} "
                "(floats are accepted only when integral and below 2**53)",
            )
        if big and t is str:
            if not _CANONICAL_INT.match(v):
                raise _Rejected("invalid_value", f"{_show(v)} is not a canonical decimal integer for {type_name}")
            iv = int(v)
            if lo <= iv <= hi:
                return iv
            raise out_of_range(v)
        raise _wrong_type(expected, v)

    return _Converter(convert, 0, fast=(frozenset({int}), lo, hi))


_FLT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_FLT32_TINY = 2.0**-149  # smallest subnormal float32; anything smaller rounds to 0


def _float_converter(type_name: str) -> _Converter:
    single = type_name == "Float32"
    pack = struct.Struct("<f")

    def convert(v: Any) -> float:
        t = type(v)
        if t is float:
            f = v
        elif t is int:
            try:
                f = float(v)
            except OverflowError:
                f = float("inf")
            if f != v:
                raise _Rejected("out_of_range", f"integer {_show(v)} cannot be represented exactly as {type_name}")
            if single and abs(f) <= _FLT32_MAX and pack.unpack(pack.pack(f))[0] != f:
                raise _Rejected("out_of_range", f"integer {_show(v)} cannot be represented exactly as {type_name}")
        else:
            raise _wrong_type("a number", v)
        if single:
            a = abs(f)
            if a > _FLT32_MAX or (0.0 < a < _FLT32_TINY):
                raise _Rejected("out_of_range", f"{_show(v)} is out of range for Float32")
        return f

    # Float32 has no fast path: its underflow check is not a min/max test.
    return _Converter(convert, 0.0, fast=None if single else (frozenset({float}), None, None))


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _wrong_type("true or false", v)


def _string(v: Any) -> str:
    if type(v) is str:
        return v
    raise _wrong_type("a string", v)


def _fixed_string_converter(n: int) -> _Converter:
    def convert(v: Any) -> str:
        if type(v) is not str:
            raise _wrong_type("a string", v)
        if len(v) > n:
            raise _Rejected("out_of_range", f"{_show(v)} is longer than FixedString({n}) ({n} bytes)")
        if not v.isascii():
            try:
                size = len(v.encode("utf-8"))
            except UnicodeEncodeError:
                raise _Rejected("invalid_value", f"{_show(v)} is not valid Unicode text") from None
            if size > n:
                raise _Rejected("out_of_range", f"{_show(v)} is {size} UTF-8 bytes; FixedString({n}) holds {n}")
        return v

    def column(values: list) -> list | None:
        # ASCII strings are one byte a character: a length check is the whole test.
        if set(map(type, values)) <= _STR and max(map(len, values), default=0) <= n and "".join(values).isascii():
            return values
        return None

    return _Converter(convert, "", column=column)


_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})\Z", re.ASCII)


def _date_converter(type_name: str, bounds: tuple[date, date]) -> _Converter:
    lo, hi = bounds

    def parse(v: str) -> date:
        m = _DATE.match(v)
        if m is None:
            raise _Rejected("invalid_value", f"{_show(v)} is not a date in YYYY-MM-DD form")
        try:
            d = date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            raise _Rejected("invalid_value", f"{_show(v)} is not a real date") from None
        if lo <= d <= hi:
            return d
        raise _Rejected("out_of_range", f"{_show(v)} is outside the {type_name} range {lo} .. {hi}")

    def convert(v: Any) -> date:
        if type(v) is str:
            return parse(v)
        raise _wrong_type("a date string YYYY-MM-DD", v)

    return _Converter(convert, date(1970, 1, 1), dedupe_strings=True)


_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):?([0-9]{2}))?\Z",
    re.ASCII,
)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def _instant_parser(zone: ZoneInfo | None) -> Callable[[str], tuple[int, str]]:
    """A function: timestamp string -> (epoch seconds, fraction digits); naive strings need ``zone``."""
    match, parse_local, epoch, second = _DATETIME.match, datetime.fromisoformat, _EPOCH_NAIVE, timedelta(seconds=1)

    def parse(v: str) -> tuple[int, str]:
        m = match(v)
        if m is None:
            raise _Rejected(
                "invalid_value", f"{_show(v)} is not an ISO-8601 timestamp like 2026-11-26T12:34:56Z"
            )
        try:
            # The regex fixed the shape; the C parser checks the calendar (and refuses second 60).
            local = parse_local(v[:19])
        except ValueError as e:
            raise _Rejected("invalid_value", f"{_show(v)} is not a real date and time ({e})") from None
        seconds = (local - epoch) // second
        last = v[-1]
        if last == "Z" or last == "z":  # the common case needs no more regex groups
            return seconds, m[1]
        sign, oh, om = m.group(3, 4, 5)
        if sign is not None:
            offset = int(oh) * 3600 + int(om) * 60
            if oh > "23" or om > "59":
                raise _Rejected("invalid_value", f"{_show(v)} has an impossible UTC offset")
            seconds = seconds - offset if sign == "+" else seconds + offset
        elif zone is None:
            raise _Rejected(
                "invalid_value",
                f"{_show(v)} has no UTC offset; add 'Z' or '+hh:mm' (naive times are accepted only "
                "when the column declares a time zone, e.g. DateTime('UTC'))",
            )
        else:
            placed = local.replace(tzinfo=zone)
            offset_early = placed.utcoffset()
            if placed.replace(fold=1).utcoffset() != offset_early:
                raise _Rejected(
                    "invalid_value",
                    f"{_show(v)} is ambiguous or does not exist in {zone.key} (DST change); send an explicit offset",
                )
            seconds -= int(offset_early.total_seconds())
        return seconds, m[1]

    return parse


# "YYYY-MM-DDThh:mm:ssZ" is what most producers send: whole columns of it have a fast path.
_MINUTE_OF = itemgetter(slice(0, 17))  # "YYYY-MM-DDThh:mm:"
_SECOND_OF = itemgetter(slice(17, 20))  # "ssZ"
_MINUTES_CACHED = 10_000  # about a week of distinct minutes, ~1.5 MB


def _utc_column(parse: Callable[[str], int], lo: int, hi: int, scale: int) -> Callable[[list], list | None]:
    """A column fast path for timestamps that are all "YYYY-MM-DDThh:mm:ssZ".

    Such a string is valid exactly when its minute ("YYYY-MM-DDThh:mm:") is and its
    seconds are 00..59 (the calendar does not depend on the second), and it stands
    for the minute's instant plus the seconds.  So each minute is parsed once, by the
    strict ``parse`` as "...:00Z", and kept while the whole minute is in range; a row
    then costs two dict lookups and an addition, all in C.  Anything else (offsets,
    fractions, second 60, a minute out of range) returns None: the general path.
    """
    minutes: dict[str, int] = {}
    seconds = {f"{s:02d}Z": s * scale for s in range(60)}
    last_second = 59 * scale

    def learn(minute: str) -> bool:
        try:
            start = parse(minute + "00Z")
        except _Rejected:
            return False
        if not (lo <= start and start + last_second <= hi):
            return False
        minutes[minute] = start
        return True

    def column(values: list) -> list | None:
        if not (set(map(type, values)) <= _STR and set(map(len, values)) == {20}):
            return None
        keys = list(map(_MINUTE_OF, values))
        try:
            starts = list(map(minutes.__getitem__, keys))
        except KeyError:
            if len(minutes) > _MINUTES_CACHED:
                minutes.clear()
            if not all(map(learn, set(keys).difference(minutes))):
                return None
            starts = list(map(minutes.get, keys))
            if None in starts:  # cleared meanwhile by another thread mapping this column
                return None
        try:
            return list(map(add, starts, map(seconds.__getitem__, map(_SECOND_OF, values))))
        except KeyError:  # not "00Z" .. "59Z"
            return None

    return column


def _zone(name: str | None) -> ZoneInfo | None:
    return None if name is None else ZoneInfo(name)


def _datetime_converter(type_name: str, zone_name: str | None, bounds: tuple[int, int], epoch_unit: str) -> _Converter:
    lo, hi = bounds
    zone = _zone(zone_name)
    per_unit = 1000 if epoch_unit == "ms" else 1

    def check(seconds: int, shown: Any) -> int:
        if lo <= seconds <= hi:
            return seconds
        raise _Rejected("out_of_range", f"{_show(shown)} is outside the {type_name} range")

    instant = _instant_parser(zone)

    def parse(v: str) -> int:
        seconds, fraction = instant(v)
        if fraction and fraction.strip("0"):
            raise _Rejected(
                "out_of_range", f"{_show(v)} has sub-second digits {type_name} cannot store; use DateTime64(3)"
            )
        if lo <= seconds <= hi:
            return seconds
        raise _Rejected("out_of_range", f"{_show(v)} is outside the {type_name} range")

    def from_number(v: Any) -> int:
        iv = v
        if type(v) is float:
            if not (v.is_integer() and -_MAX_EXACT_FLOAT_INT < v < _MAX_EXACT_FLOAT_INT):
                raise _Rejected(
                    "out_of_range",
                    f"epoch {_show(v)} has sub-second digits {type_name} cannot store; use DateTime64(3)",
                )
            iv = int(v)
        if per_unit != 1:
            if iv % per_unit:
                raise _Rejected(
                    "out_of_range", f"epoch {_show(v)} ms has milliseconds {type_name} cannot store; use DateTime64(3)"
                )
            iv //= per_unit
        return check(iv, v)

    def convert(v: Any) -> int:
        t = type(v)
        if t is str:
            return parse(v)
        if t is int or t is float:
            return from_number(v)
        raise _wrong_type(f"a timestamp string or epoch {'milliseconds' if per_unit != 1 else 'seconds'}", v)

    return _Converter(convert, 0, dedupe_strings=True, column=_utc_column(parse, lo, hi, 1))


_INT64 = (-(2**63), 2**63 - 1)


def _datetime64_converter(
    type_name: str, precision: int, zone_name: str | None, bounds: tuple[int, int], epoch_unit: str
) -> _Converter:
    scale = 10**precision
    lo = max(bounds[0] * scale, _INT64[0])
    hi = min(bounds[1] * scale + scale - 1, _INT64[1])
    zone = _zone(zone_name)
    unit_digits = 3 if epoch_unit == "ms" else 0

    def check(ticks: int, shown: Any) -> int:
        if lo <= ticks <= hi:
            return ticks
        raise _Rejected("out_of_range", f"{_show(shown)} is outside the {type_name} range")

    def too_precise(shown: Any) -> _Rejected:
        return _Rejected("out_of_range", f"{_show(shown)} has more fraction digits than {type_name} stores")

    instant = _instant_parser(zone)

    def parse(v: str) -> int:
        seconds, fraction = instant(v)
        ticks = seconds * scale
        if fraction:
            kept, dropped = fraction[:precision], fraction[precision:]
            if dropped.strip("0"):
                raise too_precise(v)
            if kept:
                ticks += int(kept) * 10 ** (precision - len(kept))
        if lo <= ticks <= hi:
            return ticks
        raise _Rejected("out_of_range", f"{_show(v)} is outside the {type_name} range")

    def from_number(v: Any) -> int:
        if type(v) is float:
            if v.is_integer() and -_MAX_EXACT_FLOAT_INT < v < _MAX_EXACT_FLOAT_INT:
                v_exact: int | Decimal = int(v)
            else:
                # The shortest repr is the text JSON encoders emit for a double.
                v_exact = Decimal(repr(v))
        else:
            v_exact = v
        shift = precision - unit_digits
        if isinstance(v_exact, int):
            if shift >= 0:
                return check(v_exact * 10**shift, v)
            ticks, rest = divmod(v_exact, 10**-shift)
            if rest:
                raise too_precise(v)
            return check(ticks, v)
        scaled = v_exact.scaleb(shift)
        if scaled != scaled.to_integral_value():
            raise too_precise(v)
        return check(int(scaled), v)

    def convert(v: Any) -> int:
        t = type(v)
        if t is str:
            return parse(v)
        if t is int or t is float:
            return from_number(v)
        raise _wrong_type(f"a timestamp string or epoch {'milliseconds' if unit_digits else 'seconds'}", v)

    return _Converter(convert, 0, dedupe_strings=True, column=_utc_column(parse, lo, hi, scale))


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z", re.ASCII)


def _uuid_converter() -> _Converter:
    match = _UUID.match
    new, store, unknown = object.__new__, object.__setattr__, SafeUUID.unknown
    # UUID.__init__ spends ~1 us juggling arguments; storing the two slots it
    # would store is twice as fast.  Only while UUID keeps that layout.
    direct = getattr(UUID, "__slots__", None) == ("int", "is_safe", "__weakref__")
    if direct:
        # The slots' own setters, callable from map() without a Python frame per row.
        set_int, set_safe = UUID.__dict__["int"].__set__, UUID.__dict__["is_safe"].__set__

    def column(values: list) -> list | None:
        # The whole column as one text of 36-character values, checked and decoded in C.
        # It is exactly what _UUID accepts: dashes at 8, 13, 18 and 23 of each value and
        # nowhere else, and 32 characters fromhex() turns into 16 bytes, which it does only
        # for hex digits (ASCII whitespace, the one other thing it takes, yields no byte).
        n = len(values)
        if not (set(map(type, values)) <= _STR and set(map(len, values)) == {36}):
            return None
        text = "".join(values)
        dashes = "-" * n
        if not (text[8::36] == dashes and text[13::36] == dashes and text[18::36] == dashes and text[23::36] == dashes):
            return None
        digits = text.replace("-", "")
        if len(digits) != 32 * n:
            return None
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            return None
        if len(raw) != 16 * n:
            return None
        halves = struct.unpack(f">{2 * n}Q", raw)
        ints = list(map(or_, map(lshift, halves[0::2], repeat(64)), halves[1::2]))
        if not direct:
            return [UUID(int=i) for i in ints]
        out = list(map(new, repeat(UUID, len(ints))))
        any(map(set_int, out, ints))  # the setters return None: any() just runs them all
        any(map(set_safe, out, repeat(unknown)))
        return out

    def convert(v: Any) -> UUID:
        if type(v) is not str:
            raise _wrong_type("a UUID string", v)
        if match(v) is None:
            raise _Rejected("invalid_value", f"{_show(v)} is not a canonical UUID (8-4-4-4-12 hex digits)")
        value = int(v.replace("-", ""), 16)
        if direct:
            u = new(UUID)
            store(u, "int", value)
            store(u, "is_safe", unknown)
            return u
        return UUID(int=value)

    return _Converter(convert, UUID(int=0), column=column)


_DECIMAL = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?\Z", re.ASCII)


def _decimal_converter(type_name: str, precision: int, scale: int) -> _Converter:
    int_digits = precision - scale
    limit = 10**int_digits

    def convert(v: Any) -> Decimal | int:
        t = type(v)
        if t is str:
            m = _DECIMAL.match(v)
            if m is None:
                raise _Rejected("invalid_value", f"{_show(v)} is not a decimal number like -123.45")
            whole, frac = m[1].lstrip("0"), (m[2] or "").rstrip("0")
            if len(frac) > scale:
                raise _Rejected(
                    "out_of_range", f"{_show(v)} has {len(frac)} fraction digits; {type_name} keeps {scale}"
                )
            if len(whole) > int_digits:
                raise _Rejected(
                    "out_of_range", f"{_show(v)} has {len(whole)} integer digits; {type_name} allows {int_digits}"
                )
            # Exact; surplus zeros are harmless to the driver's int(Decimal(str(x)) * 10**S).
            return Decimal(v)
        if t is int:
            if -limit < v < limit:
                return v
            raise _Rejected("out_of_range", f"{_show(v)} has more than {int_digits} integer digits for {type_name}")
        if t is float:
            raise _Rejected(
                "wrong_type",
                f"JSON float {_show(v)} is not exact; send {type_name} values as strings (\"12.34\") or integers",
            )
        raise _wrong_type("a decimal string or an integer", v)

    return _Converter(convert, Decimal(0))


def _enum_converter(type_name: str, members: Sequence[tuple[str, int]]) -> _Converter:
    names = frozenset(name for name, _ in members)
    name_of = {value: name for name, value in members}

    def invalid(v: Any) -> _Rejected:
        allowed = ", ".join(repr(n) for n, _ in members[:10]) + (", ..." if len(members) > 10 else "")
        return _Rejected("invalid_value", f"{_show(v)} is not a member of {type_name} ({allowed})")

    def convert(v: Any) -> str:
        t = type(v)
        if t is str:
            if v in names:
                return v
            raise invalid(v)
        if t is int:
            name = name_of.get(v)
            if name is not None:
                return name
            raise invalid(v)
        raise _wrong_type("an enum name (string) or value (integer)", v)

    # ClickHouse's default for an Enum is its smallest value.
    zero = min(members, key=lambda m: m[1])[0]
    return _Converter(convert, zero)


def _ipv4_converter() -> _Converter:
    def parse(v: str) -> int:
        # inet_pton takes dotted quads only: no leading zeros, hex, short forms or spaces.
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, v), "big")
        except (OSError, ValueError):
            raise _Rejected("invalid_value", f"{_show(v)} is not an IPv4 address (a.b.c.d)") from None

    def convert(v: Any) -> int:
        if type(v) is str:
            return parse(v)
        raise _wrong_type("an IPv4 address string", v)

    return _Converter(convert, 0, dedupe_strings=True)


def _ipv6_converter() -> _Converter:
    def parse(v: str) -> bytes:
        # inet_pton refuses zone ids ("%eth0", which 16 bytes cannot keep) and bare IPv4.
        try:
            return socket.inet_pton(socket.AF_INET6, v)
        except (OSError, ValueError):
            raise _Rejected("invalid_value", f"{_show(v)} is not an IPv6 address (without zone id)") from None

    def convert(v: Any) -> bytes:
        if type(v) is str:
            return parse(v)
        raise _wrong_type("an IPv6 address string", v)

    return _Converter(convert, b"\x00" * 16, dedupe_strings=True)


def _nullable(inner: _Converter) -> _Converter:
    convert_inner = inner.convert

    def convert(v: Any) -> Any:
        return None if v is None else convert_inner(v)

    # Nulls keep the fast path only where no min/max check is needed (None does not compare).
    fast = None
    if inner.fast is not None and inner.fast[1] is None:
        fast = (inner.fast[0] | {type(None)}, None, None)
    return _Converter(
        convert,
        None,
        nullable=True,
        fast=fast,
        accepts_str_keys=inner.accepts_str_keys,
        dedupe_strings=inner.dedupe_strings,
        # A column without nulls converts exactly as T's; column fast paths decline any
        # column holding a value of a type they do not handle, None included.
        column=inner.column,
    )


def _array(inner: _Converter) -> _Converter:
    convert_item = inner.convert

    def convert(v: Any) -> list:
        if type(v) is not list:
            raise _wrong_type("an array", v)
        try:
            return [convert_item(x) for x in v]
        except _Rejected:
            pass
        for i, x in enumerate(v):  # find the offending element to name its index
            try:
                convert_item(x)
            except _Rejected as e:
                raise e.at(f"[{i}]") from None
        raise AssertionError("unreachable")

    column = _array_column(*inner.fast) if inner.fast is not None else None
    return _Converter(convert, [], accepts_str_keys=False, column=column)


def _array_column(types: frozenset, lo: int | None, hi: int | None) -> Callable[[list], list | None]:
    """Array(T) for a T with a ``fast`` check: all elements of all rows checked at once, in C."""

    def column(values: list) -> list | None:
        if not set(map(type, values)) <= _LIST:
            return None
        items = list(chain.from_iterable(values))
        if set(map(type, items)) <= types and (lo is None or not items or (min(items) >= lo and max(items) <= hi)):
            return values  # the documents' own lists, equal to the copies convert() makes
        return None

    return column


def _map_key_converter(key: _Converter, key_type: ClickHouseType) -> Callable[[str], Any] | None:
    base = key_type.args[0] if key_type.name == "LowCardinality" else key_type
    if base.name in _INT_TYPES:
        convert_int = key.convert

        def convert(k: str) -> Any:
            if not _CANONICAL_INT.match(k):
                raise _Rejected("invalid_value", f"key {_show(k)} is not a canonical decimal integer")
            return convert_int(int(k))

        return convert
    if base.name in ("Float32", "Float64", "Bool", "Nullable") or not key.accepts_str_keys:
        return None
    return key.convert


def _map(key_type: ClickHouseType, key: _Converter, value: _Converter) -> _Converter:
    convert_key = _map_key_converter(key, key_type)
    convert_value = value.convert

    def convert(v: Any) -> dict:
        if type(v) is not dict:
            raise _wrong_type("an object", v)
        out = {}
        for k, x in v.items():
            try:
                out[convert_key(k)] = convert_value(x)
            except _Rejected as e:
                raise e.at(f"[{_show(k)}]") from None
        if len(out) != len(v):
            raise _Rejected("invalid_value", f"object {_show(v)} has keys that are equal as {key_type.name}")
        return out

    return _Converter(convert, {}, accepts_str_keys=False)


def _tuple(elements: Sequence[tuple[str | None, _Converter]]) -> _Converter:
    converters = [c.convert for _, c in elements]
    names = [n for n, _ in elements]
    named = all(names)
    size = len(elements)

    def convert(v: Any) -> tuple:
        if type(v) is dict and named:
            if len(v) != size or any(n not in v for n in names):
                raise _Rejected("invalid_value", f"object {_show(v)} must have exactly the keys {names}")
            v = [v[n] for n in names]
        elif type(v) is not list:
            raise _wrong_type("an array" + (" or object" if named else ""), v)
        if len(v) != size:
            raise _Rejected("invalid_value", f"{_show(v)} has {len(v)} elements; the tuple has {size}")
        out = []
        for i, (c, x) in enumerate(zip(converters, v)):
            try:
                out.append(c(x))
            except _Rejected as e:
                raise e.at(f".{names[i]}" if named else f"[{i}]") from None
        return tuple(out)

    return _Converter(convert, tuple(c.zero for _, c in elements), accepts_str_keys=False)


_INT_TYPES = {
    f"{'U' if unsigned else ''}Int{bits}": (bits, not unsigned)
    for bits in (8, 16, 32, 64, 128, 256)
    for unsigned in (False, True)
}
_DECIMAL_SIZES = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


class _Builder:
    """Builds a converter for one column, collecting every problem instead of stopping at the first."""

    def __init__(self, features: ServerFeatures, epoch_unit: str):
        self.features = features
        self.epoch_unit = epoch_unit
        self.problems: list[str] = []

    def need(self, feature: str) -> None:
        since = self.features.type_needs(feature)
        if since is not None:
            self.problems.append(
                f"needs ClickHouse >= {_version_text(since)} (for {feature}); server is {self.features.version_text}"
            )

    def unsupported(self, t: ClickHouseType, why: str = "is not supported") -> _Converter:
        self.problems.append(f"{t.name} {why}")
        return _Converter(_string, "")

    def build(self, t: ClickHouseType) -> _Converter:
        name, args = t.name, t.args
        if name in _INT_TYPES:
            bits, signed = _INT_TYPES[name]
            self.need(name)
            return self.plain(t, _int_converter(name, bits, signed))
        if name in ("Float32", "Float64"):
            return self.plain(t, _float_converter(name))
        if name == "Bool":
            self.need(name)
            return self.plain(t, _Converter(_bool, False, fast=(frozenset({bool}), None, None), accepts_str_keys=False))
        if name == "String":
            return self.plain(t, _Converter(_string, "", fast=(frozenset({str}), None, None)))
        if name == "FixedString":
            if len(args) != 1 or not isinstance(args[0], int) or args[0] < 1:
                return self.unsupported(t, "needs one positive length")
            return _fixed_string_converter(args[0])
        if name in ("Date", "Date32"):
            self.need(name)
            bounds = self.features.date_range if name == "Date" else self.features.date32_range
            return self.plain(t, _date_converter(name, bounds))
        if name == "DateTime":
            if args and not (len(args) == 1 and isinstance(args[0], str)):
                return self.unsupported(t, "takes only a time zone name")
            zone = self.zone(args[0] if args else None)
            return _datetime_converter(name, zone, self.features.datetime_range, self.epoch_unit)
        if name == "DateTime64":
            self.need(name)
            if not (1 <= len(args) <= 2 and isinstance(args[0], int) and 0 <= args[0] <= 9) or (
                len(args) == 2 and not isinstance(args[1], str)
            ):
                return self.unsupported(t, "needs a precision 0..9 and an optional time zone")
            zone = self.zone(args[1] if len(args) == 2 else None)
            type_name = f"DateTime64({args[0]})"
            return _datetime64_converter(type_name, args[0], zone, self.features.datetime64_range, self.epoch_unit)
        if name == "UUID":
            return _uuid_converter()
        if name == "Decimal" or name in _DECIMAL_SIZES:
            if name == "Decimal" and len(args) == 2 and all(isinstance(a, int) for a in args):
                precision, scale = args
            elif name in _DECIMAL_SIZES and len(args) == 1 and isinstance(args[0], int):
                precision, scale = _DECIMAL_SIZES[name], args[0]
            else:
                return self.unsupported(t, "needs (precision, scale)")
            if not (1 <= precision <= 76 and 0 <= scale <= precision):
                return self.unsupported(t, f"has an impossible precision/scale ({precision}, {scale})")
            if precision > 38:
                self.need("Decimal256")
            return _decimal_converter(f"Decimal({precision}, {scale})", precision, scale)
        if name in ("Enum8", "Enum16"):
            if not args or not all(isinstance(a, tuple) and isinstance(a[1], int) for a in args):
                return self.unsupported(t, "needs 'name' = value members")
            return _enum_converter(name, args)
        if name in ("IPv4", "IPv6"):
            self.need(name)
            return _ipv4_converter() if name == "IPv4" else _ipv6_converter()
        if name == "Nullable":
            if len(args) != 1 or not isinstance(args[0], ClickHouseType):
                return self.unsupported(t, "needs one type")
            return _nullable(self.build(args[0]))
        if name == "LowCardinality":
            self.need(name)
            if len(args) != 1 or not isinstance(args[0], ClickHouseType):
                return self.unsupported(t, "needs one type")
            return self.build(args[0])
        if name == "Array":
            if len(args) != 1 or not isinstance(args[0], ClickHouseType):
                return self.unsupported(t, "needs one type")
            return _array(self.build(args[0]))
        if name == "Map":
            self.need(name)
            if len(args) != 2 or not all(isinstance(a, ClickHouseType) for a in args):
                return self.unsupported(t, "needs a key and a value type")
            key = self.build(args[0])
            if _map_key_converter(key, args[0]) is None:
                return self.unsupported(t, f"keys of type {args[0].name} cannot come from JSON object keys")
            return _map(args[0], key, self.build(args[1]))
        if name == "Tuple":
            if not args:
                return self.unsupported(t, "needs element types")
            elements = []
            for a in args:
                if isinstance(a, ClickHouseType):
                    elements.append((None, self.build(a)))
                elif isinstance(a, tuple) and isinstance(a[1], ClickHouseType):
                    elements.append((a[0], self.build(a[1])))
                else:
                    return self.unsupported(t, "has an element that is not a type")
            return _tuple(elements)
        return self.unsupported(t)

    def plain(self, t: ClickHouseType, conv: _Converter) -> _Converter:
        if t.args:
            self.problems.append(f"{t.name} takes no arguments")
        return conv

    def zone(self, name: str | None) -> str | None:
        if name is None:
            return None
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problems.append(f"time zone {name!r} is unknown to this host (install tzdata?)")
            return None
        return name


def build_converter(type_text: str, features: ServerFeatures, epoch_unit: str = "s") -> Callable[[Any], Any]:
    """A strict JSON-value -> driver-value function for one ClickHouse type.

    Raises SchemaError if the type is unsupported (by us or by the server); the
    returned function raises MappingError(reason, detail) for values it refuses.
    """
    converter = _compile_type(type_text, features, epoch_unit, where=f"type {type_text}")
    inner = converter.convert

    def convert(value: Any) -> Any:
        try:
            return inner(value)
        except _Rejected as e:
            raise MappingError(e.reason, f"value{e.where}: {e.message}") from None

    return convert


def _compile_type(type_text: str, features: ServerFeatures, epoch_unit: str, where: str) -> _Converter:
    try:
        node = parse_type(type_text)
    except ValueError as e:
        raise SchemaError(f"{where}: cannot parse type {type_text!r}: {e}") from None
    builder = _Builder(features, epoch_unit)
    converter = builder.build(node)
    if builder.problems:
        unique = list(dict.fromkeys(builder.problems))
        # Version problems read as a sentence ("type IPv4 needs ..."), the rest after a colon.
        raise SchemaError([f"{where}: type {type_text}{' ' if p.startswith('needs') else ': '}{p}" for p in unique])
    return converter


# --------------------------------------------------------------------------- table mapping

@dataclass(frozen=True)
class TableColumn:
    """One row of ``system.columns`` for the target table."""

    name: str
    type: str
    default_kind: str = ""
    default_expression: str = ""


_MISSING = object()
_STR_OR_NULL = frozenset({str, type(None)})
_DICT = frozenset({dict})


@dataclass(frozen=True)
class _Plan:
    """How one inserted column is filled from a document."""

    name: str
    path: tuple[str, ...]
    convert: Callable[[Any], Any]
    fast: tuple | None
    column: Callable[[list], list | None] | None
    dedupe_strings: bool
    missing_value: Any
    missing_error: tuple[str, str] | None  # (reason, detail) when an absent field is an error


def _walker(path: tuple[str, ...]) -> Callable[[Any], Any]:
    def walk(doc: Any) -> Any:
        for k in path:
            if type(doc) is not dict:
                return _MISSING
            doc = doc.get(k, _MISSING)
            if doc is _MISSING:
                return _MISSING
        return doc

    return walk


class ColumnMapper:
    """Maps parsed JSON documents to the columnar lists of one table's insertable columns."""

    def __init__(self, table: str, plans: Sequence[_Plan], server_filled: Sequence[tuple[str, str]]):
        self.table = table
        self._plans = tuple(plans)
        # Columns left to the server's DEFAULT; a document carrying one is refused.
        self._server_filled = tuple(server_filled)
        self.column_names: tuple[str, ...] = tuple(p.name for p in self._plans)
        # The top-level keys the columns read, fetched together in one pass over the
        # documents (one itemgetter call per document, not one dict.get per column).
        self._top_keys = tuple(dict.fromkeys(p.path[0] for p in self._plans))
        self._get_top = itemgetter(*self._top_keys) if len(self._top_keys) > 1 else None

    def __repr__(self) -> str:
        return f"ColumnMapper({self.table!r}, columns={list(self.column_names)})"

    def map_rows(self, docs: Sequence[Any]) -> tuple[list[list], list[tuple[int, MappingError]]]:
        """Columns (one list per ``column_names`` entry, good docs in order) and (doc index, error) failures."""
        docs = docs if isinstance(docs, list) else list(docs)
        failures: list[tuple[int, MappingError]] = []
        if set(map(type, docs)) <= {dict}:
            objs, origin = docs, None
        else:
            objs, origin = [], []
            for i, d in enumerate(docs):
                if isinstance(d, dict):
                    objs.append(d)
                    origin.append(i)
                else:
                    failures.append(
                        (i, MappingError("wrong_type", f"message is a JSON {_json_kind(d)}, expected an object"))
                    )
        n = len(objs)
        if n == 0:
            return [[] for _ in self._plans], failures

        bad: dict[int, MappingError] = {}  # position in objs -> first error, in column order
        for name, expression in self._server_filled:
            if any(map(dict.__contains__, objs, repeat(name))):
                for i, d in enumerate(objs):
                    if name in d and i not in bad:
                        bad[i] = MappingError(
                            "invalid_value",
                            f"column {name}: the field is sent but the column is filled by the server "
                            f"(DEFAULT {expression}); add a columns override for {name} to insert it",
                        )
        # Only exact dicts (all of orjson's) go through itemgetter: it would honour a
        # subclass's __getitem__ (a defaultdict's, say), which dict.get never calls.
        top = self._top_fields(objs) if origin is None else None
        columns = [self._column(plan, self._values(plan, objs, top), bad) for plan in self._plans]

        if bad:
            keep = [i not in bad for i in range(n)]
            columns = [list(compress(col, keep)) for col in columns]
            for i, err in bad.items():
                failures.append((i if origin is None else origin[i], err))
            failures.sort(key=lambda f: f[0])
        return columns, failures

    def _top_fields(self, objs: list) -> dict[str, tuple] | None:
        """Every top-level key's values, if every document has every key (else None)."""
        if self._get_top is None:
            return None
        try:
            return dict(zip(self._top_keys, zip(*map(self._get_top, objs))))
        except KeyError:
            return None

    @staticmethod
    def _values(plan: _Plan, objs: list, top: dict[str, tuple] | None) -> list:
        """The field of every document, _MISSING where absent."""
        if top is not None:
            values = list(top[plan.path[0]])
        else:
            values = list(map(dict.get, objs, repeat(plan.path[0]), repeat(_MISSING)))
        # A dotted path level by level, in C, while every level is an object.
        for k in plan.path[1:]:
            if not set(map(type, values)) <= _DICT:
                return list(map(_walker(plan.path), objs))
            values = list(map(dict.get, values, repeat(k), repeat(_MISSING)))
        return values

    @staticmethod
    def _column(plan: _Plan, values: list, bad: dict[int, MappingError]) -> list:
        convert = plan.convert
        fast = plan.fast
        if fast is not None:
            # Whole-column validation in C: allowed exact types and (for numbers) min/max in range.
            if set(map(type, values)) <= fast[0] and (
                fast[1] is None or (min(values) >= fast[1] and max(values) <= fast[2])
            ):
                return values
        elif plan.column is not None:
            done = plan.column(values)
            if done is not None:
                return done
        if fast is None and plan.dedupe_strings and set(map(type, values)) <= _STR_OR_NULL:
            # Only str/None: equal keys are equal values (unlike 1 == 1.0 == True).
            distinct = set(values)
            if len(distinct) * 2 <= len(values):  # else the lookup table costs more than it saves
                try:
                    converted = {v: convert(v) for v in distinct}
                    return list(map(converted.__getitem__, values))
                except _Rejected:
                    pass
        try:
            return list(map(convert, values))
        except _Rejected:
            pass  # a missing field or a bad value: redo this column value by value

        out = values
        for i, v in enumerate(values):
            if v is _MISSING:
                if plan.missing_error is None:
                    out[i] = plan.missing_value
                    continue
                if i not in bad:
                    bad[i] = MappingError(*plan.missing_error)
                out[i] = None
                continue
            try:
                out[i] = convert(v)
            except _Rejected as e:
                if i not in bad:
                    bad[i] = MappingError(e.reason, f"column {plan.name}{e.where}: {e.message}")
                out[i] = None
        return out


_INSERTABLE_KINDS = ("", "DEFAULT", "EPHEMERAL")
_COMPUTED_KINDS = ("MATERIALIZED", "ALIAS")


def compile_mapper(
    table: str,
    columns: Sequence[TableColumn],
    overrides: Sequence["ColumnOverride"],
    features: ServerFeatures,
    constant_defaults: Mapping[str, Any] = MappingProxyType({}),
) -> ColumnMapper:
    """Compile the strict mapping of JSON documents onto ``table`` (raises SchemaError listing every problem).

    ``columns`` are the table's ``system.columns`` rows in table order;
    ``overrides`` are duck-typed ColumnOverride objects (column, path, required,
    has_default, default, epoch_unit); ``constant_defaults`` maps columns whose
    DEFAULT is a constant to its value as clickhouse-driver returns it.
    """
    problems: list[str] = []
    by_name = {c.name: c for c in columns}
    override_of: dict[str, Any] = {}
    for o in overrides:
        name = getattr(o, "column")
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            available = ", ".join(by_name) or "(none)"
            problems.append(f"table {table}: override names unknown column {name!r}{hint} (columns: {available})")
        elif name in override_of:
            problems.append(f"table {table} column {name}: more than one override")
        elif by_name[name].default_kind in _COMPUTED_KINDS:
            problems.append(
                f"table {table} column {name}: is {by_name[name].default_kind} (computed by the server) "
                "and cannot be given an override"
            )
        else:
            override_of[name] = o

    plans: list[_Plan] = []
    server_filled: list[tuple[str, str]] = []
    for col in columns:
        where = f"table {table} column {col.name}"
        kind = col.default_kind or ""
        if kind in _COMPUTED_KINDS:
            continue
        if kind not in _INSERTABLE_KINDS:
            problems.append(f"{where}: unknown default kind {kind!r}")
            continue
        o = override_of.get(col.name)
        server_default = kind in ("DEFAULT", "EPHEMERAL") and bool(col.default_expression) and (
            col.name not in constant_defaults
        )
        if server_default and o is None:
            server_filled.append((col.name, col.default_expression))
            continue

        epoch_unit = getattr(o, "epoch_unit", "s") if o is not None else "s"
        if epoch_unit not in ("s", "ms"):
            problems.append(f"{where}: epoch_unit must be 's' or 'ms', got {epoch_unit!r}")
            epoch_unit = "s"
        try:
            conv = _compile_type(col.type, features, epoch_unit, where)
        except SchemaError as e:
            problems.extend(e.problems)
            continue

        path = tuple(getattr(o, "path", None) or ()) if o is not None else ()
        if not path:
            path = (col.name,)
        missing_value: Any = None
        missing_error: tuple[str, str] | None = None
        shown_path = ".".join(path)
        if o is not None and getattr(o, "required", False):
            missing_error = ("missing_required", f"column {col.name}: required field {shown_path!r} is missing")
        elif o is not None and getattr(o, "has_default", False):
            try:
                missing_value = conv.convert(getattr(o, "default", None))
            except _Rejected as e:
                problems.append(f"{where}: default {_show(getattr(o, 'default', None))}{e.where}: {e.message}")
        elif kind in ("DEFAULT", "EPHEMERAL") and col.name in constant_defaults:
            missing_value = constant_defaults[col.name]
        elif server_default:
            missing_error = (
                "missing_required",
                f"column {col.name}: field {shown_path!r} is missing and the server DEFAULT "
                f"{col.default_expression} cannot be applied per row; send it or give the override a default",
            )
        else:
            missing_value = conv.zero  # None for Nullable columns

        plans.append(
            _Plan(
                name=col.name,
                path=path,
                convert=conv.convert,
                fast=conv.fast,
                column=conv.column,
                dedupe_strings=conv.dedupe_strings,
                missing_value=missing_value,
                missing_error=missing_error,
            )
        )

    if not plans and not problems:
        problems.append(f"table {table}: has no column that can be inserted")
    if problems:
        raise SchemaError(problems)
    return ColumnMapper(table, plans, server_filled)
