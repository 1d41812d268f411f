"""Variant(T1, ...): the variant a JSON value becomes, by ClickHouse's own rule, or a refusal.

ClickHouse's JSON parser tries a Variant's types one after another in a fixed order
(``SerializationVariant::getVariantsDeserializeTextOrder``: deeper containers first,
then by type, Array > Tuple > Map > Enum > UUID > IPv4 > IPv6 > Bool > Int8 > UInt8 >
Int16 ... > UInt256 > Decimal > Float32 > Float64 > Date > Date32 > DateTime >
DateTime64 > FixedString > String, anything else last) and stores the value in the
first one whose parser takes the whole of it.  jetsink walks the same order
(:func:`text_order`) and asks each variant, for the value's JSON kind, one question
(:func:`_claim`); the answer is one of three:

- it *takes* the value: jetsink converts it exactly as for a plain column of that type,
  and ClickHouse's parser takes the same value (an integer in range for an integer
  type, ``"2024-01-05"`` for Date, a canonical UUID for UUID, a string for String ...);
- it *passes*: ClickHouse's parser would not take it either (a string without digits
  for a number, ``300`` for Int8, ``1.5`` for an integer, an object for an Array), and
  the next variant is asked;
- it is *unsure*: ClickHouse's lenient text parsers might take it where jetsink does
  not decide how (``""`` is 0 for Int8, ``1`` is 1970-01-02 for Date, ``true`` is 1
  for an integer, ``1.5`` is the text "1.5" for String, ``"2024-02-30"`` is
  2024-03-01): the message is refused (``invalid_value``) rather than guessed.

The first variant that takes the value wins; ``null`` is NULL; a value every variant
passes is ``wrong_type``.  The converter emits ``(discriminator, value)``: the
variant's position in the type as the server prints it (it sorts them by name, the
discriminators' order) and the driver value of that variant
(workers/clickhouse/native_variant.py writes the column).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import orjson

from workers.clickhouse.schema.containers import map_key_converter
from workers.clickhouse.schema.converter import CANONICAL_INT, Converter
from workers.clickhouse.schema.errors import Rejected, json_kind, show
from workers.clickhouse.schema.numeric import DECIMAL_SIZES, INT_TYPES
from workers.clickhouse.schema.parser import ClickHouseType, Setting, type_text

# ``b`` below is builder.Builder (which imports this module): its features, zones, problems and build().
Builder = Any

class Pass(Exception):
    """The variant does not take the value, and ClickHouse's parser would not either."""


_PASS = Pass()


def unsure(variant: str, v: Any, why: str) -> Rejected:
    return Rejected("invalid_value", f"{variant} may take {show(v)} ({why})")


# ClickHouse's order (SerializationVariant.cpp, getTypesTextDeserializePriorityMap): first is highest.
_ORDER = (
    "Array", "Tuple", "Map", "AggregateFunction", "Enum8", "Enum16", "UUID", "IPv4", "IPv6",
    "Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
    "Int128", "UInt128", "Int256", "UInt256", "Decimal32", "Decimal64", "Decimal128", "Decimal256",
    "Float32", "Float64", "Date", "Date32", "DateTime", "DateTime64", "FixedString", "String",
)
_PRIORITY = {name: len(_ORDER) - i for i, name in enumerate(_ORDER)}


def _decimal_index(t: ClickHouseType) -> str:
    """Decimal(P, S)'s type index, by precision (as DataTypeFactory makes it)."""
    if t.name != "Decimal":
        return t.name
    precision = t.args[0] if t.args and isinstance(t.args[0], int) else 76
    for name, most in DECIMAL_SIZES.items():
        if precision <= most:
            return name
    return "Decimal256"


def _priority(t: ClickHouseType, depth: int = 0, wrappers: int = 0) -> tuple[int, int, int]:
    """getTypeTextDeserializePriority: (container depth, type priority, Nullable/LowCardinality depth)."""
    name = t.name
    if name in ("Nullable", "LowCardinality"):
        return _priority(t.args[0], depth, wrappers + 1)
    if name == "Array":
        d, p, w = _priority(t.args[0], depth + 1, wrappers)
        return d, p + _PRIORITY["Array"], w
    if name in ("Tuple", "Map"):
        parts = [_priority(a[1] if isinstance(a, tuple) else a, depth + 1, wrappers) for a in t.args]
        return (max(p[0] for p in parts), sum(p[1] for p in parts) + _PRIORITY[name], max(p[2] for p in parts))
    if name == "Bool":
        return depth, _PRIORITY["Int8"] + 1, wrappers
    return depth, _PRIORITY.get(_decimal_index(t), 0), wrappers


