"""Faster INSERT column writers for clickhouse-driver: whole-column C-level work, same bytes.

Why: the driver's client-side serialisation of a columnar INSERT cost ~1.45 us per
row of the demo table (``python -m bench.micro``), most of it in per-item Python
loops: UUID 0.35 us/row (a loop to prepare the items, one to turn UUIDs into ints,
one to split each int into two UInt64), Array(String) 0.30 (the offsets and the
flattening, row by row), DateTime 0.15 (a loop that leaves int epochs as they are),
FixedString(2) 0.12 (one ``str.encode`` per value).  With these classes, same
block, same bytes (fastest of 31 interleaved runs, 2-vCPU VM): UUID 0.33 -> 0.19,
DateTime 0.12 -> 0.04, Array(String) 0.27 -> 0.19, FixedString(2) 0.07 -> 0.06;
the whole demo block 1.30 -> 0.97 us/row.

What: subclasses of the driver's UUID, DateTime (with or without a zone), Array(T)
(any nesting) and FixedString(N) columns whose write path does the same work with
``map``/``itertools``/``array``/``bytes.join`` over the whole column.  Each override
takes its fast path only when the whole column qualifies (e.g. every value is a
``uuid.UUID``; every DateTime is an int; every FixedString value is an ASCII str)
and otherwise calls the driver's own code, which then writes, or raises, exactly
what it always did.  This changes speed only, never the bytes sent: the tests
(tests/unit/test_native.py) compare both writers' output byte for byte.

Not covered: String (the driver's Cython ``write_strings`` is already as fast as
anything built from Python's C functions), NumPy columns, and columns inside
``Nested`` (its factory imports ``create_array_column`` itself).

Hook: :func:`install` (idempotent) makes ``clickhouse_driver.columns.service`` build
these classes, for this process, if the driver is a 0.2.x release on a
little-endian machine (we rely on 0.2.x internals and on native byte order being
the wire's): it wraps the ``create_string_column``, ``create_datetime_column`` and
``create_array_column`` names that ``service.get_column_by_spec`` calls, replaces
``service.column_by_type['UUID']``, and wraps ``service.get_column_by_spec`` itself so
that Map and Tuple types are split by jetsink's parser (:func:`_containers`: the one
change of what is written, from an error to the type's bytes).  ``uninstall`` puts
them back.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import logging
import struct
import sys
from array import array
from collections import deque
from itertools import accumulate, compress, repeat
from operator import attrgetter, is_, not_
from uuid import UUID

import clickhouse_driver
import clickhouse_driver.client
import orjson
from clickhouse_driver import defines
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.columns import service
from clickhouse_driver.columns.arraycolumn import ArrayColumn
from clickhouse_driver.columns.datetimecolumn import DateTimeColumn
from clickhouse_driver.columns.intcolumn import Int32Column, Int64Column, UInt16Column
from clickhouse_driver.columns.mapcolumn import MapColumn
from clickhouse_driver.columns.newjsoncolumn import NewJsonColumn
from clickhouse_driver.columns.stringcolumn import FixedString
from clickhouse_driver.columns.tuplecolumn import TupleColumn
from clickhouse_driver.columns.uuidcolumn import UUIDColumn
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.writer import write_binary_uint64

from workers.clickhouse.native_variant import DynamicColumn, VariantColumn
from workers.clickhouse.schema.dynamic import max_types
from workers.clickhouse.schema.parser import ClickHouseType, parse_type, type_text

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ((0, 2, 0), (0, 3, 0))  # [from, to): the internals below are those of 0.2.x


class _WholeColumn:
    """``Column.prepare_items`` without its per-item loop.

    The driver visits every item to swap None for the null value and to build the
    nulls map, even when nothing is None; here only the None rows are visited.
    Type checks (``types_check=True``) and ``check_item`` stay the driver's.
    """

    def prepare_items(self, items):
        if self.types_check_enabled or self.check_item:
            return super().prepare_items(items)
        nulls_map = None
        if self.nullable or self.input_null_as_default:
            is_null = list(map(is_, items, repeat(None)))
            null_value = self.null_value
            for i in compress(range(len(items)), is_null):
                items[i] = null_value
            if self.nullable:
                nulls_map = is_null
        if self.before_write_items:
            self.before_write_items(items, nulls_map=nulls_map)
        return items


class FastUUIDColumn(_WholeColumn, UUIDColumn):
    """Items: the mapper's packed values (16 bytes each, already in wire order: :func:`pack_uuids`),
    ``uuid.UUID`` objects, or both (batches joined)."""

    def before_write_items(self, items, nulls_map=None):
        types = set(map(type, items))
        if types <= {bytes} and set(map(len, items)) <= {16}:
            return  # all packed (no nulls: a null row would hold the int null_value)
        if bytes in types:
            items[:] = [unpack_uuid(v) if type(v) is bytes and len(v) == 16 else v for v in items]
        # The driver rewrites the list in place (UUID -> int); so do we.
        if nulls_map is None:
            if set(map(type, items)) <= {UUID}:
                items[:] = map(attrgetter("int"), items)
                return
        elif set(map(type, compress(items, map(not_, nulls_map)))) <= {UUID}:
            # Null rows already hold null_value (0), an int without .int: the default keeps it.
            items[:] = map(getattr, items, repeat("int"), repeat(self.null_value))
            return
        super().before_write_items(items, nulls_map)

    def write_items(self, items, buf):
        if set(map(type, items)) <= {bytes} and set(map(len, items)) <= {16}:
            buf.write(b"".join(items))  # packed: the wire's bytes already
            return
        # Each UUID goes out as two little-endian UInt64, high half first: the
        # big-endian 16 bytes of the int with each 8-byte half reversed.
        try:
            raw = b"".join(map(int.to_bytes, items, repeat(16), repeat("big")))
        except (TypeError, OverflowError):  # not ints of 0..2**128-1: the driver's own masking
            return super().write_items(items, buf)
        halves = array("Q")
        halves.frombytes(raw)
        halves.byteswap()
        buf.write(halves.tobytes())


def pack_uuids(raw: bytes) -> list[bytes]:
    """UUID column values from their 16 big-endian bytes each, concatenated: each value its 16 bytes in
    ClickHouse's wire order (two little-endian UInt64, high half first), which FastUUIDColumn writes as
    they are.  Two C calls for the column, where UUID objects took six passes to make and three to write."""
    halves = array("Q")
    halves.frombytes(raw)
    halves.byteswap()
    wire = halves.tobytes()
    return list(struct.unpack("16s" * (len(wire) // 16), wire))


def unpack_uuid(value: bytes) -> UUID:
    """The UUID of one :func:`pack_uuids` value."""
    hi, lo = _UUID_HALVES.unpack(value)
    return UUID(int=(hi << 64) | lo)


_UUID_HALVES = struct.Struct("<QQ")


class FastDateTimeColumn(_WholeColumn, DateTimeColumn):
    def before_write_items(self, items, nulls_map=None):
        # Int epochs (and null rows, already 0) are written as they are, zone or no zone:
        # only datetime objects need the driver's conversion.
        if set(map(type, items)) <= {int}:
            return
        super().before_write_items(items, nulls_map)


def _is_utf8(encoding) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except (LookupError, TypeError):
        return False


class FastFixedString(_WholeColumn, FixedString):
    def write_items(self, items, buf):
        # ASCII str values are their own UTF-8 bytes: one join and one encode for the
        # column instead of an encode per value, when every value is exactly N chars.
        # That is checked without a len() per value: joined with NULs, the values are
        # all N ASCII chars free of NULs iff the only NULs are the separators and
        # they sit every N+1 chars.  Shorter values (NUL-padded), longer ones (an
        # error) and anything else go to the driver.
        n, count = self.length, len(items)
        if _is_utf8(self.encoding) and set(map(type, items)) <= {str}:
            joined = "\0".join(items)
            if (
                len(joined) == count * (n + 1) - 1
                and joined.isascii()
                and joined.count("\0") == count - 1
                and joined[n :: n + 1] == "\0" * (count - 1)
            ):
                buf.write(joined.replace("\0", "").encode("ascii"))
                return
        super().write_items(items, buf)


class FastArrayColumn(_WholeColumn, ArrayColumn):
    """Offsets and flattening with map/accumulate, each level flattened once.

    The driver computes the offsets and flattens in a Python loop over every row of
    every level, then flattens all levels twice more (for the nulls map and for the
    data); here each level is flattened once and the leaf items are handed on.
    """

    def _write(self, value, buf):
        value = self.prepare_items(value)
        try:
            flat = self._flatten(value)
        except Exception:  # e.g. a row without len(): the driver raises its own error
            flat = None
        if flat is None:
            # prepare_items again in there is a no-op on prepared rows.
            return super()._write(value, buf)
        offsets, leaf, items = flat
        buf.write(offsets)
        if leaf.nullable:
            leaf._write_nulls_map(items, buf)
        if items:
            leaf._write_data(items, buf)

    def _flatten(self, rows):
        """(UInt64 offsets of every level, leaf column, leaf items), or None for the driver's path."""
        parts = [array("Q", (len(rows),))] if self._write_depth_0_size else []
        column = self
        while isinstance(column.nested_column, ArrayColumn):
            column = column.nested_column
            if column.nullable:  # Nullable(Array(...)): the driver's nulls-map handling
                return None
            # End offset of each array at this level, then the next level's items (the
            # driver's own extend, mapped: a list built once, no iterator per row).
            parts.append(array("Q", accumulate(map(len, rows))))
            items = []
            deque(map(items.extend, rows), maxlen=0)
            rows = items
        return b"".join(parts), column.nested_column, rows


