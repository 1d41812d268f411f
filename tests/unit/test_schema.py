"""workers/schema.py: type parsing, version gating, strict converters, row mapping."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings, strategies as st

from workers.schema import (
    ClickHouseType,
    MappingError,
    SchemaError,
    ServerFeatures,
    TableColumn,
    build_converter,
    _compile_type,
    compile_mapper,
    parse_type,
)

MODERN = ServerFeatures.from_version((23, 8, 1))
OLD = ServerFeatures.from_version((18, 16, 1))


@dataclass(frozen=True)
class Override:  # the duck-typed shape of supervisor.config.ColumnOverride
    column: str
    path: tuple[str, ...] | None = None
    required: bool = False
    has_default: bool = False
    default: Any = None
    epoch_unit: str = "s"


def conv(type_text: str, features: ServerFeatures = MODERN, epoch_unit: str = "s"):
    return build_converter(type_text, features, epoch_unit)


def rejects(type_text: str, value: Any, reason: str, features: ServerFeatures = MODERN, epoch_unit: str = "s") -> str:
    with pytest.raises(MappingError) as info:
        conv(type_text, features, epoch_unit)(value)
    assert info.value.reason == reason, str(info.value)
    return info.value.detail


def T(name: str, *args: Any) -> ClickHouseType:
    return ClickHouseType(name, tuple(args))


# --------------------------------------------------------------------------- parsing

@pytest.mark.parametrize(
    "text, expected",
    [
        ("UInt64", T("UInt64")),
        (
            "Nullable(Array(LowCardinality(String)))",
            T("Nullable", T("Array", T("LowCardinality", T("String")))),
        ),
        ("Enum8('a\\'b' = 1, 'c''d' = -2, 'e,f' = 3)", T("Enum8", ("a'b", 1), ("c'd", -2), ("e,f", 3))),
        ("DateTime('Europe/Berlin')", T("DateTime", "Europe/Berlin")),
        ("DateTime64(3, 'UTC')", T("DateTime64", 3, "UTC")),
        ("DateTime64(6)", T("DateTime64", 6)),
        ("Decimal(18, 4)", T("Decimal", 18, 4)),
        ("Decimal64(4)", T("Decimal64", 4)),
        ("FixedString(16)", T("FixedString", 16)),
        ("Map(String, Array(Nullable(UInt8)))", T("Map", T("String"), T("Array", T("Nullable", T("UInt8"))))),
        ("Tuple(a String, b Nullable(Int8))", T("Tuple", ("a", T("String")), ("b", T("Nullable", T("Int8"))))),
        ("  Array( Array(Int32) )  ", T("Array", T("Array", T("Int32")))),
    ],
)
def test_parse_type(text, expected):
    assert parse_type(text) == expected


@pytest.mark.parametrize(
    "text", ["", "Array(", "Array(String", "Enum8('a = 1)", "UInt8)", "Map(String,)", "Array(String) x", "Int$"]
)
def test_parse_type_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_type(text)


@pytest.mark.parametrize("text", ["Nothing", "AggregateFunction(uniq, String)", "Object('json')", "Point", "Foo(Bar)"])
def test_unsupported_type_is_schema_error_naming_table_column_type(text):
    with pytest.raises(SchemaError) as info:
        compile_mapper("db.events", [TableColumn("c", text)], [], MODERN)
    assert "db.events" in str(info.value) and "column c" in str(info.value) and text in str(info.value)


def test_malformed_type_is_schema_error():
    with pytest.raises(SchemaError, match="cannot parse type"):
        compile_mapper("t", [TableColumn("c", "Array(")], [], MODERN)


# --------------------------------------------------------------------------- server features

def test_old_server_rejects_new_types_listing_every_problem():
    columns = [
        TableColumn("attrs", "Map(String, UInt64)"),
        TableColumn("ip", "IPv4"),
        TableColumn("ts", "DateTime64(3)"),
        TableColumn("ok", "Bool"),
        TableColumn("tag", "LowCardinality(String)"),
        TableColumn("fine", "String"),
    ]
    with pytest.raises(SchemaError) as info:
        compile_mapper("default.events", columns, [], OLD)
    problems = info.value.problems
    assert len(problems) == 5
    text = str(info.value)
    for column, needed in [("attrs", "21.8"), ("ip", "19.3"), ("ts", "20.1"), ("ok", "21.12"), ("tag", "19.9")]:
        assert any(f"column {column}:" in p and f">= {needed}" in p and "18.16.1" in p for p in problems), text
    assert "fine" not in text


def test_nested_new_type_is_found_inside_containers():
    with pytest.raises(SchemaError, match=r"column ips: type Array\(Nullable\(IPv6\)\) needs ClickHouse >= 19.3"):
        compile_mapper("t", [TableColumn("ips", "Array(Nullable(IPv6))")], [], OLD)


def test_modern_server_accepts_new_types():
    columns = [
        TableColumn("attrs", "Map(String, UInt64)"),
        TableColumn("ip", "IPv4"),
        TableColumn("ts", "DateTime64(3, 'UTC')"),
        TableColumn("ok", "Bool"),
        TableColumn("tag", "LowCardinality(String)"),
        TableColumn("d", "Date32"),
        TableColumn("big", "Int256"),
    ]
    mapper = compile_mapper("t", columns, [], MODERN)
    assert mapper.column_names == tuple(c.name for c in columns)


def test_feature_properties_by_version():
    assert not OLD.datetime64 and not OLD.map and not OLD.ipv4_ipv6 and not OLD.bool_type
    assert not OLD.low_cardinality and not OLD.insert_deduplication_token and not OLD.opentelemetry_traceparent
    assert MODERN.datetime64 and MODERN.map and MODERN.ipv4_ipv6 and MODERN.bool_type and MODERN.date32
    assert MODERN.low_cardinality and MODERN.insert_deduplication_token and MODERN.opentelemetry_traceparent
    assert not ServerFeatures.from_version((22, 1)).insert_deduplication_token
    assert ServerFeatures.from_version((22, 2)).insert_deduplication_token
    assert not ServerFeatures.from_version((21, 7, 9)).map and ServerFeatures.from_version((21, 8)).map
    assert OLD.date_range[1] == date(2105, 12, 31) and MODERN.date_range[1] == date(2149, 6, 6)


# --------------------------------------------------------------------------- integers

@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_uint8_accepts_exactly_its_range(v):
    c = conv("UInt8")
    if 0 <= v <= 255:
        assert c(v) == v
    else:
        with pytest.raises(MappingError) as info:
            c(v)
        assert info.value.reason == "out_of_range"


@pytest.mark.parametrize(
    "type_text, lo, hi",
    [
        ("Int8", -128, 127), ("Int16", -(2**15), 2**15 - 1), ("Int32", -(2**31), 2**31 - 1),
        ("Int64", -(2**63), 2**63 - 1), ("UInt16", 0, 2**16 - 1), ("UInt32", 0, 2**32 - 1),
        ("UInt64", 0, 2**64 - 1), ("Int128", -(2**127), 2**127 - 1), ("UInt256", 0, 2**256 - 1),
    ],
)
def test_int_boundaries(type_text, lo, hi):
    c = conv(type_text)
    assert c(lo) == lo and c(hi) == hi
    rejects(type_text, lo - 1, "out_of_range")
    rejects(type_text, hi + 1, "out_of_range")


def test_int_type_strictness():
    assert conv("Int32")(3.0) == 3 and type(conv("Int32")(3.0)) is int
    rejects("Int32", 3.5, "wrong_type")
    rejects("Int64", float(2**53), "wrong_type")  # cannot prove the sender meant exactly this integer
    rejects("UInt8", -1.0, "out_of_range")
    rejects("Int32", True, "wrong_type")  # a JSON boolean is not a number
    rejects("Int32", "12", "wrong_type")
    detail = rejects("Int32", None, "wrong_type")
    assert "null" in detail


def test_big_ints_accept_canonical_decimal_strings():
    assert conv("Int128")("-170141183460469231731687303715884105728") == -(2**127)
    assert conv("UInt256")(str(2**256 - 1)) == 2**256 - 1
    for bad in ["+5", "05", " 5", "5.0", "1e3", "0x10"]:
        rejects("Int128", bad, "invalid_value")
    rejects("UInt128", "-1", "out_of_range")


# --------------------------------------------------------------------------- floats, bool, strings

def test_floats():
    assert conv("Float64")(1.5) == 1.5
    assert conv("Float64")(2**53) == float(2**53)
    rejects("Float64", 2**53 + 1, "out_of_range")  # would be stored as 2**53
    rejects("Float64", 10**400, "out_of_range")
    assert conv("Float32")(16777216) == 16777216.0
    rejects("Float32", 16777217, "out_of_range")
    rejects("Float32", 3.5e38, "out_of_range")
    rejects("Float32", 1e-50, "out_of_range")  # would silently become 0
    assert conv("Float32")(-3.4e38) == -3.4e38
    rejects("Float64", "1.5", "wrong_type")
    rejects("Float64", False, "wrong_type")


def test_bool_and_strings():
    assert conv("Bool")(True) is True and conv("Bool")(False) is False
    rejects("Bool", 1, "wrong_type")
    rejects("Bool", "true", "wrong_type")
    assert conv("String")("héllo") == "héllo"
    rejects("String", 5, "wrong_type")
    rejects("String", ["a"], "wrong_type")
    assert conv("FixedString(4)")("abcd") == "abcd"
    assert conv("FixedString(4)")("ab") == "ab"
    assert conv("FixedString(4)")("éé") == "éé"  # 4 UTF-8 bytes
    rejects("FixedString(4)", "abcde", "out_of_range")
    rejects("FixedString(4)", "ééa", "out_of_range")  # 3 chars, 5 bytes
    rejects("FixedString(2)", "\ud800", "invalid_value")


# --------------------------------------------------------------------------- dates

def test_date():
    assert conv("Date")("2026-11-26") == date(2026, 11, 26)
    assert conv("Date")("2149-06-06") == date(2149, 6, 6)
    rejects("Date", "2149-06-07", "out_of_range")
    rejects("Date", "1969-12-31", "out_of_range")
    rejects("Date", "2106-01-01", "out_of_range", features=OLD)
    assert conv("Date", OLD)("2105-12-31") == date(2105, 12, 31)
    for bad in ["2026-02-30", "2026-1-5", "20261126", "2026-11-26T00:00:00Z", "2026-W48-4", " 2026-11-26", "２０２６-11-26"]:
        rejects("Date", bad, "invalid_value")
    rejects("Date", 20000, "wrong_type")
    assert conv("Date32")("1900-01-01") == date(1900, 1, 1)


def test_datetime_strings():
    c = conv("DateTime")
    expected = int(datetime(2026, 11, 26, 12, 34, 56, tzinfo=timezone.utc).timestamp())
    for text in [
        "2026-11-26T12:34:56Z", "2026-11-26 12:34:56Z", "2026-11-26t12:34:56z", "2026-11-26T14:34:56+02:00",
        "2026-11-26T10:04:56-0230", "2026-11-26T12:34:56.000Z",
    ]:
        assert c(text) == expected, text
    assert type(c("2026-11-26T12:34:56Z")) is int
    assert "offset" in rejects("DateTime", "2026-11-26T12:34:56", "invalid_value")
    assert "DateTime64(3)" in rejects("DateTime", "2026-11-26T12:34:56.5Z", "out_of_range")
    for bad in ["2026-11-26T24:00:00Z", "2026-02-29T00:00:00Z", "2026-11-26T12:34:60Z", "2026-11-26T12:34Z",
                "2026-11-26T12:34:56+24:00", "2026-11-26T12:34:56 Z", "1700000000"]:
        rejects("DateTime", bad, "invalid_value")
    rejects("DateTime", "1969-12-31T23:59:59Z", "out_of_range")
    assert c("2106-02-07T06:28:15Z") == 2**32 - 1
    rejects("DateTime", "2106-02-07T06:28:16Z", "out_of_range")
    rejects("DateTime", "2106-01-01T00:00:00Z", "out_of_range", features=OLD)


def test_datetime_naive_strings_need_a_column_time_zone():
    assert conv("DateTime('UTC')")("2026-11-26 12:34:56") == conv("DateTime")("2026-11-26T12:34:56Z")
    berlin = conv("DateTime('Europe/Berlin')")
    assert berlin("2026-07-01 12:00:00") == conv("DateTime")("2026-07-01T10:00:00Z")
    assert berlin("2026-01-01 12:00:00") == conv("DateTime")("2026-01-01T11:00:00Z")
    assert berlin("2026-07-01T12:00:00Z") == conv("DateTime")("2026-07-01T12:00:00Z")  # explicit offset wins
    rejects("DateTime('Europe/Berlin')", "2026-10-25 02:30:00", "invalid_value")  # happens twice
    rejects("DateTime('Europe/Berlin')", "2026-03-29 02:30:00", "invalid_value")  # never happens


def test_datetime_epoch_numbers():
    assert conv("DateTime")(1700000000) == 1700000000
    assert conv("DateTime")(1700000000.0) == 1700000000
    rejects("DateTime", 1700000000.5, "out_of_range")
    rejects("DateTime", -1, "out_of_range")
    ms = conv("DateTime", epoch_unit="ms")
    assert ms(1700000000000) == 1700000000
    rejects("DateTime", 1700000000123, "out_of_range", epoch_unit="ms")
    rejects("DateTime", True, "wrong_type")


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_datetime_epoch_roundtrips_through_iso_strings(epoch):
    text = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=epoch)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conv("DateTime")(text) == epoch


def test_datetime64():
    c = conv("DateTime64(3)")
    base = 1700000000
    assert c("2023-11-14T22:13:20Z") == base * 1000
    assert c("2023-11-14T22:13:20.1Z") == base * 1000 + 100
    assert c("2023-11-14T22:13:20.123Z") == base * 1000 + 123
    assert c("2023-11-14T22:13:20.123000Z") == base * 1000 + 123
    rejects("DateTime64(3)", "2023-11-14T22:13:20.1234Z", "out_of_range")
    assert conv("DateTime64(9)")("2023-11-14T22:13:20.123456789Z") == base * 10**9 + 123456789
    assert c(base) == base * 1000
    assert conv("DateTime64(3)", epoch_unit="ms")(base * 1000 + 7) == base * 1000 + 7
    assert conv("DateTime64(6)", epoch_unit="ms")(base * 1000 + 7) == (base * 1000 + 7) * 1000
    assert c(1700000000.123) == base * 1000 + 123
    rejects("DateTime64(3)", 1700000000.1234, "out_of_range")
    rejects("DateTime64(0)", base * 1000 + 7, "out_of_range", epoch_unit="ms")
    assert c("1950-01-01T00:00:00Z") < 0  # extended range on modern servers
    rejects("DateTime64(3)", "1899-12-31T23:59:59Z", "out_of_range")
    rejects("DateTime64(9)", "2263-01-01T00:00:00Z", "out_of_range")  # beyond Int64 ticks
    assert conv("DateTime64(3, 'Asia/Tokyo')")("2023-11-15 07:13:20") == base * 1000


# --------------------------------------------------------------------------- UUID, decimals, enums, IPs

def test_uuid_strictness():
    c = conv("UUID")
    u = c("6F1C2D9E-AB12-4000-8000-0000000000AB")
    assert u == UUID("6f1c2d9e-ab12-4000-8000-0000000000ab") and isinstance(u, UUID)
    assert hash(u) == hash(UUID(str(u))) and str(u) == "6f1c2d9e-ab12-4000-8000-0000000000ab"
    for bad in [
        "{6f1c2d9e-ab12-4000-8000-0000000000ab}", "6f1c2d9eab1240008000000000000000ab"[:32],
        "urn:uuid:6f1c2d9e-ab12-4000-8000-0000000000ab", "6f1c2d9e-ab12-4000-8000-0000000000a",
        "6f1c2d9e-ab12-4000-8000-0000000000abc", "6f1c2d9e-ab12-4000-8000_0000000000ab",
        "6f1c_d9e-ab12-4000-8000-0000000000ab", " 6f1c2d9-ab12-4000-8000-0000000000ab", "6f1c2d9e-ab12-4000-8000-00000000000g",
    ]:
        rejects("UUID", bad, "invalid_value")
    rejects("UUID", 5, "wrong_type")


def test_decimals():
    c = conv("Decimal(18, 4)")
    assert c("123.45") == Decimal("123.45")
    assert c("-0.0001") == Decimal("-0.0001")
    assert c("1.230000") == Decimal("1.23")
    assert c("00012") == Decimal(12)
    assert c(42) == 42
    assert c("99999999999999.9999") == Decimal("99999999999999.9999")
    rejects("Decimal(18, 4)", "100000000000000", "out_of_range")
    rejects("Decimal(18, 4)", 10**14, "out_of_range")
    rejects("Decimal(18, 4)", "1.00001", "out_of_range")  # no rounding
    rejects("Decimal(18, 4)", 1.5, "wrong_type")  # floats are not exact
    for bad in ["1e3", ".5", "5.", "+1", "1,5", "NaN", "Infinity", " 1", ""]:
        rejects("Decimal(18, 4)", bad, "invalid_value")
    assert conv("Decimal32(2)")("9999999.99") == Decimal("9999999.99")
    rejects("Decimal32(2)", "10000000", "out_of_range")
    assert conv("Decimal(76, 10)", MODERN)("1." + "0" * 9 + "1") == Decimal("1.0000000001")


@settings(max_examples=200)
@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=Decimal("-99999999999999.9999"),
                   max_value=Decimal("99999999999999.9999")))
def test_decimal_roundtrip(d):
    assert conv("Decimal(18, 4)")(format(d, "f")) == d


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=5, max_value=12))
def test_decimal_more_fraction_digits_rejected(n, places):
    text = f"{n // 10**places}.{n % 10**places:0{places}d}"
    value = Decimal(text)
    c = conv("Decimal(18, 4)")
    if value == value.quantize(Decimal("0.0001")):
        assert c(text) == value
    else:
        with pytest.raises(MappingError) as info:
            c(text)
        assert info.value.reason == "out_of_range"


def test_enum():
    t = "Enum8('low' = -1, 'mid\\'s' = 0, 'high' = 5)"
    c = conv(t)
    assert c("low") == "low" and c("mid's") == "mid's" and c(5) == "high" and c(-1) == "low"
    rejects(t, "LOW", "invalid_value")
    rejects(t, 3, "invalid_value")
    rejects(t, True, "wrong_type")


def test_ip_addresses():
    assert conv("IPv4")("10.1.2.3") == 0x0A010203
    for bad in ["010.1.2.3", "10.1.2", "10.1.2.3.4", "256.1.1.1", "::1", " 10.1.2.3", "0x0a.1.2.3", "10.1.2.3/8"]:
        rejects("IPv4", bad, "invalid_value")
    rejects("IPv4", 167837955, "wrong_type")
    assert conv("IPv6")("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")
    assert conv("IPv6")("::ffff:1.2.3.4") == bytes.fromhex("00000000000000000000ffff01020304")
    for bad in ["1.2.3.4", "fe80::1%eth0", "2001:db8::1::", "2001:db8::g"]:
        rejects("IPv6", bad, "invalid_value")


# --------------------------------------------------------------------------- containers

def test_nullable_lowcardinality_array_map_tuple():
    assert conv("Nullable(UInt8)")(None) is None
    assert conv("Nullable(UInt8)")(7) == 7
    rejects("Nullable(UInt8)", 300, "out_of_range")
    assert conv("LowCardinality(Nullable(String))")(None) is None
    detail = rejects("Array(UInt8)", [1, 2, 300], "out_of_range")
    assert detail.startswith("value[2]:")
    assert conv("Array(Array(String))")([["a"], []]) == [["a"], []]
    assert "value[1][0]" in rejects("Array(Array(String))", [["a"], [1]], "wrong_type")
    rejects("Array(String)", "abc", "wrong_type")
    assert conv("Map(String, UInt64)")({"a": 1}) == {"a": 1}
    assert conv("Map(UInt32, String)")({"7": "x", "0": "y"}) == {7: "x", 0: "y"}
    assert conv("Map(Int8, String)")({"-7": "x"}) == {-7: "x"}
    for bad in ["07", "+7", "7.0", "x"]:
        rejects("Map(UInt32, String)", {bad: "x"}, "invalid_value")
    rejects("Map(UInt8, String)", {"256": "x"}, "out_of_range")
    rejects("Map(UUID, String)", {"6f1c2d9e-ab12-4000-8000-0000000000ab": "a", "6F1C2D9E-AB12-4000-8000-0000000000AB": "b"},
            "invalid_value")  # two keys, one UUID
    assert "['a']" in rejects("Map(String, UInt8)", {"a": -1}, "out_of_range")
    assert conv("Tuple(String, UInt8)")(["a", 1]) == ("a", 1)
    assert conv("Tuple(s String, n UInt8)")({"s": "a", "n": 1}) == ("a", 1)
    rejects("Tuple(String, UInt8)", ["a"], "invalid_value")
    rejects("Tuple(s String, n UInt8)", {"s": "a", "x": 1}, "invalid_value")
    with pytest.raises(SchemaError):
        conv("Map(Float64, String)")


# --------------------------------------------------------------------------- the driver accepts what we emit

class _ServerInfo:
    def get_timezone(self) -> str:
        return "UTC"


def _driver_roundtrip(type_text: str, values: list) -> tuple:
    """Serialise with clickhouse-driver's own column writer and read it back (no server).

    types_check=False as in workers/sink.py (the driver's int type check even breaks Enum).
    """
    from clickhouse_driver.bufferedreader import BufferedSocketReader
    from clickhouse_driver.bufferedwriter import BufferedSocketWriter
    from clickhouse_driver.columns.service import read_column, write_column
    from clickhouse_driver.context import Context

    ctx = Context()
    ctx.server_info = _ServerInfo()
    ctx.settings = {}
    ctx.client_settings = {"strings_as_bytes": False, "use_numpy": False}
    a, b = socket.socketpair()
    try:
        writer = BufferedSocketWriter(a, 1 << 16)
        write_column(ctx, "c", type_text, list(values), writer, types_check=False)
        writer.flush()
        return tuple(read_column(ctx, type_text, len(values), BufferedSocketReader(b, 1 << 16)))
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "type_text, sent, read_back",
    [
        ("UInt64", [0, 2**64 - 1], (0, 2**64 - 1)),
        ("Int8", [-128, 3.0], (-128, 3)),
        ("Float32", [1.5, 7], (1.5, 7.0)),
        ("String", ["a", "é"], ("a", "é")),
        ("FixedString(4)", ["ab", "éé"], ("ab", "éé")),  # the driver strips the NUL padding on read
        ("Date", ["2026-11-26", "2149-06-06"], (date(2026, 11, 26), date(2149, 6, 6))),
        ("DateTime('UTC')", ["2026-11-26T12:34:56Z", 0], (datetime(2026, 11, 26, 12, 34, 56, tzinfo=timezone.utc),
                                                           datetime(1970, 1, 1, tzinfo=timezone.utc))),
        ("DateTime64(3, 'UTC')", ["2026-11-26T12:34:56.789Z"], (datetime(2026, 11, 26, 12, 34, 56, 789000, tzinfo=timezone.utc),)),
        ("UUID", ["6f1c2d9e-ab12-4000-8000-0000000000ab"], (UUID("6f1c2d9e-ab12-4000-8000-0000000000ab"),)),
        ("Decimal(18, 4)", ["123.4500", 7, "-0.0001"], (Decimal("123.45"), Decimal(7), Decimal("-0.0001"))),
        ("Decimal(9, 2)", ["9999999.99"], (Decimal("9999999.99"),)),
        ("Enum8('a' = 1, 'b' = 2)", ["b", 1], ("b", "a")),
        ("IPv4", ["10.1.2.3"], (__import__("ipaddress").IPv4Address("10.1.2.3"),)),
        ("IPv6", ["2001:db8::1"], (__import__("ipaddress").IPv6Address("2001:db8::1"),)),
        ("Nullable(String)", [None, "x"], (None, "x")),
        ("Array(Nullable(UInt8))", [[1, None], []], ([1, None], [])),
        ("Map(String, UInt64)", [{"a": 1}, {}], ({"a": 1}, {})),
        ("LowCardinality(String)", ["x", "y", "x"], ("x", "y", "x")),
        ("Bool", [True, False], (True, False)),
        ("Tuple(String, UInt8)", [["a", 1]], (("a", 1),)),
    ],
)
def test_driver_accepts_emitted_values(type_text, sent, read_back):
    c = conv(type_text)
    assert _driver_roundtrip(type_text, [c(v) for v in sent]) == read_back


# --------------------------------------------------------------------------- map_rows

EVENTS = [
    TableColumn("id", "UUID"),
    TableColumn("ts", "DateTime"),
    TableColumn("user", "String"),
    TableColumn("n", "UInt8"),
    TableColumn("score", "Nullable(Float64)"),
    TableColumn("day", "Date", "DEFAULT", "toDate(ts)"),
    TableColumn("ts_hour", "DateTime", "MATERIALIZED", "toStartOfHour(ts)"),
    TableColumn("uid", "String", "ALIAS", "user"),
    TableColumn("source", "String", "DEFAULT", "'api'"),
]


def good(i: int) -> dict:
    return {"id": f"00000000-0000-4000-8000-{i:012d}", "ts": 1700000000 + i, "user": f"u{i}", "n": i, "score": i / 2}


def test_map_rows_columns_and_order():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    assert mapper.column_names == ("id", "ts", "user", "n", "score", "source")
    columns, failures = mapper.map_rows([good(1), good(2)])
    assert failures == []
    assert columns == [
        [UUID("00000000-0000-4000-8000-000000000001"), UUID("00000000-0000-4000-8000-000000000002")],
        [1700000001, 1700000002],
        ["u1", "u2"],
        [1, 2],
        [0.5, 1.0],
        ["api", "api"],
    ]


def test_map_rows_isolates_bad_docs_and_keeps_order():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    docs = [good(0), {**good(1), "n": 300}, good(2), "not an object", good(3), {**good(4), "id": "nope"},
            {**good(5), "n": 256, "user": 5}, good(6)]
    columns, failures = mapper.map_rows(docs)
    assert [i for i, _ in failures] == [1, 3, 5, 6]
    assert columns[2] == ["u0", "u2", "u3", "u6"]
    assert all(len(col) == 4 for col in columns)
    reasons = {i: (e.reason, e.detail) for i, e in failures}
    assert reasons[1][0] == "out_of_range" and "column n" in reasons[1][1] and "300" in reasons[1][1]
    assert reasons[3] == ("wrong_type", "message is a JSON string, expected an object")
    assert reasons[5][0] == "invalid_value" and "column id" in reasons[5][1]
    assert "column user" in reasons[6][1]  # the first failing column in table order is reported


@given(st.lists(st.one_of(st.integers(-5, 300), st.none(), st.text(max_size=3)), max_size=30))
def test_map_rows_property_good_rows_survive_in_order(values):
    mapper = compile_mapper("t", [TableColumn("v", "UInt8")], [], MODERN)
    docs = [{"v": v} for v in values]
    columns, failures = mapper.map_rows(docs)
    ok = [v for v in values if type(v) is int and 0 <= v <= 255]
    assert columns == [ok]
    assert [i for i, _ in failures] == [i for i, v in enumerate(values) if not (type(v) is int and 0 <= v <= 255)]


def test_missing_fields():
    cols = [TableColumn("a", "String"), TableColumn("b", "Nullable(UInt8)"), TableColumn("c", "UInt32"),
            TableColumn("d", "Array(String)"), TableColumn("e", "DateTime"), TableColumn("f", "String"),
            TableColumn("g", "Nullable(String)", "DEFAULT", "'x'")]
    overrides = [Override("f", has_default=True, default="fallback")]
    mapper = compile_mapper("t", cols, overrides, MODERN, {"g": "x"})
    columns, failures = mapper.map_rows([{}, {"a": "A", "g": None}])
    assert failures == []
    assert columns == [["", "A"], [None, None], [0, 0], [[], []], [0, 0], ["fallback", "fallback"], ["x", None]]


def test_null_is_not_missing_for_non_nullable_columns():
    mapper = compile_mapper("t", [TableColumn("a", "String")], [], MODERN)
    _, failures = mapper.map_rows([{"a": None}])
    assert failures[0][1].reason == "wrong_type" and "null" in failures[0][1].detail


def test_required_override():
    override = Override("a", path=("x", "y"), required=True)
    mapper = compile_mapper("t", [TableColumn("a", "Nullable(String)")], [override], MODERN)
    columns, failures = mapper.map_rows([{"x": {"y": "ok"}}, {"x": {}}, {"x": "flat"}, {"a": "wrong place"}])
    assert columns == [["ok"]]
    assert [(i, e.reason) for i, e in failures] == [(i, "missing_required") for i in (1, 2, 3)]
    assert "x.y" in failures[0][1].detail


def test_paths_and_epoch_unit():
    cols = [TableColumn("uid", "UInt64"), TableColumn("at", "DateTime")]
    overrides = [Override("uid", path=("user", "id")), Override("at", epoch_unit="ms")]
    mapper = compile_mapper("t", cols, overrides, MODERN)
    columns, failures = mapper.map_rows([{"user": {"id": 7}, "at": 1700000000000}])
    assert failures == [] and columns == [[7], [1700000000]]


def test_bad_override_default_is_a_schema_error():
    with pytest.raises(SchemaError, match="column n: default 300"):
        compile_mapper("t", [TableColumn("n", "UInt8")], [Override("n", has_default=True, default=300)], MODERN)
    with pytest.raises(SchemaError, match="epoch_unit"):
        compile_mapper("t", [TableColumn("n", "DateTime")], [Override("n", epoch_unit="us")], MODERN)


def test_materialized_and_alias_never_inserted_or_overridden():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    assert "ts_hour" not in mapper.column_names and "uid" not in mapper.column_names
    with pytest.raises(SchemaError) as info:
        compile_mapper("t", EVENTS, [Override("ts_hour"), Override("uid")], MODERN)
    assert len(info.value.problems) == 2 and "MATERIALIZED" in str(info.value) and "ALIAS" in str(info.value)


def test_server_default_columns():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    assert "day" not in mapper.column_names
    _, failures = mapper.map_rows([good(1), {**good(2), "day": "2020-01-01"}])
    assert [i for i, _ in failures] == [1]
    assert "override" in failures[0][1].detail and "toDate(ts)" in failures[0][1].detail
    # An override makes the column inserted; an absent value cannot fall back to the server then.
    mapper = compile_mapper("t", EVENTS, [Override("day")], MODERN, {"source": "api"})
    assert "day" in mapper.column_names
    columns, failures = mapper.map_rows([{**good(1), "day": "2020-01-01"}, good(2)])
    assert columns[mapper.column_names.index("day")] == [date(2020, 1, 1)]
    assert failures[0][0] == 1 and failures[0][1].reason == "missing_required"


def test_unknown_override_column_suggests_names():
    with pytest.raises(SchemaError) as info:
        compile_mapper("db.t", EVENTS, [Override("usr"), Override("scor")], MODERN)
    text = str(info.value)
    assert "'usr'" in text and "did you mean 'user'" in text and "did you mean 'score'" in text
    assert "id, ts, user" in text


def test_non_list_docs_and_empty_batches():
    mapper = compile_mapper("t", [TableColumn("a", "String")], [], MODERN)
    assert mapper.map_rows([]) == ([[]], [])
    assert mapper.map_rows(({"a": "x"},)) == ([["x"]], [])
    columns, failures = mapper.map_rows([[1], None, 3, {"a": "y"}])
    assert columns == [["y"]] and [i for i, _ in failures] == [0, 1, 2]
    assert failures[1][1].detail == "message is a JSON null, expected an object"


def test_repeated_values_are_converted_consistently():
    mapper = compile_mapper("t", [TableColumn("ts", "Nullable(DateTime)")], [], MODERN)
    docs = [{"ts": "2026-11-26T12:34:56Z"}, {"ts": None}, {"ts": "2026-11-26T12:34:56Z"}, {"ts": "bad"}, {"ts": 5}]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1795696496, None, 1795696496, 5]]
    assert [i for i, _ in failures] == [3]


def test_batch_deduplication_of_repeated_strings_keeps_errors_per_doc():
    mapper = compile_mapper("t", [TableColumn("ts", "Nullable(DateTime)")], [], MODERN)
    docs = [{"ts": "2026-11-26T12:34:56Z"}] * 10 + [{"ts": None}, {"ts": "2026-11-26T12:34:56"}, {"ts": "2026-11-26T12:34:56Z"}]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1795696496] * 10 + [None, 1795696496]]
    assert [(i, e.reason) for i, e in failures] == [(11, "invalid_value")]


def test_long_values_are_truncated_in_messages():
    detail = rejects("UInt8", "x" * 10_000, "wrong_type")
    assert len(detail) < 300
    detail = rejects("String", list(range(10_000)), "wrong_type")
    assert len(detail) < 300


def test_mapping_error_is_picklable():
    import pickle

    err = pickle.loads(pickle.dumps(MappingError("out_of_range", "column n: 300")))
    assert (err.reason, err.detail, str(err)) == ("out_of_range", "column n: 300", "out_of_range: column n: 300")
    se = pickle.loads(pickle.dumps(SchemaError(["a", "b"])))
    assert se.problems == ["a", "b"] and str(se) == "a\nb"


# --------------------------------------------------------------------------- column fast paths
#
# map_rows converts whole columns at once where it can (workers/schema.py, _Converter.column).
# Each fast path must insert exactly what the per-value converter makes and refuse exactly what
# it refuses, with the same reason and message: these tests map a column both ways.

def _typed(x: Any) -> Any:
    """x with every value's exact type attached, so that 1 == 1.0 == True cannot hide a difference."""
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_typed(e) for e in x])
    if isinstance(x, UUID):
        return ("UUID", type(x) is UUID, x.int, x.is_safe)
    return (type(x).__name__, x)


