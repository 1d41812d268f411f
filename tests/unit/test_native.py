"""workers/clickhouse/native.py: the fast column writers write exactly the driver's bytes, and raise its errors.

Every comparison serialises the same column twice, once with the driver's own
classes (``native.uninstall()``) and once with ours, through the driver's
``write_column`` into a socket writer with a tiny buffer (so the flush points are
compared too), and asserts identical bytes, identical errors, and identical
in-place changes to the items list.
"""

from __future__ import annotations

import logging
import string
from datetime import datetime, timedelta, timezone
from uuid import UUID

import clickhouse_driver
import pytest
from clickhouse_driver import defines, errors
from clickhouse_driver.bufferedwriter import BufferedSocketWriter
from clickhouse_driver.columns import service
from clickhouse_driver.columns.arraycolumn import ArrayColumn
from clickhouse_driver.columns.datetimecolumn import DateTime64Column, DateTimeColumn
from clickhouse_driver.columns.stringcolumn import ByteFixedString, FixedString, String
from clickhouse_driver.columns.uuidcolumn import UUIDColumn
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.util.compat import get_localzone_name_compat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import micro
from workers.clickhouse import native

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _restore_install_state():
    was = native.installed()
    yield
    (native.install if was else native.uninstall)()


def _context(
    server_tz: str | None = None,
    strings_as_bytes: bool = False,
    null_as_default: bool = False,
    encoding: str = defines.STRINGS_ENCODING,
) -> Context:
    revision = defines.CLIENT_REVISION
    context = Context()
    zone = server_tz or get_localzone_name_compat()
    context.server_info = ServerInfo("ClickHouse", 23, 8, 1, revision, zone, "test", revision)
    context.settings = {}
    context.client_settings = {
        "insert_block_size": defines.DEFAULT_INSERT_BLOCK_SIZE,
        "strings_as_bytes": strings_as_bytes,
        "strings_encoding": encoding,
        "use_numpy": False,
        "input_format_null_as_default": null_as_default,
    }
    return context


def _write(spec: str, items: list, fast: bool, types_check: bool = False, **context_options):
    """(flushed chunks, the items list afterwards, the error as (type, text) or None)."""
    (native.install if fast else native.uninstall)()
    sock = micro.CountingSocket(keep=True)
    buf = BufferedSocketWriter(sock, 64)  # tiny: many flushes, each at the same byte, or not
    error = None
    try:
        service.write_column(_context(**context_options), "c", spec, items, buf, types_check=types_check)
    except Exception as exc:  # the same error, whatever it is
        error = (type(exc), str(exc))
    buf.flush()
    return sock.kept, items, error


def assert_same(spec: str, items: list, **options) -> None:
    stock = _write(spec, _copy(items), fast=False, **options)
    fast = _write(spec, _copy(items), fast=True, **options)
    if not items and stock[2] == (IndexError, "list index out of range") and spec.startswith("Tuple("):
        # The one error the stock writer has that ours has not: a Tuple of no rows (TupleColumnOfAnySize).
        assert fast[2] is None and b"".join(fast[0]) == b""  # no rows: no bytes
        return
    assert fast[2] == stock[2]
    assert fast[0] == stock[0]
    assert fast[1] == stock[1]


def _copy(value):
    return [_copy(x) for x in value] if isinstance(value, list) else value


# --------------------------------------------------------------------------- strategies

uuids = st.uuids()
epochs = st.integers(0, 2**32 - 1)
zones = st.sampled_from([None, timezone.utc, timezone(timedelta(hours=3)), timezone(timedelta(hours=-7, minutes=-30))])
datetimes = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1970, 1, 3), max_value=datetime(2105, 1, 1)),
    zones,
)
ascii_text = st.text(alphabet=string.printable, max_size=5)
any_text = st.text(max_size=5)


def fixed(n: int):
    """FixedString(n) values: mostly exactly n ASCII chars (the fast path), sometimes anything."""
    exact = st.text(alphabet=string.ascii_letters + string.digits, min_size=n, max_size=n)
    return st.one_of(exact, exact, exact, st.text(max_size=n + 1), st.binary(max_size=n + 1))


def columns(values, min_size: int = 0):
    return st.lists(values, min_size=min_size, max_size=40)


# --------------------------------------------------------------------------- UUID

