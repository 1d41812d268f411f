"""Text-like types: String, FixedString(N), UUID, Enum8/16, IPv4, IPv6."""

from __future__ import annotations

import re
import socket
import struct
from itertools import repeat
from operator import lshift, or_
from typing import Any, Sequence
from uuid import UUID, SafeUUID

import orjson

from workers.clickhouse.schema.converter import ONLY_STR, Converter
from workers.clickhouse.schema.errors import Rejected, show, wrong_type


def convert_string(v: Any) -> str:
    if type(v) is str:
        return v
    raise wrong_type("a string", v)


def convert_string_or_json(v: Any) -> str:
    """A string, or a JSON object or array as its compact JSON text (the same JSON value, orjson's spelling)."""
    t = type(v)
    if t is str:
        return v
    if t is dict or t is list:
        return orjson.dumps(v).decode()
    raise wrong_type("a string, object or array", v)


def fixed_string_converter(n: int) -> Converter:
    def convert(v: Any) -> str:
        if type(v) is not str:
            raise wrong_type("a string", v)
        if len(v) > n:
            raise Rejected("out_of_range", f"{show(v)} is longer than FixedString({n}) ({n} bytes)")
        if not v.isascii():
            try:
                size = len(v.encode("utf-8"))
            except UnicodeEncodeError:
                raise Rejected("invalid_value", f"{show(v)} is not valid Unicode text") from None
            if size > n:
                raise Rejected("out_of_range", f"{show(v)} is {size} UTF-8 bytes; FixedString({n}) holds {n}")
        return v

    def column(values: list) -> list | None:
        # ASCII strings are one byte a character: a length check is the whole test.
        if set(map(type, values)) <= ONLY_STR and max(map(len, values), default=0) <= n and "".join(values).isascii():
            return values
        return None

    return Converter(convert, "", column=column)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z", re.ASCII)


def uuid_converter() -> Converter:
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
        if not (set(map(type, values)) <= ONLY_STR and set(map(len, values)) == {36}):
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
        from workers.clickhouse import native  # not at the top: native imports the schema package

        if native.installed():
            return native.pack_uuids(raw)  # what the installed UUID writer sends as it is
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
            raise wrong_type("a UUID string", v)
        if match(v) is None:
            raise Rejected("invalid_value", f"{show(v)} is not a canonical UUID (8-4-4-4-12 hex digits)")
        value = int(v.replace("-", ""), 16)
        if direct:
            u = new(UUID)
            store(u, "int", value)
            store(u, "is_safe", unknown)
            return u
        return UUID(int=value)

    return Converter(convert, UUID(int=0), column=column)


def enum_converter(type_name: str, members: Sequence[tuple[str, int]]) -> Converter:
    names = frozenset(name for name, _ in members)
    name_of = {value: name for name, value in members}

    def invalid(v: Any) -> Rejected:
        allowed = ", ".join(repr(n) for n, _ in members[:10]) + (", ..." if len(members) > 10 else "")
        return Rejected("invalid_value", f"{show(v)} is not a member of {type_name} ({allowed})")

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
        raise wrong_type("an enum name (string) or value (integer)", v)

    # ClickHouse's default for an Enum is its smallest value.
    zero = min(members, key=lambda m: m[1])[0]
    return Converter(convert, zero)


def ipv4_converter() -> Converter:
    def parse(v: str) -> int:
        # inet_pton takes dotted quads only: no leading zeros, hex, short forms or spaces.
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, v), "big")
        except (OSError, ValueError):
            raise Rejected("invalid_value", f"{show(v)} is not an IPv4 address (a.b.c.d)") from None

    def convert(v: Any) -> int:
        if type(v) is str:
            return parse(v)
        raise wrong_type("an IPv4 address string", v)

    return Converter(convert, 0, dedupe_strings=True)


def ipv6_converter() -> Converter:
    def parse(v: str) -> bytes:
        # inet_pton refuses zone ids ("%eth0", which 16 bytes cannot keep) and bare IPv4.
        try:
            return socket.inet_pton(socket.AF_INET6, v)
        except (OSError, ValueError):
            raise Rejected("invalid_value", f"{show(v)} is not an IPv6 address (without zone id)") from None

    def convert(v: Any) -> bytes:
        if type(v) is str:
            return parse(v)
        raise wrong_type("an IPv6 address string", v)

    return Converter(convert, b"\x00" * 16, dedupe_strings=True)