def text_order(variants: Sequence[ClickHouseType]) -> list[list[int]]:
    """The variants' positions in the order ClickHouse's parser tries them, grouped where it ties.

    ClickHouse sorts with std::sort, which leaves the order of equal priorities unspecified:
    variants in one group are all asked, and more than one taking a value is a refusal.
    """
    prios = [_priority(t) for t in variants]
    groups: list[list[int]] = []
    for i in sorted(range(len(variants)), key=lambda i: prios[i], reverse=True):
        if groups and prios[groups[-1][0]] == prios[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


_Claim = Callable[[Any], Any]  # JSON value -> driver value; raises Pass, or Rejected when unsure

_DIGIT = re.compile(r"\d", re.ASCII)
_INTEGER_TEXT = re.compile(r"[+-]?\d*\Z", re.ASCII)  # what readIntText may take whole, "" included
_FLOAT_TEXT = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z", re.ASCII)
_FLOAT_WORDS = frozenset({"inf", "infinity", "nan", "true", "false"})
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}\Z", re.ASCII)
_DATETIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z", re.ASCII)
_DATETIME64_TEXT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,9})?\Z", re.ASCII)
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z", re.ASCII)
_UUID_LIKE = re.compile(r"[0-9a-fA-F{}-]{32,}\Z", re.ASCII)
_DOTTED = re.compile(r"[\d.]+\Z", re.ASCII)
_IPV4_TEXT = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\Z", re.ASCII)


def _from(convert: Callable[[Any], Any], variant: str, v: Any) -> Any:
    """convert(v), where ClickHouse's parser takes v too: a refusal means it would store something else."""
    try:
        return convert(v)
    except Rejected as e:
        raise unsure(variant, v, f"ClickHouse would read it differently ({e.message})") from None


def _integer(variant: str, convert: Callable[[Any], Any]) -> _Claim:
    def claim(v: Any) -> Any:
        t = type(v)
        if t is int:
            try:
                return convert(v)
            except Rejected:
                raise _PASS from None  # out of range: the next, wider integer is tried
        if t is str:
            if CANONICAL_INT.match(v):
                try:
                    return convert(v)
                except Rejected:
                    raise _PASS from None
            if _INTEGER_TEXT.match(v) or v in ("true", "false"):
                raise unsure(variant, v, "ClickHouse reads this text as an integer")
            raise _PASS
        if t is bool:
            raise unsure(variant, v, "ClickHouse reads a boolean as 1 or 0")
        raise _PASS  # floats (1.5, 3.0, 1e2), arrays, objects

    return claim


def _float(variant: str, convert: Callable[[Any], Any]) -> _Claim:
    def claim(v: Any) -> Any:
        t = type(v)
        if t is int or t is float:
            return _from(convert, variant, v)
        if t is str:
            if _FLOAT_TEXT.match(v):
                return _from(convert, variant, v)
            if _DIGIT.search(v) or v.lstrip("+-").lower() in _FLOAT_WORDS:
                raise unsure(variant, v, "ClickHouse reads this text as a number")
            raise _PASS
        if t is bool:
            raise unsure(variant, v, "ClickHouse reads a boolean as 1 or 0")
        raise _PASS

    return claim


def _decimal(variant: str, convert: Callable[[Any], Any]) -> _Claim:
    def claim(v: Any) -> Any:
        t = type(v)
        if t is int or t is float:
            return _from(convert, variant, v)
        raise _PASS  # strings and booleans: its JSON parser takes numbers only

    return claim


def _bool(v: Any) -> Any:
    if type(v) is bool:
        return v
    raise _PASS


def _string(variant: str, objects_as_strings: bool) -> _Claim:
    def claim(v: Any) -> Any:
        t = type(v)
        if t is str:
            return v
        if (t is dict or t is list) and objects_as_strings:
            return orjson.dumps(v).decode()
        raise unsure(variant, v, f"ClickHouse stores the JSON {json_kind(v)}'s text")

    return claim


def _fixed_string(convert: Callable[[Any], Any]) -> _Claim:
    def claim(v: Any) -> Any:
        if type(v) is not str:
            raise _PASS
        try:
            return convert(v)
        except Rejected:
            raise _PASS from None  # longer than N bytes

    return claim