@EXAMPLES
@given(columns(uuids))
def test_uuid(items):
    assert_same("UUID", items)


@EXAMPLES
@given(columns(st.one_of(uuids, uuids.map(str), uuids.map(lambda u: u.hex), st.just(0))))
def test_uuid_strings_and_zero_fall_back(items):
    assert_same("UUID", items)


@EXAMPLES
@given(columns(st.one_of(st.none(), uuids)), st.booleans())
def test_nullable_uuid(items, null_as_default):
    assert_same("Nullable(UUID)", items, null_as_default=null_as_default)


@pytest.mark.parametrize("bad", ["not-a-uuid", None, 5, b"\x00" * 15, 1.5])
def test_uuid_bad_values_raise_the_drivers_error(bad):
    assert_same("UUID", [UUID(int=1), bad, UUID(int=2)])
    assert_same("Nullable(UUID)", [UUID(int=1), None, bad])


def _packed(items: list) -> list:
    """The items as the mapper's fast path hands them over: UUIDs packed (native.pack_uuids), None kept."""
    return [None if u is None else native.pack_uuids(u.bytes)[0] for u in items]


@EXAMPLES
@given(columns(uuids))
def test_packed_uuids_are_written_as_the_driver_writes_the_uuids(items):
    stock = _write("UUID", list(items), fast=False)
    fast = _write("UUID", _packed(items), fast=True)
    assert fast[2] is None and stock[2] is None
    assert b"".join(fast[0]) == b"".join(stock[0])
    assert [native.unpack_uuid(p) for p in _packed(items)] == items


@EXAMPLES
@given(columns(st.one_of(st.none(), uuids)), st.lists(st.booleans(), max_size=40), st.booleans())
def test_packed_uuids_mixed_with_uuids_and_nulls(items, which, null_as_default):
    # Batches joined: some parts mapped by the fast path (packed), some value by value (UUID objects).
    packed = _packed(items)
    mixed = [packed[i] if i < len(which) and which[i] else u for i, u in enumerate(items)]
    spec = "Nullable(UUID)"
    stock = _write(spec, list(items), fast=False, null_as_default=null_as_default)
    fast = _write(spec, list(mixed), fast=True, null_as_default=null_as_default)
    assert fast[2] == stock[2]
    assert b"".join(fast[0]) == b"".join(stock[0])
    if None not in items:
        stock = _write("UUID", list(items), fast=False)
        fast = _write("UUID", list(mixed), fast=True)
        assert (b"".join(fast[0]), fast[2]) == (b"".join(stock[0]), stock[2])


def test_packed_uuid_is_the_wire_order():
    u = UUID("00112233-4455-6677-8899-aabbccddeeff")
    (p,) = native.pack_uuids(u.bytes)
    assert p == bytes.fromhex("7766554433221100ffeeddccbbaa9988")
    chunks, items, error = _write("UUID", [p], fast=True)
    assert error is None and items == [p]  # left as it is: a retry sends the same list again
    assert b"".join(chunks) == p


def test_uuid_edge_values():
    for items in (
        [],
        [UUID(int=0)],
        [UUID(int=2**128 - 1)],
        [UUID(int=2**64), UUID(int=2**64 - 1)],
        [None],
        [None, None],
    ):
        assert_same("Nullable(UUID)", list(items))
        if None not in items:
            assert_same("UUID", list(items))


def test_uuid_is_two_uint64_high_half_first():
    u = UUID("00112233-4455-6677-8899-aabbccddeeff")
    chunks, items, error = _write("UUID", [u], fast=True)
    assert error is None and items == [u.int]  # rewritten in place, as the driver does
    assert b"".join(chunks) == bytes.fromhex("7766554433221100ffeeddccbbaa9988")


@pytest.mark.parametrize("ints", [[-1], [2**128], [1, 2**200], [1.5], [True, 0]])
def test_uuid_write_items_of_odd_ints_is_the_drivers(ints):
    # Only before_write_items' ints reach write_items in a driver INSERT; anything else
    # (written directly) is masked by the driver's own code, or fails in it.
    results = []
    for cls in (UUIDColumn, native.FastUUIDColumn):
        sock = micro.CountingSocket(keep=True)
        buf = BufferedSocketWriter(sock, 64)
        try:
            cls(context=_context()).write_items(list(ints), buf)
            error = None
        except Exception as exc:
            error = (type(exc), str(exc))
        buf.flush()
        results.append((sock.kept, error))
    assert results[0] == results[1]


