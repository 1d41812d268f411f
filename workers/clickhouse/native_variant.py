"""Column writers the driver lacks: Variant(T1, ...) and Dynamic, in ClickHouse's Native layout.

They also read the same layout back into the rows they write (what a constant DEFAULT
evaluated once by the server is read as; Dynamic's shared variant excepted).

Variant (SerializationVariant, discriminators mode BASIC, which Native uses):

    prefix  UInt64 0 (BASIC), then each variant's own prefix, in discriminator order
    data    one UInt8 discriminator per row (255: NULL), then each variant's column of
            the rows it holds, in discriminator order (nothing for a variant without rows)

The discriminators are the variants' positions in the type as the server prints it
(``DataTypeVariant`` sorts its variants by name).  The rows come from
workers/clickhouse/schema/variant.py as ``(discriminator, value)`` or None.

Dynamic (SerializationDynamic, structure version V1, which 24.x..26.x servers write and read in Native):

    prefix  UInt64 1 (V1), VarUInt number of types (the old max_types slot, not read),
            VarUInt number of types, each type's name; then the inner Variant's prefix
            (UInt64 0, each variant's prefix)
    data    the inner Variant: its variants are the listed types and ``SharedVariant``,
            sorted by name; SharedVariant is a String column holding, per value, the
            type in ClickHouse's binary type encoding and the value in its binary form

The rows come from workers/clickhouse/schema/dynamic.py as ``(type name, value)`` or
None.  The first ``max_types`` types of a block (in the order the rows first show
them, as ClickHouse's own parser fills them) get their own variants; the others go to
the shared variant, as the server itself does beyond ``max_types``.
"""

from __future__ import annotations

import struct
from datetime import date
from typing import Any, Callable

from clickhouse_driver.columns.base import Column
from clickhouse_driver.reader import read_binary_str, read_binary_uint64
from clickhouse_driver.varint import read_varint, write_varint
from clickhouse_driver.writer import write_binary_str, write_binary_uint64

from workers.clickhouse.schema.parser import ClickHouseType, parse_type

NULL_DISCRIMINATOR = 255
SHARED_VARIANT = "SharedVariant"
_BASIC = 0  # VariantDiscriminatorsSerializationMode::BASIC
_DYNAMIC_V1, _DYNAMIC_V2 = 1, 2  # DynamicSerializationVersion


def _split(items: list, count: int) -> tuple[bytes, list[list]]:
    """Discriminators and each variant's values, from ``(discriminator, value)`` rows."""
    parts: list[list] = [[] for _ in range(count)]
    discriminators = bytearray(len(items))
    for row, item in enumerate(items):
        if item is None:
            discriminators[row] = NULL_DISCRIMINATOR
        else:
            d, value = item
            discriminators[row] = d
            parts[d].append(value)
    return bytes(discriminators), parts


def _write_variants(buf, discriminators: bytes, columns: list, parts: list[list]) -> None:
    buf.write(discriminators)
    for column, part in zip(columns, parts, strict=True):
        if part:
            column.write_data(part, buf)


def _read_variants(buf, n_items: int, columns: list) -> list:
    """``(discriminator, value)`` rows (None for NULL), as the writers take them."""
    discriminators = buf.read(n_items)
    counts = [0] * len(columns)
    for d in discriminators:
        if d != NULL_DISCRIMINATOR:
            counts[d] += 1
    values = [iter(c.read_data(count, buf) if count else ()) for c, count in zip(columns, counts, strict=True)]
    return [None if d == NULL_DISCRIMINATOR else (d, next(values[d])) for d in discriminators]


class VariantColumn(Column):
    """Variant(T1, ...), written from ``(discriminator, value)`` rows and read back as them
    (a constant DEFAULT is read once, in the form the converter emits); the variants' columns are the driver's."""

    py_types = (object,)

    def __init__(self, variant_columns: list, **kwargs):
        self.variant_columns = variant_columns
        super().__init__(**kwargs)
        self.prefix_needs_items = any(c.prefix_needs_items for c in variant_columns)

    def write_state_prefix(self, buf, items=None):
        write_binary_uint64(_BASIC, buf)
        parts = None
        if items is not None and self.prefix_needs_items:
            parts = _split(items, len(self.variant_columns))[1]
        for i, column in enumerate(self.variant_columns):
            column.write_state_prefix(buf, None if parts is None else parts[i])

    def write_data(self, items, buf):
        discriminators, parts = _split(items, len(self.variant_columns))
        _write_variants(buf, discriminators, self.variant_columns, parts)

    _write_data = write_data  # what Array's writer calls for its elements

    def read_state_prefix(self, buf):
        super().read_state_prefix(buf)
        _read_mode(buf)
        for column in self.variant_columns:
            column.read_state_prefix(buf)

    def read_data(self, n_items, buf):
        return _read_variants(buf, n_items, self.variant_columns)


def _read_mode(buf) -> None:
    mode = read_binary_uint64(buf)
    if mode != _BASIC:
        raise NotImplementedError(f"Variant discriminators mode {mode} (only BASIC is read)")