_FAST = {
    UUIDColumn: FastUUIDColumn,
    DateTimeColumn: FastDateTimeColumn,  # not DateTime64Column: only exact types are swapped
    FixedString: FastFixedString,  # not ByteFixedString (strings_as_bytes)
    ArrayColumn: FastArrayColumn,
}
class TupleColumnOfAnySize(TupleColumn):
    """The driver's TupleColumn, which indexes ``zip(*items)`` and so fails on no items at all
    (IndexError: a Map(K, Tuple(...)) whose maps are all empty in a block)."""

    def write_data(self, items, buf):
        if not items:
            for column in self.nested_columns:
                column.write_data([], buf)
            return
        super().write_data(items, buf)


# BFloat16: the upper half of a Float32's bits; Time: Int32 seconds; Time64(P): Int64 ticks.
_AS_INTEGERS = {"BFloat16": UInt16Column, "Time": Int32Column, "Time64": Int64Column}


class JsonAsStringColumn(NewJsonColumn):
    """The driver's JSON column, written as one JSON document per row: the serialization
    version 1 (``STRING``) the server also writes under ``output_format_native_write_json_as_string``.

    The server parses each document with its own JSON parser, so the column's parameters
    (typed paths, SKIP, max_dynamic_paths) apply as to the same document sent as text;
    the driver's own writer infers the paths' types itself and ignores typed paths and
    limits.  Reading is the driver's.
    """

    prefix_needs_items = False  # the prefix is the version alone

    def write_state_prefix(self, buf, items=None):
        write_binary_uint64(1, buf)  # ObjectSerializationVersion::STRING

    def write_items(self, items, buf):
        # The converter's JSON texts (bytes); a NULL row's placeholder or a DEFAULT as the driver read it is an object.
        if not set(map(type, items)) <= {bytes}:
            items = [x if type(x) is bytes else orjson.dumps(x) for x in items]
        buf.write_strings(items)