# --------------------------------------------------------------------------- DateTime

@EXAMPLES
@given(
    columns(epochs),
    st.sampled_from(["DateTime", "DateTime('UTC')", "DateTime('Asia/Tokyo')"]),
    st.sampled_from([None, "America/New_York"]),
)
def test_datetime_ints(items, spec, server_tz):
    assert_same(spec, items, server_tz=server_tz)


@EXAMPLES
@given(
    columns(st.one_of(epochs, datetimes)),
    st.sampled_from(["DateTime", "DateTime('UTC')", "DateTime('Europe/Moscow')"]),
    st.sampled_from([None, "UTC", "Asia/Kolkata"]),
)
def test_datetime_objects_fall_back(items, spec, server_tz):
    assert_same(spec, items, server_tz=server_tz)


@EXAMPLES
@given(columns(st.one_of(st.none(), epochs, datetimes)), st.booleans())
def test_nullable_datetime(items, null_as_default):
    assert_same("Nullable(DateTime)", items, null_as_default=null_as_default)
    assert_same("Nullable(DateTime('UTC'))", items, null_as_default=null_as_default)


@pytest.mark.parametrize("bad", [-1, 2**32, "2024-01-01", None, 1.5, True])
def test_datetime_bad_values_raise_the_drivers_error(bad):
    assert_same("DateTime", [0, bad, 1])


def test_datetime_edge_values():
    for items in ([], [0], [2**32 - 1], [None]):
        assert_same("Nullable(DateTime)", list(items))
        assert_same("DateTime", list(items))


def test_datetime_non_null_default_and_types_check():
    items = [1, None, datetime(2020, 1, 1), 3]
    assert_same("DateTime", items, null_as_default=True)
    assert_same("DateTime", [1, 2, datetime(2020, 1, 1)], types_check=True)
    assert_same("DateTime", [1, "x"], types_check=True)


# --------------------------------------------------------------------------- FixedString

@EXAMPLES
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), columns(fixed(n)))))
def test_fixed_string(n_items):
    n, items = n_items
    assert_same(f"FixedString({n})", items)


@EXAMPLES
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), columns(st.one_of(st.none(), fixed(n))))))
def test_nullable_fixed_string(n_items):
    n, items = n_items
    assert_same(f"Nullable(FixedString({n}))", items)


@pytest.mark.parametrize(
    "items",
    [
        [],
        ["DE"],
        ["DE", "FR", "US"],
        ["D", "FR"],  # short: NUL-padded by the driver
        ["", ""],
        ["DE", "FRA"],  # too long
        ["é", "DE"],  # 2 UTF-8 bytes, 1 char
        ["éé"],  # 4 UTF-8 bytes, 2 chars: too long
        ["\x00A", "B\x00"],  # NULs of their own, exactly 2 chars
        ["A\x00", "B"],
        ["DE", None],
        ["DE", b"FR"],
        ["DE", 12],
        ["ABC", "D"],  # right total length, wrong split
        ["A", "BCD"],
    ],
)
def test_fixed_string_edge_values(items):
    assert_same("FixedString(2)", items)


def test_fixed_string_other_encoding_and_bytes_mode():
    class _Str(str):
        def encode(self, *args, **kwargs):  # a subclass may encode differently: the driver's business
            return b"zz"

    assert_same("FixedString(2)", ["DE", _Str("FR")])
    assert_same("FixedString(2)", [b"DE", b"F"], strings_as_bytes=True)
    for encoding in ("utf-16-le", "latin-1", "utf8", "UTF-8"):
        assert_same("FixedString(4)", ["ABCD", "EFGH"], encoding=encoding)
        assert_same("FixedString(8)", ["ABCD", "EFGH"], encoding=encoding)


# --------------------------------------------------------------------------- Array

def _values(spec: str):
    """A strategy for one value of `spec` (the types these tests use)."""
    if spec.startswith("Array("):
        return st.lists(_values(spec[6:-1]), max_size=4)
    if spec.startswith("Nullable("):
        return st.one_of(st.none(), _values(spec[9:-1]))
    if spec.startswith("FixedString("):
        return fixed(int(spec[12:-1]))
    return {
        "String": any_text,
        "UInt8": st.integers(0, 255),
        "Int64": st.integers(-(2**63), 2**63 - 1),
        "Float64": st.floats(allow_nan=False),
        "UUID": uuids,
        "DateTime": st.one_of(epochs, epochs, datetimes),
    }[spec]