def _text_shaped(variant: str, convert: Callable[[Any], Any], exact: re.Pattern, maybe: Callable[[str], bool],
                 numbers: str = "pass") -> _Claim:
    """A type read from strings: ``exact`` ones are converted, other ``maybe`` ones are unsure."""

    def claim(v: Any) -> Any:
        t = type(v)
        if t is str:
            if exact.match(v):
                return _from(convert, variant, v)
            if maybe(v):
                raise unsure(variant, v, "ClickHouse's parser may read this text")
            raise _PASS
        if numbers == "unsure" and (t is int or t is bool):
            raise unsure(variant, v, "ClickHouse reads a number as a day or second count")
        if numbers == "unsure" and t is float and variant.startswith("DateTime"):
            raise unsure(variant, v, "ClickHouse reads a number as seconds")
        raise _PASS

    return claim


def _enum(variant: str, convert: Callable[[Any], Any]) -> _Claim:
    def claim(v: Any) -> Any:
        t = type(v)
        if t is str or t is int:
            try:
                return convert(v)
            except Rejected:
                if t is str and _INTEGER_TEXT.match(v):
                    raise unsure(variant, v, "ClickHouse reads this text as an enum value") from None
                raise _PASS from None
        raise _PASS

    return claim


def _elements(claims: Sequence[_Claim], values: Sequence[Any]) -> list:
    """Each value by its claim: any pass passes the whole (ClickHouse's parse of it fails), else any unsure."""
    out, doubt = [], None
    for claim, x in zip(claims, values, strict=True):
        try:
            out.append(claim(x))
        except Pass:
            raise
        except Rejected as e:
            doubt = doubt or e
            out.append(None)
    if doubt is not None:
        raise doubt
    return out


def _array(element: _Claim) -> _Claim:
    def claim(v: Any) -> Any:
        if type(v) is not list:
            raise _PASS
        return _elements([element] * len(v), v)

    return claim


def _tuple(variant: str, names: list[str | None], elements: list[_Claim]) -> _Claim:
    named = all(names)

    def claim(v: Any) -> Any:
        t = type(v)
        if named:
            if t is dict:
                if len(v) != len(names) or any(n not in v for n in names):
                    raise unsure(variant, v, "ClickHouse fills missing keys with defaults and drops others")
                return tuple(_elements(elements, [v[n] for n in names]))
            raise _PASS  # a named tuple is read from an object only
        if t is list and len(v) == len(elements):
            return tuple(_elements(elements, v))
        raise _PASS  # other lengths; objects are read into named tuples only

    return claim


def _map(variant: str, key: Callable[[str], Any] | None, value: _Claim) -> _Claim:
    def claim(v: Any) -> Any:
        if type(v) is not dict:
            raise _PASS
        if key is None:
            raise unsure(variant, v, "ClickHouse reads the keys as text")
        try:
            keys = [key(k) for k in v]
        except Rejected as e:
            raise unsure(variant, v, f"ClickHouse would read a key differently ({e.message})") from None
        values = _elements([value] * len(v), list(v.values()))
        out = dict(zip(keys, values, strict=True))
        if len(out) != len(v):
            raise unsure(variant, v, "keys that are equal as the key type")
        return out

    return claim


def _json(variant: str, t: ClickHouseType) -> _Claim:
    typed = any(not isinstance(a, Setting) for a in t.args)

    def claim(v: Any) -> Any:
        if type(v) is not dict:
            raise _PASS
        if typed:
            raise unsure(variant, v, "its typed paths and SKIPs are the server's to apply")
        return orjson.dumps(v)

    return claim


def _nullable_element(inner: _Claim) -> _Claim:
    def claim(v: Any) -> Any:
        return None if v is None else inner(v)

    return claim


def _not_null(variant: str, inner: _Claim) -> _Claim:
    def claim(v: Any) -> Any:
        if v is None:
            raise unsure(variant, v, "ClickHouse stores the type's default for a null")
        return inner(v)

    return claim


def claim_of(b: Builder, t: ClickHouseType) -> _Claim | None:
    """How a variant (or an element inside one) of type ``t`` answers; None, and a problem, without a rule."""
    name, text = t.name, type_text(t)
    if name == "Nullable":
        inner = claim_of(b, t.args[0])
        return None if inner is None else _nullable_element(inner)
    if name == "LowCardinality":
        return claim_of(b, t.args[0])
    claim = _claim(b, t, name, text)
    return None if claim is None else _not_null(text, claim)