def _per_value(type_text: str, values: list, features: ServerFeatures = MODERN) -> list:
    c = conv(type_text, features)
    out = []
    for v in values:
        try:
            out.append(("ok", _typed(c(v))))
        except MappingError as e:
            out.append((e.reason, e.detail.removeprefix("value")))
    return out


def _by_map_rows(type_text: str, values: list, features: ServerFeatures = MODERN) -> list:
    mapper = compile_mapper("t", [TableColumn("c", type_text)], [], features)
    columns, failures = mapper.map_rows([{"c": v} for v in values])
    errors = dict(failures)
    good = iter(columns[0])
    return [
        (errors[i].reason, errors[i].detail.removeprefix("column c")) if i in errors else ("ok", _typed(next(good)))
        for i in range(len(values))
    ]


def assert_column_as_per_value(type_text: str, good: list, bad: list, features: ServerFeatures = MODERN) -> None:
    """The all-good column, and each bad value alone among good ones, map as value by value."""
    assert _by_map_rows(type_text, good, features) == _per_value(type_text, good, features)
    for b in bad:
        column = [*good[:2], b, *good[2:]]
        assert _by_map_rows(type_text, column, features) == _per_value(type_text, column, features), b


def _fast(type_text: str, values: list, features: ServerFeatures = MODERN) -> list | None:
    return _compile_type(type_text, features, "s", where="test").column(values)


