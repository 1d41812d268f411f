"""Numbers: (U)Int8..256, Float32/64, Decimal(P,S), Bool."""

from __future__ import annotations

import re
import struct
from decimal import Decimal
from typing import Any

from workers.clickhouse.schema.converter import CANONICAL_INT, MAX_EXACT_FLOAT_INT, Converter
from workers.clickhouse.schema.errors import Rejected, show, wrong_type


def int_converter(type_name: str, bits: int, signed: bool) -> Converter:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    def out_of_range(v: Any) -> Rejected:
        return Rejected("out_of_range", f"{show(v)} is out of range for {type_name} [{lo}, {hi}]")

    def convert(v: Any) -> int:
        t = type(v)
        if t is int:
            if lo <= v <= hi:
                return v
            raise out_of_range(v)
        if t is float:
            if v.is_integer() and -MAX_EXACT_FLOAT_INT < v < MAX_EXACT_FLOAT_INT:
                iv = int(v)
                if lo <= iv <= hi:
                    return iv
                raise out_of_range(v)
            raise Rejected(
                "wrong_type",
                f"{show(v)} is not provably an exact integer for {type_name} "
                "(floats are accepted only when integral and below 2**53)",
            )
        if t is str:
            # proto3's JSON mapping and JavaScript producers send 64-bit integers as strings.
            if not CANONICAL_INT.match(v):
                raise Rejected(
                    "invalid_value",
                    f"{show(v)} is not a canonical decimal integer for {type_name} (digits, optional '-', "
                    "no spaces, '+', leading zeros, fraction or exponent)",
                )
            iv = int(v)
            if lo <= iv <= hi:
                return iv
            raise out_of_range(v)
        raise wrong_type("an integer (number or decimal string)", v)

    return Converter(convert, 0, fast=(frozenset({int}), lo, hi))


_FLT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
# JSON's number grammar (what a numeric string must look like) and proto3's names of the IEEE specials.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z", re.ASCII)
_SPECIALS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def float_converter(type_name: str) -> Converter:
    single = type_name == "Float32"
    pack = struct.Struct("<f")

    def inexact(v: Any) -> Rejected:
        return Rejected("lost_precision", f"integer {show(v)} cannot be represented exactly as {type_name}")

    def from_int(v: int) -> float:
        try:
            f = float(v)
        except OverflowError:
            raise Rejected("out_of_range", f"integer {show(v)} is out of range for {type_name}") from None
        if f != v or (single and abs(f) <= _FLT32_MAX and pack.unpack(pack.pack(f))[0] != f):
            raise inexact(v)
        return f

    def from_str(v: str) -> float:
        special = _SPECIALS.get(v)
        if special is not None:
            return special
        if _JSON_NUMBER.match(v) is None:
            raise Rejected(
                "invalid_value", f"{show(v)} is not a number (JSON number syntax, or NaN, Infinity, -Infinity)"
            )
        if CANONICAL_INT.match(v):
            return from_int(int(v))
        f = float(v)
        if f in (float("inf"), float("-inf")):
            raise Rejected("out_of_range", f"{show(v)} is out of range for {type_name}")
        return f

    def convert(v: Any) -> float:
        t = type(v)
        if t is float:
            f = v
        elif t is int:
            f = from_int(v)
        elif t is str:
            f = from_str(v)
        else:
            raise wrong_type("a number (or a numeric string)", v)
        if single and f == f and f not in (float("inf"), float("-inf")):
            # What the column stores is f rounded to float32: 3.4028235e38 is FLT_MAX, 1e-50 is 0.
            try:
                stored = pack.unpack(pack.pack(f))[0]
            except OverflowError:
                raise Rejected("out_of_range", f"{show(v)} is out of range for Float32") from None
            if stored == 0.0 and f != 0.0:
                raise Rejected("out_of_range", f"{show(v)} is too small for Float32 (it would be stored as 0)")
        return f

    # Float32 has no fast path: its range check is after rounding, not a min/max test.
    return Converter(convert, 0.0, fast=None if single else (frozenset({float}), None, None))


def convert_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise wrong_type("true or false", v)


_DECIMAL = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?\Z", re.ASCII)
# Every decimal of at most 15 significant digits survives the trip through a double:
# its shortest repr gives it back.  With more, the double may stand for another decimal.
EXACT_FLOAT_DIGITS = 15


def decimal_converter(type_name: str, precision: int, scale: int) -> Converter:
    int_digits = precision - scale
    limit = 10**int_digits

    def fits(v: Any, whole: int, frac: int) -> None:
        if frac > scale:
            raise Rejected("lost_precision", f"{show(v)} has {frac} fraction digits; {type_name} keeps {scale}")
        if whole > int_digits:
            raise Rejected("out_of_range", f"{show(v)} has {whole} integer digits; {type_name} allows {int_digits}")

    def from_float(v: float) -> Decimal:
        if v != v or v in (float("inf"), float("-inf")):
            raise Rejected("invalid_value", f"{show(v)} is not a number {type_name} can hold")
        d = Decimal(repr(v))  # the shortest text of the double: what the sender wrote, up to 15 digits
        sign, digits, exponent = d.normalize().as_tuple()
        if len(digits) > EXACT_FLOAT_DIGITS:
            raise Rejected(
                "lost_precision",
                f"JSON number {show(v)} has more than {EXACT_FLOAT_DIGITS} significant digits, so the value sent "
                f"cannot be known exactly after JSON parsing; send {type_name} values as strings (\"12.34\")",
            )
        if digits != (0,):
            fits(v, max(len(digits) + exponent, 0), max(-exponent, 0))
        return d

    def convert(v: Any) -> Decimal | int:
        t = type(v)
        if t is str:
            m = _DECIMAL.match(v)
            if m is None:
                raise Rejected("invalid_value", f"{show(v)} is not a decimal number like -123.45")
            fits(v, len(m[1].lstrip("0")), len((m[2] or "").rstrip("0")))
            # Exact; surplus zeros are harmless to the driver's int(Decimal(str(x)) * 10**S).
            return Decimal(v)
        if t is int:
            if -limit < v < limit:
                return v
            raise Rejected("out_of_range", f"{show(v)} has more than {int_digits} integer digits for {type_name}")
        if t is float:
            return from_float(v)
        raise wrong_type("a decimal number or string", v)

    return Converter(convert, Decimal(0))


INT_TYPES = {
    f"{'U' if unsigned else ''}Int{bits}": (bits, not unsigned)
    for bits in (8, 16, 32, 64, 128, 256)
    for unsigned in (False, True)
}
DECIMAL_SIZES = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}