def _claim(b: Builder, t: ClickHouseType, name: str, text: str) -> _Claim | None:
    if name in ("Array", "Tuple", "Map"):
        return _container(b, t, name, text)
    if name == "JSON":
        return _json(text, t)
    if name == "Bool":
        return _bool
    if name == "String":
        return _string(text, b.objects_as_strings)
    family = _FAMILIES.get(_decimal_index(t))
    if family is None:
        b.problems.append(f"{text} inside a Variant or Dynamic has no rule in jetsink")
        return None
    return family(text, b.build(t).convert)


def _container(b: Builder, t: ClickHouseType, name: str, text: str) -> _Claim | None:
    b.build(t)  # its own problems (arguments, versions)
    if name == "Array":
        element = claim_of(b, t.args[0])
        return None if element is None else _array(element)
    if name == "Tuple":
        names = [a[0] if isinstance(a, tuple) else None for a in t.args]
        elements = [claim_of(b, a[1] if isinstance(a, tuple) else a) for a in t.args]
        return None if None in elements else _tuple(text, names, elements)  # type: ignore[arg-type]
    key_type, value_type = t.args
    value = claim_of(b, value_type)
    return None if value is None else _map(text, map_key_converter(b.build(key_type), key_type), value)


def _has_digit(v: str) -> bool:
    return _DIGIT.search(v) is not None


_FAMILIES: dict[str, Callable[[str, Callable[[Any], Any]], _Claim]] = {
    **{n: _integer for n in INT_TYPES},
    **{n: _decimal for n in DECIMAL_SIZES},
    "Float32": _float,
    "Float64": _float,
    "FixedString": lambda text, convert: _fixed_string(convert),
    "Enum8": _enum,
    "Enum16": _enum,
    "Date": lambda text, convert: _text_shaped(text, convert, _DATE_TEXT, _has_digit, numbers="unsure"),
    "Date32": lambda text, convert: _text_shaped(text, convert, _DATE_TEXT, _has_digit, numbers="unsure"),
    "DateTime": lambda text, convert: _text_shaped(text, convert, _DATETIME_TEXT, _has_digit, numbers="unsure"),
    "DateTime64": lambda text, convert: _text_shaped(text, convert, _DATETIME64_TEXT, _has_digit, numbers="unsure"),
    "UUID": lambda text, convert: _text_shaped(text, convert, _UUID_TEXT, _UUID_LIKE.match),
    "IPv4": lambda text, convert: _text_shaped(text, convert, _IPV4_TEXT, _DOTTED.match),
    "IPv6": lambda text, convert: _text_shaped(
        text, convert, re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\Z"), lambda s: bool(_DOTTED.match(s)) or ":" in s
    ),
}


def variant_converter(b: Builder, t: ClickHouseType) -> Converter:
    """Variant(T1, ...): ``(discriminator, value)`` by ClickHouse's order, None for null (see the module's rule)."""
    variants = list(t.args)
    if not variants or not all(isinstance(a, ClickHouseType) for a in variants):
        return b.unsupported(t, "needs types")
    if len(variants) > 255:
        return b.unsupported(t, "has more than 255 variants")
    claims = [claim_of(b, a) for a in variants]
    if None in claims:
        return b.unsupported(t, "has a variant jetsink cannot convert to")
    names = [type_text(a) for a in variants]
    order = [[(i, claims[i]) for i in group] for group in text_order(variants)]
    shown = type_text(t)

    def convert(v: Any) -> Any:
        if v is None:
            return None
        for group in order:
            taken = []
            for i, claim in group:
                try:
                    taken.append((i, claim(v)))
                except Pass:
                    pass
                except Rejected as e:
                    raise Rejected(e.reason, f"{shown}: {e.message}; jetsink refuses what it cannot decide",
                                   e.where) from None
            if len(taken) == 1:
                return taken[0]
            if taken:  # variants ClickHouse's sort leaves in no particular order
                tied = ", ".join(names[i] for i, _ in taken)
                raise Rejected("invalid_value", f"{shown}: {tied} tie in ClickHouse's order and each takes {show(v)}")
        raise Rejected("wrong_type", f"no variant of {shown} holds the JSON {json_kind(v)} {show(v)}")

    return Converter(convert, None, nullable=True, accepts_str_keys=False)