ARRAY_SPECS = [
    "Array(String)",
    "Array(UInt8)",
    "Array(Int64)",
    "Array(Float64)",
    "Array(UUID)",
    "Array(DateTime)",
    "Array(FixedString(2))",
    "Array(Nullable(String))",
    "Array(Nullable(UUID))",
    "Array(Array(UInt8))",
    "Array(Array(String))",
    "Array(Array(Nullable(UInt8)))",
    "Array(Array(Array(Int64)))",
]


@EXAMPLES
@given(st.sampled_from(ARRAY_SPECS).flatmap(lambda spec: st.tuples(st.just(spec), columns(_values(spec)))))
def test_arrays(spec_items):
    spec, items = spec_items
    assert_same(spec, items)


@pytest.mark.parametrize("spec", ARRAY_SPECS)
def test_array_edge_values(spec):
    assert_same(spec, [])
    assert_same(spec, [[]])
    assert_same(spec, [[], [], []])
    if spec.startswith("Array(Array("):
        assert_same(spec, [[[]], [], [[], []]])


@pytest.mark.parametrize(
    "items",
    [
        [["a"], None, ["b"]],  # a None row
        [["a"], 5],  # a row without len()
        [("a", "b"), ["c"]],  # tuples are rows too
        ["ab", ["c"]],  # a str row is iterated, as by the driver
        [["a", 5]],  # a bad item
        [["é", "\udc80"]],  # an item UTF-8 cannot encode
    ],
)
def test_array_bad_and_odd_rows(items):
    assert_same("Array(String)", items)
    assert_same("Array(String)", items, null_as_default=True)
    assert_same("Array(String)", items, types_check=True)


def test_nested_array_bad_rows():
    assert_same("Array(Array(UInt8))", [[[1], None]])
    assert_same("Array(Array(UInt8))", [[[1], [256]]])
    assert_same("Array(Array(UInt8))", [[[1]], [[2, "x"]]])


def test_nullable_array_spec_is_left_to_the_driver():
    # ClickHouse has no Nullable(Array(...)); the driver still writes something for it.
    assert_same("Nullable(Array(String))", [["a"], None, []])
    assert_same("Nullable(Array(String))", [["a"], [], ["b", "c"]])
    assert_same("Array(Nullable(Array(UInt8)))", [[[1], None], [None]])
    assert_same("Array(Nullable(Array(UInt8)))", [[[1], [2, 3]], []])


# --------------------------------------------------------------------------- inside other columns

@pytest.mark.parametrize(
    "spec, items",
    [
        ("LowCardinality(FixedString(2))", ["DE", "FR", "DE", "X"]),
        ("LowCardinality(Nullable(FixedString(2)))", ["DE", None, "DE", "FR"]),
        ("LowCardinality(Nullable(String))", ["a", None, "a"]),
        ("Array(LowCardinality(String))", [["a", "b"], [], ["a"]]),
        ("Array(LowCardinality(Nullable(String)))", [["a", None], [], [None]]),
        (
            "Tuple(UUID, DateTime, Array(String), FixedString(2))",
            [(UUID(int=1), 5, ["a"], "DE"), (UUID(int=2), 6, [], "FR")],
        ),
        ("Tuple(Nullable(UUID), Nullable(DateTime))", [(None, None), (UUID(int=3), 7)]),
        ("Array(Tuple(UUID, FixedString(2)))", [[(UUID(int=1), "DE")], [], [(UUID(int=2), "F"), (UUID(int=3), "US")]]),
        ("Map(String, Array(UUID))", [{"a": [UUID(int=1)], "b": []}, {}]),
        ("Map(String, DateTime)", [{"a": 1, "b": datetime(2020, 1, 1)}, {}]),
        ("Nested(a UUID, b Array(String))", [[(UUID(int=1), ["x"])], []]),
    ],
)
def test_inside_other_columns(spec, items):
    assert_same(spec, items)
    assert_same(spec, [])


# --------------------------------------------------------------------------- whole blocks

