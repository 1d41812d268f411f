"""Constant DEFAULTs and EPHEMERAL columns against ClickHouse 26.x's engine (chdb).

A field left out of a message is stored as the server's own DEFAULT would store it: each
test inserts one row through jetsink without the fields and one the server fills itself
(``INSERT ... (id) VALUES``), and the two rows must read back equal.
"""

from __future__ import annotations

import orjson
import pytest

DEFAULTS = [
    ("DateTime64(9)", "'2024-01-05 10:20:30.123456789'"),
    ("DateTime64(6)", "'2299-12-31 23:59:59.999999'"),
    ("DateTime64(3)", "'1900-01-01 00:00:00.001'"),
    ("DateTime64(1)", "'1969-12-31 23:59:59.9'"),
    ("DateTime64(0)", "'2299-12-31 23:59:59'"),
    ("DateTime64(7, 'Asia/Kolkata')", "'2024-07-05 10:20:30.1234567'"),
    ("DateTime64(3, 'Europe/Berlin')", "toDateTime64('1900-01-01 00:00:00.001', 3, 'Europe/Berlin')"),
    ("Nullable(DateTime64(3))", "'2024-01-05 10:20:30.123'"),
    ("Array(DateTime64(9))", "['1900-01-01 00:00:00.000000001', '2262-04-11 23:47:16.854775807']"),
    ("Array(Array(DateTime64(2)))", "[['2024-01-05 10:20:30.12'], []]"),
    ("DateTime", "'2106-02-07 06:28:15'"),
    ("Decimal(9, 2)", "1.5"),
    ("Decimal(38, 10)", "'-1234567890123456789012345678.0123456789'"),
    ("Decimal(76, 30)", "'1234567890123456789012345678901234567890123456.123456789012345678901234567890'"),
    ("Array(Decimal(18, 4))", "[1.2345, -0.0001]"),
    ("Date32", "'1900-01-01'"),
    ("Date32", "'2299-12-31'"),
    ("Date", "'2149-06-06'"),
    ("Array(Date32)", "['1900-01-01', '1969-12-31']"),
    ("UUID", "'6f9619ff-8b86-d011-b42d-00c04fc964ff'"),
    ("Array(UUID)", "['00000000-0000-0000-0000-000000000001']"),
    ("IPv6", "'2001:db8::ff00:42:8329'"),
    ("IPv6", "'::ffff:1.2.3.4'"),
    ("IPv4", "'255.255.255.255'"),
    ("Array(IPv6)", "['::1']"),
    ("Enum8('a' = 1, 'b' = -2)", "'b'"),
    ("Enum16('x' = 1000, 'y' = -1000)", "-1000"),
    ("Array(Enum8('a' = 1, 'b' = 2))", "['b', 'a']"),
    ("LowCardinality(String)", "'lc'"),
    ("Nullable(String)", "'x'"),
    ("String", "'it''s'"),
    ("FixedString(3)", "'ab'"),
    ("Int128", "-170141183460469231731687303715884105728"),
    ("UInt256", "'115792089237316195423570985008687907853269984665640564039457584007913129639935'"),
    ("Float64", "-0.1"),
    ("Float32", "1e-45"),
    ("Bool", "true"),
    ("Map(String, UInt8)", "map('a', 1)"),
    ("Tuple(a Int8, b String)", "tuple(1, 'x')"),
    ("Array(Nullable(Int8))", "[1, NULL]"),
    ("JSON", "'{\"a\": {\"b\": [1, 2]}, \"c\": \"x\"}'"),
    ("JSON(a UInt8)", "'{}'"),
    ("Variant(Int64, String)", "5::Int64"),
    ("Variant(Int64, String)", "'x'"),
    ("Variant(Array(UInt8), Date)", "[1, 2]"),
    ("Array(Variant(Date, String))", "['2024-01-05', 'x']"),
    ("Dynamic", "'x'"),
    ("Dynamic", "[1, 2]"),
    ("Dynamic(max_types=1)", "toDate('2024-01-05')"),
]


@pytest.mark.parametrize("type_text, default", DEFAULTS, ids=[f"{t} {d}" for t, d in DEFAULTS])
def test_a_constant_default_is_stored_as_the_server_stores_it(modern, type_text, default):
    table = modern.create("t", f"id UInt32, c {type_text} DEFAULT {default}")
    assert modern.store(table, ['{"id": 0}']) == {}
    modern.client.query(f"INSERT INTO {table} (id) VALUES (1)")
    ours, theirs = modern.rows(table)
    assert ours.pop("id") == 0 and theirs.pop("id") == 1
    assert ours == theirs


