"""workers/schema/builder.py: type name -> converter, version gating, what the driver takes."""

from __future__ import annotations

import socket
from datetime import date, datetime, timezone
from decimal import Decimal
from uuid import UUID

import pytest
from schema_cases import (
    MODERN,
    OLD,
    conv,
)

from workers.clickhouse.schema import (
    SchemaError,
    TableColumn,
    compile_mapper,
)


@pytest.mark.parametrize("text", ["Nothing", "AggregateFunction(uniq, String)", "Object('json')", "Point", "Foo(Bar)"])
def test_unsupported_type_is_schema_error_naming_table_column_type(text):
    with pytest.raises(SchemaError) as info:
        compile_mapper("db.events", [TableColumn("c", text)], [], MODERN)
    assert "db.events" in str(info.value)
    assert "column c" in str(info.value)
    assert text in str(info.value)


def test_malformed_type_is_schema_error():
    with pytest.raises(SchemaError, match="cannot parse type"):
        compile_mapper("t", [TableColumn("c", "Array(")], [], MODERN)


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
    assert len(problems) == 4
    text = str(info.value)
    for column, needed in [("attrs", "21.8"), ("ip", "19.3"), ("ts", "20.1"), ("ok", "21.12")]:
        assert any(f"column {column}:" in p and f">= {needed}" in p and "18.16.1" in p for p in problems), text
    assert "fine" not in text
    assert "column tag" not in text  # LowCardinality: 18.16 inserts into it


def test_old_server_maps_low_cardinality_as_its_element_type():
    mapper = compile_mapper("t", [TableColumn("tag", "LowCardinality(String)")], [], OLD)
    assert mapper.map_rows([{"tag": "a"}, {"tag": 1}])[0] == [["a"]]


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


class _ServerInfo:
    def get_timezone(self) -> str:
        return "UTC"


def _driver_roundtrip(type_text: str, values: list) -> tuple:
    """Serialise with clickhouse-driver's own column writer and read it back (no server).

    types_check=False as in workers/clickhouse/sink.py (the driver's int type check even breaks Enum).
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
        (
            "DateTime('UTC')",
            ["2026-11-26T12:34:56Z", 0],
            (datetime(2026, 11, 26, 12, 34, 56, tzinfo=timezone.utc), datetime(1970, 1, 1, tzinfo=timezone.utc)),
        ),
        (
            "DateTime64(3, 'UTC')",
            ["2026-11-26T12:34:56.789Z"],
            (datetime(2026, 11, 26, 12, 34, 56, 789000, tzinfo=timezone.utc),),
        ),
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