class DynamicColumn(Column):
    """Dynamic[(max_types=N)], written from ``(type name, value)`` rows and read back as them
    (values in the shared variant excepted)."""

    py_types = (object,)

    prefix_needs_items = True  # the types listed in the prefix are the block's

    def __init__(self, max_types: int, column_by_spec: Callable[[str], Any], **kwargs):
        self.max_types = max_types
        self.column_by_spec = column_by_spec
        self.names: list[str] = [SHARED_VARIANT]  # every variant, sorted: the discriminators' order
        self.columns: dict[str, Any] = {}
        super().__init__(**kwargs)

    def write_state_prefix(self, buf, items=None):
        seen = dict.fromkeys(item[0] for item in items or () if item is not None)
        own = sorted(list(seen)[: self.max_types])
        self.names = sorted([*own, SHARED_VARIANT])
        self.columns = {name: self.column_by_spec(name) for name in own}
        write_binary_uint64(_DYNAMIC_V1, buf)
        write_varint(len(own), buf)
        write_varint(len(own), buf)
        for name in own:
            write_binary_str(name, buf)
        write_binary_uint64(_BASIC, buf)
        for name in own:
            column = self.columns[name]
            values = None
            if column.prefix_needs_items:
                values = [item[1] for item in items if item is not None and item[0] == name]
            column.write_state_prefix(buf, values)

    def write_data(self, items, buf):
        index = {name: i for i, name in enumerate(self.names)}
        shared = index[SHARED_VARIANT]
        rows = []
        for item in items:
            if item is None:
                rows.append(None)
                continue
            name, value = item
            d = index.get(name)
            # A type the prefix did not list (its items were not at hand) goes to the shared variant.
            rows.append((d, value) if d is not None and d != shared else (shared, shared_value(name, value)))
        discriminators, parts = _split(rows, len(self.names))
        columns = [self.columns.get(name) or _SharedStrings(context=self.context) for name in self.names]
        _write_variants(buf, discriminators, columns, parts)

    _write_data = write_data

    def read_state_prefix(self, buf):
        super().read_state_prefix(buf)
        version = read_binary_uint64(buf)
        if version not in (_DYNAMIC_V1, _DYNAMIC_V2):
            raise NotImplementedError(f"Dynamic structure version {version} (V1 and V2 are read)")
        if version == _DYNAMIC_V1:
            read_varint(buf)
        own = [read_binary_str(buf) for _ in range(read_varint(buf))]
        self.names = sorted([*own, SHARED_VARIANT])
        self.columns = {name: self.column_by_spec(name) for name in own}
        _read_mode(buf)
        for name in self.names:
            if name != SHARED_VARIANT:
                self.columns[name].read_state_prefix(buf)

    def read_data(self, n_items, buf):
        columns = [self.columns.get(name) or _SharedStrings(context=self.context) for name in self.names]
        rows = _read_variants(buf, n_items, columns)
        shared = self.names.index(SHARED_VARIANT)
        if any(row is not None and row[0] == shared for row in rows):
            raise NotImplementedError("a value in Dynamic's shared variant is not read")
        return [None if row is None else (self.names[row[0]], row[1]) for row in rows]


class _SharedStrings(Column):
    """The shared variant's String column of encoded values (bytes)."""

    py_types = (bytes,)

    def write_data(self, items, buf):
        buf.write_strings(items)

    def read_data(self, n_items, buf):
        return buf.read_strings(n_items)


# ClickHouse's binary type encoding (DataTypesBinaryEncoding.cpp) of the types dynamic.py infers.
_TAGS = {"UInt64": 0x04, "Int64": 0x0A, "Float64": 0x0E, "Date": 0x0F, "DateTime": 0x11, "String": 0x15, "Bool": 0x2D}
_ARRAY, _NULLABLE, _DATETIME64 = 0x1E, 0x23, 0x13
_EPOCH = date(1970, 1, 1)
_PACK = {"UInt64": struct.Struct("<Q").pack, "Int64": struct.Struct("<q").pack, "Float64": struct.Struct("<d").pack,
         "DateTime": struct.Struct("<I").pack, "Bool": struct.Struct("<?").pack}
_UINT16 = struct.Struct("<H").pack
_INT64 = struct.Struct("<q").pack


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode_type(t: ClickHouseType) -> bytes:
    if t.name == "Array":
        return bytes((_ARRAY,)) + _encode_type(t.args[0])
    if t.name == "Nullable":
        return bytes((_NULLABLE,)) + _encode_type(t.args[0])
    if t.name == "DateTime64":
        return bytes((_DATETIME64, t.args[0]))
    return bytes((_TAGS[t.name],))


def _encode_value(t: ClickHouseType, value: Any, out: list[bytes]) -> None:
    """serializeBinary of one value (the driver's form of it, as the converters emit it)."""
    name = t.name
    if name == "Array":
        out.append(_varint(len(value)))
        for x in value:
            _encode_value(t.args[0], x, out)
    elif name == "Nullable":
        out.append(b"\x01" if value is None else b"\x00")
        if value is not None:
            _encode_value(t.args[0], value, out)
    elif name == "String":
        raw = value.encode("utf-8")
        out.append(_varint(len(raw)))
        out.append(raw)
    elif name == "Date":
        out.append(_UINT16((value - _EPOCH).days))
    elif name == "DateTime64":
        out.append(_INT64(value))
    else:
        out.append(_PACK[name](value))


def shared_value(name: str, value: Any) -> bytes:
    """One value of the shared variant: its type's binary encoding, then the value's binary form."""
    t = parse_type(name)
    out = [_encode_type(t)]
    _encode_value(t, value, out)
    return b"".join(out)