def test_ephemeral_columns_take_the_value_sent(modern):
    table = modern.create(
        "t",
        "id UInt32, raw String EPHEMERAL, size UInt64 DEFAULT length(raw), "
        "tag String EPHEMERAL 'none', label String DEFAULT upper(tag)",
    )
    assert modern.store(table, ['{"id": 0, "raw": "abc", "tag": "x"}', '{"id": 1}']) == {}
    assert modern.rows(table) == [
        {"id": 0, "size": "3", "label": "X"},
        {"id": 1, "size": "0", "label": "NONE"},  # a missing one leaves the server's default
    ]


def test_defaults_the_server_computes_per_row_take_the_value_sent_or_are_left_to_it(modern):
    # EPHEMERAL and DEFAULT expressions of other columns (not constants): a message that sends the field
    # has its value stored; one that omits it gets what the server computes for that row, exactly as
    # ClickHouse's own JSONEachRow input does (its twin table).
    ddl = ("id UInt32, e UInt32 EPHEMERAL id * 2, d UInt32 DEFAULT e + 1, "
           "day UInt32 DEFAULT id + 100, label String DEFAULT concat('n', toString(id))")
    table, twin = modern.create("t", ddl), modern.create("twin", ddl)
    texts = ['{"id": 1, "e": 10}', '{"id": 2}', '{"id": 3, "day": 7}', '{"id": 4, "e": 1, "day": 8, "label": "x"}',
             '{"id": 5}', '{"id": 6, "label": "y"}']
    assert modern.store(table, texts) == {}
    for text in texts:  # the server's own parse, told which columns the row has (EPHEMERAL ones are not implied)
        modern.client.query(f"INSERT INTO {twin} ({', '.join(orjson.loads(text))}) FORMAT JSONEachRow {text}")
    assert modern.rows(table) == modern.rows(twin)
    assert modern.rows(table)[0]["d"] == 11  # e sent (10): d = e + 1, not the EPHEMERAL's id * 2 + 1
    rows = modern.rows(table)
    assert [(r["day"], r["label"]) for r in rows] == [(101, "n1"), (102, "n2"), (7, "n3"), (8, "x"), (105, "n5"),
                                                      (106, "y")]


def test_a_column_jetsink_cannot_insert_is_left_to_the_server(modern):
    # A variant jetsink has no rule for (Time): NULL is stored for it, the DEFAULT for the other.
    table = modern.create("t", "id UInt32, v Variant(String, Time), d Variant(Time, UInt8) DEFAULT 7")
    mapper = modern.mapper(table)
    assert mapper.column_names == ("id",)
    assert [(u.name, u.type) for u in mapper.unsupported] == [("v", "Variant(String, Time)"),
                                                              ("d", "Variant(Time, UInt8)")]
    failures = modern.store(table, ['{"id": 0}', '{"id": 1, "v": "x"}'])
    assert {i: r for i, (r, _) in failures.items()} == {1: "unsupported_type"}
    assert "column v" in failures[1][1]
    assert modern.rows(table) == [{"id": 0, "v": None, "d": 7}]


def _datetime64_ends(precision: int) -> list[str]:
    """The first and last instants of DateTime64(P) on 22.8+ (P = 9 ends where Int64 nanoseconds end)."""
    tick = "0" * (precision - 1) + "1" if precision else ""
    last = "9" * precision
    first = f"1900-01-01 00:00:00{'.' + tick if precision else ''}"
    end = "2262-04-11 23:47:16.854775807" if precision == 9 else f"2299-12-31 23:59:59{'.' + last if precision else ''}"
    return [first, end]


ENDS = [(p, text) for p in range(10) for text in _datetime64_ends(p)]


@pytest.mark.parametrize("precision, text", ENDS, ids=[f"DateTime64({p}) {t}" for p, t in ENDS])
def test_datetime64_defaults_of_every_precision_at_both_ends(modern, precision, text):
    test_a_constant_default_is_stored_as_the_server_stores_it(modern, f"DateTime64({precision})", f"'{text}'")


@pytest.mark.parametrize("precision, text", ENDS, ids=[f"DateTime64({p}) {t}" for p, t in ENDS])
def test_datetime64_values_of_every_precision_at_both_ends(modern, precision, text):
    from tests.modern.test_types import test_stored_as_clickhouse_parses_it

    test_stored_as_clickhouse_parses_it(modern, f"DateTime64({precision})", [(f'"{text}"', None)])
