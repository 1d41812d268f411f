"""workers/clickhouse/schema/modern.py and the builder's newer types (tests/modern/ runs them on 26.9)."""

from __future__ import annotations

import pytest
from schema_cases import conv, rejects

from workers.clickhouse.schema import SchemaError, ServerFeatures, TableColumn, compile_mapper

NEWEST = ServerFeatures.from_version((26, 9, 2))


@pytest.mark.parametrize(
    "value, bits",
    [(1.5, 0x3FC0), (-2, 0xC000), (0, 0), (256, 0x4380), (3.3895313892515355e38, 0x7F7F), ("Infinity", 0x7F80),
     ("-Infinity", 0xFF80), ("NaN", 0x7FC0), (-0.0, 0x8000)],
)
def test_bfloat16_emits_the_bits_of_exact_values(value, bits):
    assert conv("BFloat16", NEWEST)(value) == bits


@pytest.mark.parametrize(
    "value, reason",
    [(0.1, "lost_precision"), (257, "lost_precision"), (1e39, "out_of_range"), (2**1024, "out_of_range"),
     ("1.5", "invalid_value"), (True, "wrong_type"), (None, "wrong_type")],
)
def test_bfloat16_refuses_what_it_cannot_hold(value, reason):
    rejects("BFloat16", value, reason, NEWEST)


def test_time_and_time64_ticks():
    assert conv("Time", NEWEST)("12:30:05") == 45005
    assert conv("Time", NEWEST)("-999:59:59") == -3599999
    assert conv("Time64(3)", NEWEST)("-0:00:00.001") == -1
    assert conv("Time64(3)", NEWEST)("1:00:00.5") == 3600500
    assert conv("Time64(6)", NEWEST)("1:00:00.500000000") == 3600500000
    for value, reason in [("1:00:00.5", "lost_precision"), ("1000:00:00", "invalid_value"), ("1:2:3", "invalid_value"),
                          ("01:00", "invalid_value"), (3600, "wrong_type")]:
        rejects("Time", value, reason, NEWEST)


def test_json_takes_objects_as_their_text():
    assert conv("JSON(max_dynamic_paths=2, a.b UInt32, SKIP x)", NEWEST)({"a": {"b": 1}, "é": [1.5]}) == (
        b'{"a":{"b":1},"\xc3\xa9":[1.5]}'
    )
    assert "expected an object" in rejects("JSON", [1], "wrong_type", NEWEST)
    assert "expected an object" in rejects("JSON", "{}", "wrong_type", NEWEST)


def test_nested_and_simple_aggregate_functions_are_their_parts():
    assert conv("Nested(x UInt8, y String)", NEWEST)([{"x": 1, "y": "a"}, [2, "b"]]) == [(1, "a"), (2, "b")]
    assert conv("SimpleAggregateFunction(sum, UInt64)", NEWEST)("18446744073709551615") == 2**64 - 1
    rejects("SimpleAggregateFunction(max, UInt8)", 256, "out_of_range", NEWEST)


def test_newer_types_need_their_server():
    with pytest.raises(SchemaError, match=r"needs ClickHouse >= 25\.3 \(for JSON\)"):
        conv("JSON", ServerFeatures.from_version((24, 8, 1)))
    # Left to the server where it can do without them: Variant and Dynamic before 25.3.
    mapper = compile_mapper(
        "t", [TableColumn("id", "UInt32"), TableColumn("v", "Variant(String, UInt64)"), TableColumn("d", "Dynamic")],
        [], ServerFeatures.from_version((24, 8, 1)),
    )
    assert mapper.column_names == ("id",) and [u.name for u in mapper.unsupported] == ["v", "d"]
