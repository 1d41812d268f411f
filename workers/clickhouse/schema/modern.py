"""Types of newer servers: JSON, BFloat16, Time, Time64(P).

Nested (flatten_nested = 0) and SimpleAggregateFunction(f, T) need no converter of their
own: they are built from Array(Tuple(...)) and T (builder.py).  Variant and Dynamic have
modules of their own (variant.py, dynamic.py): which of their types a JSON value becomes
is the server's parser's choice, which they follow where it is certain.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import orjson

from workers.clickhouse.schema.converter import Converter
from workers.clickhouse.schema.errors import Rejected, show, wrong_type


def json_object_converter() -> Converter:
    """JSON(...): an object, sent as its JSON text for the server's own parser to store.

    The column is written as one JSON document per row (workers/clickhouse/native.py,
    JsonAsStringColumn), so typed paths, SKIP and the dynamic-path limits are applied by
    the server exactly as to the same document in JSONEachRow; a value a typed path
    refuses is refused by the server (a row fault: that message is dead-lettered).
    """

    def convert(v: Any) -> bytes:
        if type(v) is dict:
            return orjson.dumps(v)
        raise wrong_type("an object", v)

    return Converter(convert, b"{}", accepts_str_keys=False)


_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_BF16_MAX = 3.3895313892515355e38


def bfloat16_converter() -> Converter:
    """BFloat16: a number it holds exactly (8 significant bits), emitted as its 16-bit pattern."""

    def convert(v: Any) -> int:
        t = type(v)
        if t is str:
            special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v)
            if special is None:
                raise Rejected("invalid_value", f"{show(v)} is not a number, NaN, Infinity or -Infinity")
            f = special
        elif t is int or t is float:
            try:
                f = float(v)
            except OverflowError:
                raise Rejected("out_of_range", f"{show(v)} is out of range for BFloat16") from None
            if f != v:
                raise Rejected("lost_precision", f"{show(v)} cannot be represented exactly as BFloat16")
            if math.isfinite(f) and abs(f) > _BF16_MAX:
                raise Rejected("out_of_range", f"{show(v)} is out of range for BFloat16")
        else:
            raise wrong_type("a number", v)
        if math.isnan(f):
            return 0x7FC0
        try:
            bits = _U32.unpack(_F32.pack(f))[0]
        except OverflowError:
            raise Rejected("out_of_range", f"{show(v)} is out of range for BFloat16") from None
        if bits & 0xFFFF or _F32.unpack(_F32.pack(f))[0] != f:
            raise Rejected("lost_precision", f"{show(v)} cannot be represented exactly as BFloat16")
        return bits >> 16

    return Converter(convert, 0, accepts_str_keys=False)


_TIME = re.compile(r"(-)?(\d{1,3}):([0-5]\d):([0-5]\d)(?:\.(\d+))?\Z", re.ASCII)
_TIME_MAX = 999 * 3600 + 59 * 60 + 59


def time_converter(precision: int | None) -> Converter:
    """Time ("[-]hhh:mm:ss", whole seconds) and Time64(P) (up to P fraction digits), as ticks."""
    name = "Time" if precision is None else f"Time64({precision})"
    digits = precision or 0
    scale = 10**digits

    def convert(v: Any) -> int:
        if type(v) is not str:
            raise wrong_type("a time string ([-]h:mm:ss)", v)
        m = _TIME.match(v)
        if m is None:
            raise Rejected("invalid_value", f"{show(v)} is not a time ([-]h:mm:ss{'[.f]' if digits else ''})")
        sign, h, mi, s, fraction = m.groups()
        seconds = int(h) * 3600 + int(mi) * 60 + int(s)
        ticks = seconds * scale
        if fraction:
            kept, dropped = fraction[:digits], fraction[digits:]
            if dropped.strip("0"):
                raise Rejected("lost_precision", f"{show(v)} has more fraction digits than {name} stores")
            if kept:
                ticks += int(kept) * 10 ** (digits - len(kept))
        if ticks > _TIME_MAX * scale + (scale - 1 if digits else 0):
            raise Rejected("out_of_range", f"{show(v)} is outside the {name} range (-999:59:59 .. 999:59:59)")
        return -ticks if sign else ticks

    return Converter(convert, 0, accepts_str_keys=False, dedupe_strings=True)