def _containers(stock):
    """The driver's ``get_column_by_spec``, with Map and Tuple columns built from a real parse of the type.

    The driver splits ``Map(K, V)`` with a regex that finds the wrong comma once V has
    parentheses inside parentheses (``Map(String, Tuple(x Int8, y Nullable(String)))``
    raises ValueError), and a Tuple's names at the last space (a backquoted name with a
    comma or parenthesis breaks it).  The columns are the driver's own MapColumn and
    TupleColumn; only the spec is split by workers.clickhouse.schema.parser.  Their
    element columns come back through ``service.get_column_by_spec``, so nesting at any
    depth is split the same way.
    """

    def get_column_by_spec(spec, column_options, use_numpy=None):
        if spec.startswith("JSON"):
            return JsonAsStringColumn(
                lambda inner: service.get_column_by_spec(inner, column_options, use_numpy=use_numpy), **column_options
            )
        plain = _AS_INTEGERS.get(spec.split("(", 1)[0])
        if plain is not None:  # types the driver lacks, written as the integers they are stored as
            return plain(**column_options)
        if not spec.startswith(("Map(", "Tuple(", "Variant(", "Dynamic")):
            return stock(spec, column_options, use_numpy=use_numpy)
        t = parse_type(spec)

        def element(arg: ClickHouseType):
            return service.get_column_by_spec(type_text(arg), column_options, use_numpy=use_numpy)

        if t.name == "Variant":  # the driver has no writer for it (native_variant.py)
            return VariantColumn([element(a) for a in t.args], **column_options)
        if t.name == "Dynamic":
            return DynamicColumn(max_types(t), lambda name: element(parse_type(name)), **column_options)
        if t.name == "Map":
            key, value = t.args
            return MapColumn(element(key), element(value), **column_options)
        names = [a[0] if isinstance(a, tuple) else "" for a in t.args]
        types = [a[1] if isinstance(a, tuple) else a for a in t.args]
        return TupleColumnOfAnySize(names, [element(a) for a in types], **column_options)

    get_column_by_spec.__wrapped__ = stock
    return get_column_by_spec


_FACTORIES = ("create_string_column", "create_datetime_column", "create_array_column")
_stock: dict[str, object] = {}  # what install() replaced, for uninstall()
_declined = False  # install() said why it left the driver alone: once is enough


