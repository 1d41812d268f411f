"""Numbers: (U)Int8..256, Float32/64, Decimal(P,S), Bool."""

from __future__ import annotations

import re
import struct
from decimal import Decimal
from typing import Any

from workers.schema.converter import CANONICAL_INT, MAX_EXACT_FLOAT_INT, Converter
from workers.schema.errors import Rejected, show, wrong_type


def int_converter(type_name: str, bits: int, signed: bool) -> Converter:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    big = bits > 64
    expected = "an integer" + (" (number or decimal string)" if big else "")

    def out_of_range(v: int) -> Rejected:
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
        if big and t is str:
            if not CANONICAL_INT.match(v):
                raise Rejected("invalid_value", f"{show(v)} is not a canonical decimal integer for {type_name}")
            iv = int(v)
            if lo <= iv <= hi:
                return iv
            raise out_of_range(v)
        raise wrong_type(expected, v)

    return Converter(convert, 0, fast=(frozenset({int}), lo, hi))


_FLT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_FLT32_TINY = 2.0**-149  # smallest subnormal float32; anything smaller rounds to 0


def float_converter(type_name: str) -> Converter:
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
                raise Rejected("out_of_range", f"integer {show(v)} cannot be represented exactly as {type_name}")
            if single and abs(f) <= _FLT32_MAX and pack.unpack(pack.pack(f))[0] != f:
                raise Rejected("out_of_range", f"integer {show(v)} cannot be represented exactly as {type_name}")
        else:
            raise wrong_type("a number", v)
        if single:
            a = abs(f)
            if a > _FLT32_MAX or (0.0 < a < _FLT32_TINY):
                raise Rejected("out_of_range", f"{show(v)} is out of range for Float32")
        return f

    # Float32 has no fast path: its underflow check is not a min/max test.
    return Converter(convert, 0.0, fast=None if single else (frozenset({float}), None, None))


def convert_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise wrong_type("true or false", v)


_DECIMAL = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?\Z", re.ASCII)


def decimal_converter(type_name: str, precision: int, scale: int) -> Converter:
    int_digits = precision - scale
    limit = 10**int_digits

    def convert(v: Any) -> Decimal | int:
        t = type(v)
        if t is str:
            m = _DECIMAL.match(v)
            if m is None:
                raise Rejected("invalid_value", f"{show(v)} is not a decimal number like -123.45")
            whole, frac = m[1].lstrip("0"), (m[2] or "").rstrip("0")
            if len(frac) > scale:
                raise Rejected(
                    "out_of_range", f"{show(v)} has {len(frac)} fraction digits; {type_name} keeps {scale}"
                )
            if len(whole) > int_digits:
                raise Rejected(
                    "out_of_range", f"{show(v)} has {len(whole)} integer digits; {type_name} allows {int_digits}"
                )
            # Exact; surplus zeros are harmless to the driver's int(Decimal(str(x)) * 10**S).
            return Decimal(v)
        if t is int:
            if -limit < v < limit:
                return v
            raise Rejected("out_of_range", f"{show(v)} has more than {int_digits} integer digits for {type_name}")
        if t is float:
            raise Rejected(
                "wrong_type",
                f"JSON float {show(v)} is not exact; send {type_name} values as strings (\"12.34\") or integers",
            )
        raise wrong_type("a decimal string or an integer", v)

    return Converter(convert, Decimal(0))


INT_TYPES = {
    f"{'U' if unsigned else ''}Int{bits}": (bits, not unsigned)
    for bits in (8, 16, 32, 64, 128, 256)
    for unsigned in (False, True)
}
DECIMAL_SIZES = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}