TIMESTAMPS = [
    "2026-11-26T12:34:56Z", "2026-11-26T12:34:00Z", "2026-11-26T12:34:59Z", "2026-11-26T12:35:00Z",
    "1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2106-02-07T06:27:59Z", "2026-11-26T12:34:56Z",
]
BAD_TIMESTAMPS = [
    "2026-11-26T12:34:60Z", "2026-11-26T24:00:00Z", "2026-02-29T00:00:00Z", "2026-11-26T12:60:00Z",
    "2026-11-26T12:34:5xZ", "2026-11-26T12:34:-1Z", "2026-11-26T12:34:5.Z", "2026-11-26T12:3:456Z",
    "2026-11-26T12:34:\uff15\uff16Z", "\uff12026-11-26T12:34:56Z", "+026-11-26T12:34:56Z", "2026-11-26X12:34:56Z",
    "2106-02-07T06:28:16Z", "2106-02-07T06:28:15Z", "2106-02-07T06:28:00Z", "1969-12-31T23:59:59Z",
    "2026-11-26T12:34:56z", "2026-11-26t12:34:56Z", "2026-11-26 12:34:56Z", "2026-11-26T12:34:56.5Z",
    "2026-11-26T12:34:56+01:00", "2026-11-26T12:34:56", "2026-11-26T12:34:56 ", None, 1795696496, 1.5, ["x"],
]