def _faster(factory):
    """`factory` (one of the driver's create_* functions) returning our class where we have one.

    The driver's factory still parses the spec and builds the column; we only swap the
    class of the result (our classes add methods, no state), so every option it sets
    stays exactly as the driver sets it.
    """

    def create(*args, **kwargs):
        column = factory(*args, **kwargs)
        fast = _FAST.get(type(column))
        if fast is not None:
            column.__class__ = fast
        return column

    create.__name__ = factory.__name__
    create.__wrapped__ = factory
    return create


def installed() -> bool:
    return bool(_stock)


def install() -> bool:
    """Make the driver write with these columns in this process; True if they are in use."""
    global _declined
    if _stock:
        return True
    version = tuple(getattr(clickhouse_driver, "VERSION", ()))
    if not SUPPORTED_VERSIONS[0] <= version < SUPPORTED_VERSIONS[1] or sys.byteorder != "little":
        if not _declined:
            log.info(
                "clickhouse-driver %s on a %s-endian machine: keeping its own column writers "
                "(workers.clickhouse.native supports 0.2.x, little-endian)",
                getattr(clickhouse_driver, "__version__", "?"), sys.byteorder,
            )
            _declined = True
        return False
    for name in _FACTORIES:
        _stock[name] = getattr(service, name)
        setattr(service, name, _faster(_stock[name]))
    _stock["UUID"] = service.column_by_type["UUID"]
    service.column_by_type["UUID"] = FastUUIDColumn
    _stock["get_column_by_spec"] = service.get_column_by_spec
    service.get_column_by_spec = _containers(_stock["get_column_by_spec"])
    _stock["column_chunks"] = clickhouse_driver.client.column_chunks
    clickhouse_driver.client.column_chunks = _column_chunks(_stock["column_chunks"])
    return True


def uninstall() -> None:
    """Put the driver's own column writers back (for tests and comparisons)."""
    if not _stock:
        return
    service.column_by_type["UUID"] = _stock.pop("UUID")
    service.get_column_by_spec = _stock.pop("get_column_by_spec")
    clickhouse_driver.client.column_chunks = _stock.pop("column_chunks")
    for name in _FACTORIES:
        setattr(service, name, _stock.pop(name))


_handed_over = contextvars.ContextVar("jetsink_insert_columns_handed_over", default=False)


@contextlib.contextmanager
def columns_handed_over():
    """Inserts made inside are given columns their caller does not use again.

    The driver cuts every INSERT's columns into blocks of ``insert_block_size`` rows, and each
    block is two copies of every column (a slice, then a list of it), because its writers
    rewrite some lists in place (UUIDs to ints, nulls to a null value, datetimes to epochs).
    A caller that hands over lists of its own (a worker's insert: a copy per attempt,
    workers/clickhouse/faults.py) lets a batch that fits in one block go as it is."""
    token = _handed_over.set(True)
    try:
        yield
    finally:
        _handed_over.reset(token)


def _column_chunks(stock):
    """The driver's ``column_chunks``, without the copies when the columns are handed over and fit in one block."""

    def column_chunks(columns, n):
        if _handed_over.get() and type(columns) is list and set(map(type, columns)) == {list}:
            rows = set(map(len, columns))
            if len(rows) == 1 and 0 < min(rows) <= n:
                yield list(columns)
                return
        yield from stock(columns, n)

    column_chunks.__wrapped__ = stock
    return column_chunks


class _Discard:
    """A socket for BufferedSocketWriter that keeps nothing (the byte count only)."""

    def __init__(self) -> None:
        self.sent = 0

    def sendall(self, data: bytes) -> None:
        self.sent += len(data)


def _context() -> Context:
    revision = defines.CLIENT_REVISION
    context = Context()
    # A server in UTC: DateTime values are int epochs, written as they are in any zone.
    context.server_info = ServerInfo("ClickHouse", 0, 0, 0, revision, "UTC", "jetsink", revision)
    context.settings = {}
    context.client_settings = {
        "insert_block_size": defines.DEFAULT_INSERT_BLOCK_SIZE,
        "strings_as_bytes": False,
        "strings_encoding": defines.STRINGS_ENCODING,
        "use_numpy": False,
        "input_format_null_as_default": False,
    }
    return context


def write_problem(type_text: str, values: list) -> str | None:
    """Why the driver (with the writers installed in this process) cannot write `values` as a
    column of `type_text`, or None when it can.  Nothing is sent anywhere; `values` is left as it was."""
    buf = BufferedSocketWriter(_Discard(), defines.BUFFER_SIZE)
    try:
        service.write_column(_context(), "c", type_text, list(values), buf, types_check=False)
    except Exception as exc:  # whatever the driver raises: it is the answer
        return f"{type(exc).__name__}: {exc}"
    return None
