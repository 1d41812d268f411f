"""Types that wrap others: Nullable(T), Array(T), Map(K, V), Tuple(...)."""

from __future__ import annotations

from itertools import chain
from typing import Any, Callable, Sequence

from workers.clickhouse.schema.converter import CANONICAL_INT, Converter
from workers.clickhouse.schema.errors import Rejected, show, wrong_type
from workers.clickhouse.schema.numeric import INT_TYPES
from workers.clickhouse.schema.parser import ClickHouseType

_LIST = frozenset({list})


def nullable_converter(inner: Converter) -> Converter:
    convert_inner = inner.convert

    def convert(v: Any) -> Any:
        return None if v is None else convert_inner(v)

    # Nulls keep the fast path only where no min/max check is needed (None does not compare).
    fast = None
    if inner.fast is not None and inner.fast[1] is None:
        fast = (inner.fast[0] | {type(None)}, None, None)
    return Converter(
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


def array_converter(inner: Converter) -> Converter:
    convert_item = inner.convert

    def convert(v: Any) -> list:
        if type(v) is not list:
            raise wrong_type("an array", v)
        try:
            return [convert_item(x) for x in v]
        except Rejected:
            pass
        for i, x in enumerate(v):  # find the offending element to name its index
            try:
                convert_item(x)
            except Rejected as e:
                raise e.at(f"[{i}]") from None
        raise AssertionError("unreachable")

    column = _array_column(*inner.fast) if inner.fast is not None else None
    return Converter(convert, [], accepts_str_keys=False, column=column)


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


def map_key_converter(key: Converter, key_type: ClickHouseType) -> Callable[[str], Any] | None:
    base = key_type.args[0] if key_type.name == "LowCardinality" else key_type
    if base.name in INT_TYPES:
        convert_int = key.convert

        def convert(k: str) -> Any:
            if not CANONICAL_INT.match(k):
                raise Rejected("invalid_value", f"key {show(k)} is not a canonical decimal integer")
            return convert_int(int(k))

        return convert
    if base.name in ("Float32", "Float64", "Bool", "Nullable") or not key.accepts_str_keys:
        return None
    return key.convert


def map_converter(key_type: ClickHouseType, key: Converter, value: Converter) -> Converter:
    convert_key = map_key_converter(key, key_type)
    convert_value = value.convert

    def convert(v: Any) -> dict:
        if type(v) is not dict:
            raise wrong_type("an object", v)
        out = {}
        for k, x in v.items():
            try:
                out[convert_key(k)] = convert_value(x)
            except Rejected as e:
                raise e.at(f"[{show(k)}]") from None
        if len(out) != len(v):
            raise Rejected("invalid_value", f"object {show(v)} has keys that are equal as {key_type.name}")
        return out

    return Converter(convert, {}, accepts_str_keys=False)


def tuple_converter(elements: Sequence[tuple[str | None, Converter]]) -> Converter:
    converters = [c.convert for _, c in elements]
    names = [n for n, _ in elements]
    named = all(names)
    size = len(elements)

    def convert(v: Any) -> tuple:
        if type(v) is dict and named:
            if len(v) != size or any(n not in v for n in names):
                raise Rejected("invalid_value", f"object {show(v)} must have exactly the keys {names}")
            v = [v[n] for n in names]
        elif type(v) is not list:
            raise wrong_type("an array" + (" or object" if named else ""), v)
        if len(v) != size:
            raise Rejected("invalid_value", f"{show(v)} has {len(v)} elements; the tuple has {size}")
        out = []
        for i, (c, x) in enumerate(zip(converters, v, strict=False)):
            try:
                out.append(c(x))
            except Rejected as e:
                raise e.at(f".{names[i]}" if named else f"[{i}]") from None
        return tuple(out)

    return Converter(convert, tuple(c.zero for _, c in elements), accepts_str_keys=False)