def test_datetime_column_fast_path_is_the_per_value_converter():
    assert _fast("DateTime", TIMESTAMPS) == [conv("DateTime")(v) for v in TIMESTAMPS]
    assert_column_as_per_value("DateTime", TIMESTAMPS, BAD_TIMESTAMPS)
    assert_column_as_per_value("DateTime", ["2105-12-31T23:59:59Z", *TIMESTAMPS[:6]], ["2106-01-01T00:00:00Z"], OLD)
    assert_column_as_per_value("DateTime('Europe/Berlin')", TIMESTAMPS, BAD_TIMESTAMPS)
    assert_column_as_per_value("Nullable(DateTime)", TIMESTAMPS, [None, "2026-11-26T12:34:60Z"])
    assert_column_as_per_value("LowCardinality(DateTime)", TIMESTAMPS, BAD_TIMESTAMPS[:4])
    for bad in ["2026-11-26T12:34:60Z", "2106-02-07T06:28:15Z", "2026-11-26T12:34:56z", None]:
        assert _fast("DateTime", [TIMESTAMPS[0], bad]) is None  # left to the per-value converter


def test_datetime64_column_fast_path_is_the_per_value_converter():
    for type_text in ["DateTime64(0)", "DateTime64(3)", "DateTime64(9)", "DateTime64(3, 'Asia/Tokyo')"]:
        assert _fast(type_text, TIMESTAMPS[:6]) == [conv(type_text)(v) for v in TIMESTAMPS[:6]]
        bad = [*BAD_TIMESTAMPS, "2023-11-14T22:13:20.123Z", "1899-12-31T23:59:59Z", "2262-04-11T23:47:16Z",
               "2262-04-11T23:47:17Z", "2262-04-11T23:47:00Z", "1925-01-01T00:00:00Z"]
        assert_column_as_per_value(type_text, TIMESTAMPS[:6], bad)
    v21 = ServerFeatures.from_version((21, 8))  # DateTime64 from 1925-01-01 to 2283-11-11
    assert_column_as_per_value("DateTime64(3)", TIMESTAMPS[:6], ["1924-12-31T23:59:59Z", "2283-11-12T00:00:00Z"], v21)