def test_demo_block_is_identical():
    names, types, packed = micro.demo_block(500)  # as a worker maps it: UUIDs packed for our writers
    as_uuids = [list(map(native.unpack_uuid, c)) if n == "session_id" else c
                for n, c in zip(names, packed, strict=True)]
    serialiser = micro.Serialiser(names, types, keep=True)
    native.uninstall()
    serialiser.write(as_uuids)
    stock = serialiser.socket.kept[:]
    native.install()
    for columns_ in (packed, as_uuids):
        serialiser.socket.kept.clear()
        serialiser.write(columns_)
        assert serialiser.socket.kept == stock


def test_fast_paths_are_taken(monkeypatch):
    """Qualifying columns never reach the driver's per-item code (else these tests would test only it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the driver's own writer ran")

    for cls, name in [
        (UUIDColumn, "before_write_items"),
        (UUIDColumn, "write_items"),
        (DateTimeColumn, "before_write_items"),
        (FixedString, "write_items"),
        (ArrayColumn, "_write_sizes"),
        (ArrayColumn, "_write_nulls_data"),
    ]:
        monkeypatch.setattr(cls, name, refuse)
    for spec, items in [
        ("UUID", [UUID(int=1), UUID(int=2)]),
        ("Nullable(UUID)", [UUID(int=1), None]),
        ("DateTime('UTC')", [1, 2]),
        ("Nullable(DateTime)", [1, None]),
        ("FixedString(2)", ["DE", "FR"]),
        ("Array(Array(UUID))", [[[UUID(int=1)], []], []]),
        ("Array(Nullable(String))", [["a", None]]),
    ]:
        assert _write(spec, items, fast=True)[2] is None, spec


# --------------------------------------------------------------------------- install

def test_install_is_idempotent_and_swaps_the_classes():
    native.uninstall()
    stock_factory = service.create_array_column
    assert native.install() is True
    patched = service.create_array_column
    assert native.install() is True
    assert service.create_array_column is patched and patched.__wrapped__ is stock_factory

    options = {"context": _context(), "types_check": False}
    get = service.get_column_by_spec
    assert type(get("UUID", dict(options))) is native.FastUUIDColumn
    assert type(get("FixedString(3)", dict(options))) is native.FastFixedString
    assert type(get("String", dict(options))) is String
    utc = get("DateTime('UTC')", dict(options))
    assert type(utc) is native.FastDateTimeColumn and utc.timezone.zone == "UTC" and utc.offset_naive is False
    assert type(get("DateTime64(3)", dict(options))) is DateTime64Column
    nested = get("Array(Array(Nullable(UUID)))", dict(options))
    assert type(nested) is type(nested.nested_column) is native.FastArrayColumn
    assert (
        type(nested.nested_column.nested_column) is native.FastUUIDColumn
        and nested.nested_column.nested_column.nullable
    )
    options["context"] = _context(strings_as_bytes=True)
    assert type(get("FixedString(2)", dict(options))) is ByteFixedString

    native.uninstall()
    native.uninstall()
    assert service.create_array_column is stock_factory and service.column_by_type["UUID"] is UUIDColumn
    assert type(get("UUID", {"context": _context(), "types_check": False})) is UUIDColumn


@pytest.mark.parametrize("version", [(0, 3, 0), (0, 1, 9), (1, 0, 0)])
def test_install_leaves_an_unknown_driver_alone(monkeypatch, caplog, version):
    native.uninstall()
    monkeypatch.setattr(clickhouse_driver, "VERSION", version)
    monkeypatch.setattr(native, "_declined", False)
    with caplog.at_level(logging.INFO, logger="workers.clickhouse.native"):
        assert native.install() is False
        assert native.install() is False
    assert len(caplog.records) == 1 and "keeping its own column writers" in caplog.records[0].getMessage()
    assert not native.installed() and service.column_by_type["UUID"] is UUIDColumn
    assert type(service.get_column_by_spec("Array(UUID)", {"context": _context()})) is ArrayColumn


def test_errors_are_the_drivers_own_types():
    # A few of the errors the comparisons above pin, spelled out.
    assert _write("FixedString(2)", ["DEU"], fast=True)[2][0] is errors.TooLargeStringSize
    assert _write("UUID", ["nope"], fast=True)[2][0] is errors.CannotParseUuidError
    assert _write("DateTime", [2**32], fast=True)[2][0] is errors.TypeMismatchError


# --------------------------------------------------------------------------- Map and Tuple specs

@EXAMPLES
@given(columns(st.dictionaries(ascii_text, st.one_of(st.none(), st.integers(0, 255)), max_size=4)))
def test_map_the_driver_splits_right_is_written_as_it_writes_it(items):
    assert_same("Map(String, Nullable(UInt8))", items)
    assert_same("Map(String, Array(Nullable(UInt8)))", [{k: [v] for k, v in m.items()} for m in items])


@EXAMPLES
@given(columns(st.tuples(st.integers(-128, 127), any_text, st.lists(st.integers(0, 255), max_size=3))))
def test_tuple_the_driver_splits_right_is_written_as_it_writes_it(items):
    assert_same("Tuple(a Int8, b String, c Array(UInt8))", items)
    assert_same("Tuple(Int8, String, Array(UInt8))", items)


def test_map_of_tuples_is_written_where_the_driver_raises():
    spec = "Map(String, Tuple(x Int8, y Nullable(String)))"
    items = [{"k": (1, None), "l": (2, "z")}, {}]
    assert _write(spec, _copy(items), fast=False)[2][0] is ValueError  # the driver's naive split
    chunks, _, error = _write(spec, _copy(items), fast=True)
    assert error is None
    # The same bytes as the Map's parts written by the driver's own columns, one after the other.
    offsets = _write("UInt64", [2, 2], fast=False)[0]
    keys = _write("String", ["k", "l"], fast=False)[0]
    values = _write("Tuple(Int8, Nullable(String))", [(1, None), (2, "z")], fast=False)[0]
    assert b"".join(chunks) == b"".join(offsets + keys + values)


def test_tuple_names_with_commas_and_parentheses():
    spec = "Tuple(`a b` Int32, `e,f(g)` Map(String, Tuple(Int8, Int8)))"
    chunks, _, error = _write(spec, [(1, {"k": (1, 2)})], fast=True)
    assert error is None
    assert b"".join(chunks) == b"".join(_write("Tuple(Int32, Map(String, Tuple(Int8, Int8)))", [(1, {"k": (1, 2)})],
                                               fast=True)[0])


def test_json_is_written_as_one_document_per_row():
    chunks, _, error = _write("JSON(a UInt8, SKIP b)", [b'{"a":1}', {}], fast=True)
    assert error is None
    assert b"".join(chunks) == (1).to_bytes(8, "little") + b'\x07{"a":1}' + b"\x02{}"
    options = {"context": _context(), "types_check": False}
    assert type(service.get_column_by_spec("JSON", options)) is native.JsonAsStringColumn


@pytest.mark.parametrize("spec, items, raw", [
    ("BFloat16", [0x3FC0], b"\xc0\x3f"),
    ("Time", [-1], b"\xff\xff\xff\xff"),
    ("Time64(3)", [1], (1).to_bytes(8, "little")),
])
def test_types_the_driver_lacks_are_their_integers(spec, items, raw):
    chunks, _, error = _write(spec, items, fast=True)
    assert error is None and b"".join(chunks) == raw


# --------------------------------------------------------------------------- columns handed over

def test_handed_over_columns_go_to_the_driver_without_copies():
    import clickhouse_driver.client

    columns = [[1, 2, 3], ["a", "b", "c"]]
    native.install()
    try:
        with native.columns_handed_over():
            (chunk,) = clickhouse_driver.client.column_chunks(columns, 1000)
            assert all(a is b for a, b in zip(chunk, columns, strict=True))  # the lists themselves
            # More rows than a block: the driver's own cutting (copies), block by block.
            assert list(clickhouse_driver.client.column_chunks(columns, 2)) == [[[1, 2], ["a", "b"]], [[3], ["c"]]]
            assert list(clickhouse_driver.client.column_chunks([[], []], 1000)) == []
        (chunk,) = clickhouse_driver.client.column_chunks(columns, 1000)  # not handed over: copies
        assert chunk == columns and not any(a is b for a, b in zip(chunk, columns, strict=True))
    finally:
        native.uninstall()
    assert clickhouse_driver.client.column_chunks is clickhouse_driver.util.helpers.column_chunks
