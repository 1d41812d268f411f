"""workers/clickhouse/schema/mapper.py: a column jetsink cannot insert never stops a table that can do without it.

Left to the server when it has a DEFAULT or can hold NULL; a message carrying its
field is dead-lettered as ``unsupported_type``; without a DEFAULT and NULL the table
cannot be written and compiling says so, naming the column and its type.  The same
holds for a type the client library cannot write (``writable``).
"""

from __future__ import annotations

import pytest
from schema_cases import MODERN, Override

from workers.clickhouse.schema import SchemaError, TableColumn, compile_mapper
from workers.clickhouse.schema.mapper import OMITTED


def _mapper(columns, overrides=(), **options):
    return compile_mapper("t", columns, overrides, MODERN, **options)


def test_an_unsupported_nullable_or_default_column_is_left_to_the_server():
    mapper = _mapper([
        TableColumn("id", "UInt32"),
        TableColumn("v", "Nullable(Unknownish(1))"),
        TableColumn("w", "Unknownish", "DEFAULT", "x"),
        TableColumn("e", "Unknownish", "EPHEMERAL", "defaultValueOfTypeName('Unknownish')"),
    ], constant_defaults={"w": "x"})
    assert mapper.column_names == ("id",)
    assert [(u.name, u.type) for u in mapper.unsupported] == [
        ("v", "Nullable(Unknownish(1))"), ("w", "Unknownish"), ("e", "Unknownish")
    ]
    assert "Unknownish is not supported" in mapper.unsupported[0].why
    columns, failures = mapper.map_rows([{"id": 1}, {"id": 2, "v": 5}, {"id": 3, "w": "x"}])
    assert columns == [[1]]
    assert [(i, e.reason) for i, e in failures] == [(1, "unsupported_type"), (2, "unsupported_type")]
    assert "column v" in failures[0][1].detail and "Nullable(Unknownish(1))" in failures[0][1].detail
    assert "column w" in failures[1][1].detail


def test_an_unsupported_column_without_default_or_null_refuses_the_table_naming_it():
    with pytest.raises(SchemaError) as info:
        _mapper([TableColumn("id", "UInt32"), TableColumn("v", "Unknownish(1)")])
    (problem,) = info.value.problems
    assert "column v" in problem and "Unknownish(1)" in problem and "no DEFAULT and is not Nullable" in problem


def test_an_override_naming_an_unsupported_column_is_a_problem():
    with pytest.raises(SchemaError, match="column v"):
        _mapper([TableColumn("id", "UInt32"), TableColumn("v", "Nullable(Unknownish)")], [Override("v")])


def test_a_type_the_client_library_cannot_write_is_found_at_compile_time():
    asked = []

    def writable(type_text, values):
        asked.append((type_text, values))
        return "ValueError: too many values to unpack" if type_text.startswith("Map") else None

    columns = [TableColumn("id", "UInt32"), TableColumn("m", "Map(String, UInt8)", "DEFAULT", "map()")]
    mapper = _mapper(columns, writable=writable, constant_defaults={"m": {}})
    assert mapper.column_names == ("id",)
    assert "too many values to unpack" in mapper.unsupported[0].why
    assert ("Map(String, UInt8)", [{}]) in asked  # tried with the type's zero value
    with pytest.raises(SchemaError, match=r"column m: type Map\(String, UInt8\): the client library cannot write"):
        _mapper([TableColumn("id", "UInt32"), TableColumn("m", "Map(String, UInt8)")], writable=writable)


def test_unknown_keys_know_the_left_out_columns():
    columns = [TableColumn("id", "UInt32"), TableColumn("v", "Nullable(Unknownish)")]
    mapper = _mapper(columns, unknown_keys="dead_letter")
    _, failures = mapper.map_rows([{"id": 1, "v": 1}, {"id": 2, "x": 1}])
    assert [(i, e.reason) for i, e in failures] == [(0, "unsupported_type"), (1, "unknown_key")]


def test_ephemeral_columns_take_the_value_sent():
    columns = [
        TableColumn("id", "UInt32"),
        TableColumn("raw", "String", "EPHEMERAL", "defaultValueOfTypeName('String')"),
        TableColumn("now", "DateTime", "EPHEMERAL", "now()"),
    ]
    mapper = _mapper(columns, constant_defaults={"raw": ""}, server_timezone="UTC")
    assert mapper.column_names == ("id", "raw", "now")
    cols, failures = mapper.map_rows([{"id": 1, "raw": "x", "now": 0}, {"id": 2, "now": 1}, {"id": 3, "raw": "y"}])
    # A missing constant one: its default; one the server computes per row (now()): left to it for that row.
    assert cols == [[1, 2, 3], ["x", "", "y"], [0, 1, OMITTED]] and failures == []