def test_datetime_fast_path_minute_cache_across_batches(monkeypatch):
    import workers.schema as schema

    monkeypatch.setattr(schema, "_MINUTES_CACHED", 3)  # cleared all the time
    mapper = compile_mapper("t", [TableColumn("c", "DateTime")], [], MODERN)
    c = conv("DateTime")
    for hour in range(10):
        column = [f"2026-11-26T{hour:02d}:{m:02d}:{s:02d}Z" for m in (0, 1, 59) for s in (0, 30, 59)]
        assert mapper.map_rows([{"c": v} for v in column]) == ([[c(v) for v in column]], [])
        # A minute seen before, now with an impossible second: still refused.
        columns, failures = mapper.map_rows([{"c": column[0]}, {"c": column[0][:17] + "60Z"}])
        assert columns == [[c(column[0])]] and [(i, e.reason) for i, e in failures] == [(1, "invalid_value")]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.datetimes(min_value=datetime(1965, 1, 1), max_value=datetime(2110, 1, 1)),
            st.integers(0, 19),
            st.sampled_from("0123456789-:TtZz .+6\uff16"),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_datetime_column_fast_path_property(cases):
    column = []
    for moment, at, char, mutate in cases:
        text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        column.append(text[:at] + char + text[at + 1:] if mutate else text)
    assert _by_map_rows("DateTime", column) == _per_value("DateTime", column)
    assert _by_map_rows("DateTime64(3)", column) == _per_value("DateTime64(3)", column)


UUIDS = [
    "6f1c2d9e-ab12-4000-8000-0000000000ab", "6F1C2D9E-AB12-4000-8000-0000000000AB", "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "0123abcd-EF01-4567-89ab-CDEF01234567",
]
BAD_UUIDS = [
    "{6f1c2d9e-ab12-4000-8000-0000000000ab}", "6f1c2d9eab1240008000000000000000", "6f1c2d9e-ab12-4000-8000-0000000000a",
    "6f1c2d9e-ab12-4000-8000-0000000000abc", "6f1c2d9e-ab12-4000-8000_0000000000ab", "6f1c_d9e-ab12-4000-8000-0000000000ab",
    " 6f1c2d9-ab12-4000-8000-0000000000ab", "6f1c2d9e-ab12-4000-8000-00000000000g", "6f1c2d9e-ab12-4000-8000-0000000000a\n",
    "6f1c2d9e\nab12-4000-8000-0000000000ab", "+f1c2d9e-ab12-4000-8000-0000000000ab", "0x1c2d9e-ab12-4000-8000-0000000000ab",
    "\uff16f1c2d9e-ab12-4000-8000-0000000000ab", "6f1c2d9e-ab12-4000-8000-0000000000ab\n6f1c2d9e-ab12-4000-8000-0000000000ab",
    "6f1c2d9e-ab12-4000-8000-00000000 0ab", "6f1c2d9e-ab12-4000-8000-  0000000000", "6f1c2d9e-ab12-4000-8000-0000000000\t\t",
    "6f1c2d9e-ab12-4000-8000-0000000000\x0b\x0c", "\r\n1c2d9e-ab12-4000-8000-0000000000ab", "6f1c2d9e-ab12-4000-8000-00000-0000ab",
    "", 5, None, ["6f1c2d9e-ab12-4000-8000-0000000000ab"],
]


def test_uuid_column_fast_path_is_the_per_value_converter():
    fast = _fast("UUID", UUIDS)
    assert fast == [UUID(u) for u in UUIDS] and [_typed(u) for u in fast] == [_typed(UUID(u)) for u in UUIDS]
    assert_column_as_per_value("UUID", UUIDS, BAD_UUIDS)
    assert_column_as_per_value("Nullable(UUID)", UUIDS, [None, "nope"])
    for bad in BAD_UUIDS:
        assert _fast("UUID", [UUIDS[0], bad]) is None
        assert _fast("UUID", [bad] * 3) is None


@given(st.lists(st.uuids().map(str) | st.text(alphabet="0123456789abcdefABCDEF-\n_x ", min_size=30, max_size=40),
                min_size=1, max_size=6))
def test_uuid_column_fast_path_property(column):
    assert _by_map_rows("UUID", column) == _per_value("UUID", column)


def test_fixed_string_column_fast_path_is_the_per_value_converter():
    good = ["DE", "FR", "", "a", "é", "  "]
    bad = ["abc", "éé", "€", "a€", "\ud800", "\x00\x00\x00", 5, None, ["DE"]]
    assert _fast("FixedString(2)", ["DE", "", "a"]) == ["DE", "", "a"]
    assert_column_as_per_value("FixedString(2)", good, bad)
    assert_column_as_per_value("FixedString(3)", [*good, "€", "abc"], ["abcd", "é€"])
    assert_column_as_per_value("LowCardinality(FixedString(2))", good, bad)
    for b in ["abc", "é", 5, None]:
        assert _fast("FixedString(2)", ["DE", b]) is None  # non-ASCII text is measured value by value


def test_array_column_fast_path_is_the_per_value_converter():
    assert_column_as_per_value("Array(String)", [[], ["a"], ["a", "b"], ["t1", "t2", "t3"]],
                               [["a", 1], "abc", [None], None, [["a"]], ("a",), {"a": 1}])
    assert_column_as_per_value("Array(UInt8)", [[], [0, 255], [7]], [[256], [-1], [True], [1.0], [1.5], ["1"]])
    assert_column_as_per_value("Array(Nullable(String))", [["a", None], [], [None]], [[1], None])
    assert_column_as_per_value("Array(Float64)", [[1.5], [], [0.0, -2.5]], [[1], [True], ["1.5"]])
    assert_column_as_per_value("Array(Int64)", [[-(2**63), 2**63 - 1]], [[2**63], [-(2**63) - 1]])
    assert _fast("Array(String)", [["a"], []]) == [["a"], []]
    assert _fast("Array(UInt8)", [[1], [256]]) is None
    assert _compile_type("Array(DateTime)", MODERN, "s", where="test").column is None  # elements without one
    detail = _by_map_rows("Array(String)", [["a"], ["b", 2]])[1][1]
    assert detail.startswith("[1]: expected a string")


def test_dotted_paths_are_walked_as_before():
    override = Override("uid", path=("user", "id"), required=True)
    mapper = compile_mapper("t", [TableColumn("uid", "UInt64"), TableColumn("k", "String")], [override], MODERN)
    docs = [{"user": {"id": 1}, "k": "a"}, {"user": {}, "k": "b"}, {"user": None, "k": "c"}, {"user": "x", "k": "d"},
            {"k": "e"}, {"user": {"id": "7"}, "k": "f"}, {"user": {"id": 2, "more": 1}, "k": "g"}]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1, 2], ["a", "g"]]
    assert [(i, e.reason) for i, e in failures] == [
        (1, "missing_required"), (2, "missing_required"), (3, "missing_required"), (4, "missing_required"),
        (5, "wrong_type"),
    ]
    deep = compile_mapper("t", [TableColumn("v", "String")], [Override("v", path=("a", "b", "c"))], MODERN)
    assert deep.map_rows([{"a": {"b": {"c": "x"}}}, {"a": {"b": 1}}, {"a": {"b": {}}}]) == ([["x", "", ""]], [])


def test_documents_missing_some_keys_map_as_each_alone():
    cols = [TableColumn("a", "String"), TableColumn("b", "UInt8"), TableColumn("c", "UUID"), TableColumn("d", "DateTime")]
    mapper = compile_mapper("t", cols, [Override("b", has_default=True, default=9)], MODERN)
    u, t = "6f1c2d9e-ab12-4000-8000-0000000000ab", "2026-11-26T12:34:56Z"
    docs = [{"a": "x", "b": 1, "c": u, "d": t}, {"a": "y", "c": u, "d": t}, {"b": 2}, {"a": "z", "b": 3, "c": u, "d": t, "e": 0}]
    columns, failures = mapper.map_rows(docs)
    alone = [mapper.map_rows([d])[0] for d in docs]
    assert failures == []
    assert _typed(columns) == _typed([[v for a in alone for v in a[k]] for k in range(4)])
    assert columns[1] == [1, 9, 2, 3]


def test_demo_events_map_as_value_by_value():
    from bench import micro
    from bench.events import make_event

    mapper = micro.demo_mapper()
    docs = [make_event(i, 350) for i in range(300)]
    columns, failures = mapper.map_rows(docs)
    assert failures == []
    types = {c.name: c.type for c in micro.DEMO_COLUMNS}
    for name, column in zip(mapper.column_names, columns):
        c = conv(types[name], epoch_unit="ms" if name == "ts" else "s")
        sent = [d["user"]["id"] if name == "user_id" else d[name] for d in docs]
        assert _typed(column) == _typed([c(v) for v in sent]), name


def test_dict_subclasses_are_read_like_plain_objects():
    from collections import defaultdict

    mapper = compile_mapper("t", [TableColumn("a", "String"), TableColumn("b", "UInt8")], [], MODERN)
    odd = defaultdict(lambda: "surprise", {"a": "x"})
    assert mapper.map_rows([odd, {"a": "y", "b": 1}]) == ([["x", "y"], [0, 1]], [])
    assert dict(odd) == {"a": "x"}  # nothing was read through __getitem__
