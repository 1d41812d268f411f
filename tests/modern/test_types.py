"""Every type jetsink maps, against ClickHouse 26.x's engine (chdb): stored as ClickHouse's own parser stores it.

For each type, one table filled by jetsink's path (the mapper built from the table's
``system.columns`` as 26.x prints them, the converters, the driver's writers with
workers.clickhouse.native's, a Native block) and a twin filled by ClickHouse's
JSONEachRow parser from the same JSON value; the two must read back equal.  Where
ClickHouse's parser wants another spelling of the same value (a number where jetsink
also takes a canonical string, a named tuple as an object), the case gives it.
"""

from __future__ import annotations

import orjson
import pytest

# (type, [(the JSON sent to jetsink, the JSON given to ClickHouse's parser or None for the same)])
CASES: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("Int8", [("0", None), ("-128", None), ("127", None), ('"42"', "42"), ("3.0", "3")]),
    ("UInt8", [("0", None), ("255", None), ('"7"', "7")]),
    ("Int16", [("-32768", None), ("32767", None)]),
    ("UInt16", [("65535", None)]),
    ("Int32", [("-2147483648", None), ("2147483647", None)]),
    ("UInt32", [("4294967295", None)]),
    ("Int64", [('"-9223372036854775808"', "-9223372036854775808"), ("9223372036854775807", None)]),
    ("UInt64", [('"18446744073709551615"', "18446744073709551615"), ("0", None)]),
    ("Int128", [('"-170141183460469231731687303715884105728"', "-170141183460469231731687303715884105728")]),
    ("UInt128", [('"340282366920938463463374607431768211455"', "340282366920938463463374607431768211455")]),
    ("Int256", [('"-57896044618658097711785492504343953926634992332820282019728792003956564819968"',
                 "-57896044618658097711785492504343953926634992332820282019728792003956564819968")]),
    ("UInt256", [('"115792089237316195423570985008687907853269984665640564039457584007913129639935"',
                  "115792089237316195423570985008687907853269984665640564039457584007913129639935")]),
    ("Float32", [("1.5", None), ("3.4028235e38", None), ("-3.4028235e38", None), ('"-2e-3"', "-2e-3"),
                 ("0.1", None), ('"NaN"', '"nan"'), ('"Infinity"', '"inf"')]),
    ("Float64", [("0.1", None), ("1e308", None), ("5e-324", None), ('"-Infinity"', '"-inf"'), ("-0.0", None)]),
    ("Bool", [("true", None), ("false", None)]),
    ("String", [('"x"', None), ('""', None), ('"é\\u0000\\n"', None), ('"\\ud83d\\ude00"', None)]),
    ("FixedString(3)", [('"ab"', None), ('"abc"', None), ('"é"', None), ('""', None)]),
    ("Date", [('"2024-02-29"', None), ('"1970-01-01"', None), ('"2149-06-06"', None),
              ('"2024-01-05 00:00:00"', '"2024-01-05"')]),
    ("Date32", [('"1900-01-01"', None), ('"2299-12-31"', None), ('"1969-12-31"', None)]),
    ("DateTime", [('"2024-01-05 10:20:30"', None), ('"2024-01-05T10:20:30Z"', None),
                  ('"2024-01-05T10:20:30+02:00"', None), ('"2024-01-05T10:20:30+0200"', '"2024-01-05T10:20:30+02:00"'),
                  ("1704450030", None), ('"2106-02-07 06:28:15"', None), ('"1970-01-01 00:00:00"', None)]),
    ("DateTime('Asia/Tokyo')", [('"2024-01-05 10:20:30"', None), ('"2024-01-05T10:20:30Z"', None)]),
    ("DateTime64(3)", [('"2024-01-05 10:20:30.123"', None), ('"1900-01-01 00:00:00.001"', None),
                       ('"2299-12-31 23:59:59.999"', None), ('"2024-01-05T10:20:30.5Z"', None),
                       ('"1969-12-31 23:59:59.999"', None),
                       ('"2024-01-05 10:20:30.120000"', '"2024-01-05 10:20:30.12"')]),
    ("DateTime64(9)", [('"2024-01-05 10:20:30.123456789"', None), ('"1900-01-01 00:00:00.000000001"', None),
                       ('"2262-04-11 23:47:16.854775807"', None)]),
    ("DateTime64(6, 'Europe/Berlin')", [('"2024-07-05 10:20:30.000001"', None),
                                        ('"2024-07-05T10:20:30.25+00:00"', None)]),
    ("DateTime64(0)", [('"2024-01-05 10:20:30"', None), ('"2299-12-31 23:59:59"', None)]),
    ("UUID", [('"00000000-0000-0000-0000-000000000000"', None), ('"6F9619FF-8B86-D011-B42D-00C04FC964FF"', None),
              ('"ffffffff-ffff-ffff-ffff-ffffffffffff"', None)]),
    ("Decimal(9, 2)", [("1.5", None), ('"-9999999.99"', "-9999999.99"), ("1e2", "100"), ("0.01", None)]),
    ("Decimal(38, 10)", [('"1234567890123456789012345678.0123456789"', '"1234567890123456789012345678.0123456789"')]),
    ("Decimal(76, 20)", [('"-12345678901234567890123456789012345678901234567890123456.01234567890123456789"',
                          '"-12345678901234567890123456789012345678901234567890123456.01234567890123456789"')]),
    ("Decimal32(4)", [("1.2345", None), ('"-99999.9999"', "-99999.9999")]),
    ("Decimal128(5)", [('"-123456789012345678901234567890123.12345"', '"-123456789012345678901234567890123.12345"')]),
    ("Decimal256(10)", [('"1.0000000001"', None), ("-2.5", None)]),
    ("Decimal64(0)", [('"999999999999999999"', "999999999999999999")]),
    ("Enum8('a' = 1, 'b' = -2, 'it''s' = 3)", [('"a"', None), ("-2", None), ('"it\'s"', None)]),
    ("Enum16('x' = 1000, 'y' = -1000)", [('"x"', None), ("-1000", None)]),
    ("IPv4", [('"1.2.3.4"', None), ('"255.255.255.255"', None), ('"0.0.0.0"', None)]),
    ("IPv6", [('"::1"', None), ('"2001:db8::ff00:42:8329"', None), ('"::ffff:1.2.3.4"', None)]),
    ("Nullable(Int32)", [("null", None), ("5", None)]),
    ("Nullable(String)", [("null", None), ('"x"', None)]),
    ("Nullable(DateTime64(3))", [("null", None), ('"2024-01-05 10:20:30.123"', None)]),
    ("LowCardinality(String)", [('"a"', None), ('"b"', None), ('"a"', None)]),
    ("LowCardinality(Nullable(String))", [("null", None), ('"x"', None), ("null", None)]),
    ("LowCardinality(FixedString(2))", [('"ab"', None)]),
    ("Array(Int32)", [("[]", None), ("[1, -2, 3]", None)]),
    ("Array(Array(String))", [("[[], [\"a\", \"b\"], [\"\"]]", None)]),
    ("Array(Nullable(UInt8))", [("[1, null, 255]", None)]),
    ("Array(UUID)", [('["00000000-0000-0000-0000-000000000001"]', None)]),
    ("Array(DateTime)", [('["2024-01-05 10:20:30", 1704450030]', '["2024-01-05 10:20:30", 1704450030]')]),
    ("Array(LowCardinality(String))", [('["a", "a", "b"]', None)]),
    ("Array(FixedString(2))", [('["ab", "c"]', None)]),
    ("Array(Decimal(9, 2))", [("[1.5, -0.01]", None)]),
    ("Map(String, UInt64)", [("{}", None),
                             ('{"a": 1, "b": "18446744073709551615"}', '{"a": 1, "b": 18446744073709551615}')]),
    ("Map(UInt8, String)", [('{"1": "x", "255": "y"}', None)]),
    ("Map(String, Array(String))", [('{"k": ["a", "b"], "l": []}', None)]),
    ("Map(LowCardinality(String), Nullable(Float64))", [('{"k": null, "l": 1.5}', None)]),
    ("Tuple(Int8, String)", [('[1, "x"]', None)]),
    ("Tuple(a Int8, b Nullable(String))", [('{"a": 1, "b": null}', None), ('[2, "y"]', '{"a": 2, "b": "y"}')]),
    ("Tuple(a Array(UInt8), b Tuple(c Date, d UUID))",
     [('[[1, 2], ["2024-01-05", "00000000-0000-0000-0000-000000000001"]]',
       '{"a": [1, 2], "b": {"c": "2024-01-05", "d": "00000000-0000-0000-0000-000000000001"}}')]),
]


@pytest.mark.parametrize("type_text, values", CASES, ids=[t for t, _ in CASES])
def test_stored_as_clickhouse_parses_it(modern, type_text, values):
    ours = modern.create("ours", f"id UInt32, c {type_text}")
    theirs = modern.create("theirs", f"id UInt32, c {type_text}")
    failures = modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, (v, _) in enumerate(values)])
    assert failures == {}
    modern.parse(theirs, [f'{{"id": {i}, "c": {o or v}}}' for i, (v, o) in enumerate(values)])
    assert modern.rows(ours) == modern.rows(theirs)
    assert len(modern.rows(ours)) == len(values)


# Map values of every kind (the driver alone splits these types wrongly and raises ValueError).
MAPS: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("Map(String, Tuple(x Int8, y Nullable(String)))",
     [('{"k": {"x": 1, "y": null}, "l": [2, "z"]}', '{"k": {"x": 1, "y": null}, "l": {"x": 2, "y": "z"}}'),
      ("{}", None)]),
    ("Map(String, Map(String, Array(Int8)))", [('{"a": {"b": [1, -2], "c": []}, "d": {}}', None)]),
    ("Map(String, Array(Tuple(Int8, Decimal(9, 2))))",
     [('{"a": [[1, 1.5], [2, "-0.25"]]}', '{"a": [[1, 1.5], [2, -0.25]]}')]),
    ("Map(String, Nullable(Decimal(18, 4)))", [('{"a": null, "b": "1.2345"}', '{"a": null, "b": 1.2345}')]),
    ("Map(String, LowCardinality(Nullable(String)))", [('{"a": null, "b": "x", "c": "x"}', None)]),
    ("Map(LowCardinality(String), Map(UInt16, Tuple(`a b` String, `c.d` Array(Nullable(UInt8)))))",
     [('{"k": {"1": ["x", [1, null]], "65535": {"a b": "y", "c.d": []}}}',
       '{"k": {"1": {"a b": "x", "c.d": [1, null]}, "65535": {"a b": "y", "c.d": []}}}')]),
    ("Tuple(`a b` Int32, `c.d` String, `e,f(g)` Map(String, Tuple(Int8, Int8)))",
     [('{"a b": 1, "c.d": "x", "e,f(g)": {"k": [1, 2]}}', None)]),
    ("Array(Map(String, Tuple(Date, Nullable(UUID))))",
     [('[{"a": ["2024-01-05", null]}, {}]', None)]),
]


@pytest.mark.parametrize("type_text, values", MAPS, ids=[t for t, _ in MAPS])
def test_maps_and_tuples_of_any_value_type(modern, type_text, values):
    test_stored_as_clickhouse_parses_it(modern, type_text, values)


def test_objects_as_strings_hold_the_json_value_clickhouse_stores(modern):
    ddl = "id UInt32, s String, a Array(String), n Nullable(String)"
    ours, theirs = modern.create("ours", ddl), modern.create("theirs", ddl)
    texts = [
        '{"id": 0, "s": {"b": [1, 2.5, null, true, "x"], "a": {"é": "\\u00e9"}}, "a": ["x", {"k": []}], "n": [1]}',
        '{"id": 1, "s": [], "a": [[]], "n": {}}',
        '{"id": 2, "s": "plain", "a": [], "n": null}',
    ]
    assert modern.store(ours, texts) == {}
    modern.parse(theirs, texts)
    for a, b in zip(modern.rows(ours), modern.rows(theirs), strict=True):
        # The same JSON value; ClickHouse keeps the bytes sent, jetsink orjson's compact spelling.
        for column in ("s", "n"):
            assert (a[column] is None and b[column] is None) or (
                a[column] == b[column] or orjson.loads(a[column]) == orjson.loads(b[column])
            )
        assert [orjson.loads(x) if x[:1] in "[{" else x for x in a["a"]] == [
            orjson.loads(x) if x[:1] in "[{" else x for x in b["a"]
        ]
    assert modern.rows(ours)[0]["s"] == '{"b":[1,2.5,null,true,"x"],"a":{"é":"é"}}'


def test_objects_as_strings_false_dead_letters_them(modern):
    table = modern.create("t", "id UInt32, s String")
    failures = modern.store(table, ['{"id": 0, "s": {"a": 1}}', '{"id": 1, "s": "x"}'], objects_as_strings=False)
    assert [r for r, _ in failures.values()] == ["wrong_type"]
    assert modern.rows(table) == [{"id": 1, "s": "x"}]


# Types of newer servers (the version table's last rows).
NEWER: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("JSON", [('{"a": 1, "b": {"c": "x", "d": [1, 2.5]}, "e": null}', None), ("{}", None),
              ('{"big": 18446744073709551615, "date": "2024-01-01", "t": true, "arr": [{"x": 1}]}', None)]),
    ("JSON(max_dynamic_paths=1, max_dynamic_types=1)", [('{"a": 1, "b": "x", "c": [1]}', None), ('{"a": "y"}', None)]),
    ("JSON(a.b UInt32, `c d` String, SKIP x, SKIP REGEXP '^skip')",
     [('{"a": {"b": 7}, "c d": "q", "x": 1, "skipme": 2, "keep": [1]}', None), ('{"other": 1}', None)]),
    ("Array(JSON)", [('[{"a": 1}, {}]', None), ("[]", None)]),
    ("Tuple(j JSON, n UInt8)", [('{"j": {"k": "v"}, "n": 1}', None)]),
    ("Map(String, JSON)", [('{"x": {"k": [1, 2]}}', None)]),
    ("Nested(x UInt8, y Nullable(String))", [('[{"x": 1, "y": null}, {"x": 2, "y": "b"}]', None), ("[]", None)]),
    ("SimpleAggregateFunction(sum, UInt64)", [("5", None), ('"18446744073709551615"', "18446744073709551615")]),
    ("SimpleAggregateFunction(anyLast, Nullable(String))", [("null", None), ('"x"', None)]),
    ("BFloat16", [("1.5", None), ("-2", None), ("0", None), ("256", None), ("3.3895313892515355e38", None),
                  ('"Infinity"', '"inf"'), ('"-Infinity"', '"-inf"')]),
    ("Time", [('"12:30:05"', None), ('"-1:00:00"', None), ('"999:59:59"', None), ('"-999:59:59"', None),
              ('"0:00:00"', None)]),
    ("Time64(3)", [('"12:30:05.123"', None), ('"-0:00:00.001"', None), ('"100:00:00.5"', None),
                   ('"999:59:59.999"', None)]),
    ("Time64(9)", [('"1:02:03.123456789"', None)]),
]


@pytest.mark.parametrize("type_text, values", NEWER, ids=[t for t, _ in NEWER])
def test_newer_types(modern, type_text, values):
    test_stored_as_clickhouse_parses_it(modern, type_text, values)


def test_json_paths_get_the_types_clickhouse_gives_them(modern):
    ddl = "id UInt32, j JSON(a.b UInt32, max_dynamic_paths=2)"
    ours, theirs = modern.create("ours", ddl), modern.create("theirs", ddl)
    texts = ['{"id": 0, "j": {"a": {"b": 1}, "s": "2024-01-01", "n": 1.5, "m": [1], "z": "x"}}']
    assert modern.store(ours, texts) == {}
    modern.parse(theirs, texts)
    sql = "SELECT JSONAllPathsWithTypes(j), JSONDynamicPaths(j), JSONSharedDataPaths(j) FROM {}"
    assert modern.client.query(sql.format(ours)) == modern.client.query(sql.format(theirs))


@pytest.mark.parametrize(
    "type_text, value, reason",
    [
        ("JSON", '"text"', "wrong_type"),
        ("JSON", "[1]", "wrong_type"),
        ("BFloat16", "0.1", "lost_precision"),
        ("BFloat16", "257", "lost_precision"),
        ("BFloat16", "1e39", "out_of_range"),
        ("Time", '"12:30:05.5"', "lost_precision"),
        ("Time", '"1000:00:00"', "invalid_value"),
        ("Time", '"12:60:00"', "invalid_value"),
        ("Time", "45", "wrong_type"),
        ("Time64(3)", '"1:00:00.0001"', "lost_precision"),
    ],
)
def test_newer_types_refuse_what_they_cannot_hold(modern, type_text, value, reason):
    table = modern.create("t", f"id UInt32, c {type_text}")
    failures = modern.store(table, [f'{{"id": 0, "c": {value}}}'])
    assert [r for r, _ in failures.values()] == [reason]


def test_cases_cover_every_type_jetsink_builds():
    from workers.clickhouse.schema.builder import _FACTORIES
    from workers.clickhouse.schema.parser import ClickHouseType, parse_type

    def names(t):
        yield t.name
        for a in t.args:
            if isinstance(a, tuple) and isinstance(a[1], ClickHouseType):
                a = a[1]
            if isinstance(a, ClickHouseType):
                yield from names(a)

    from tests.modern.test_variant import DYNAMICS, VARIANTS

    covered = {n for t, _ in CASES + MAPS + NEWER for n in names(parse_type(t))}
    covered |= {n for t, _, _ in VARIANTS + DYNAMICS for n in names(parse_type(t))}
    assert set(_FACTORIES) - covered == set()


def test_a_value_a_json_typed_path_refuses_is_a_row_the_server_refuses(modern):
    from workers.clickhouse import faults, sink

    table = modern.create("t", "id UInt32, j JSON(a UInt8)")
    mapper = modern.mapper(table)
    texts = ['{"id": 0, "j": {"a": 1}}', '{"id": 1, "j": {"a": 300}}', '{"id": 2, "j": {"a": "x"}}',
             '{"id": 3, "j": {}}']
    columns, failures = mapper.map_rows([orjson.loads(t) for t in texts])
    assert failures == []  # the typed path is the server's to apply

    def insert(part):
        sink.insert(modern.client, table, modern.database, mapper.column_names, part)

    refused = faults.isolate_bad_rows(insert, columns, len(texts))
    assert [(i, getattr(e, "code", None)) for i, e in refused] == [(1, 117), (2, 117)]  # INCORRECT_DATA: dead letters
    assert modern.rows(table) == [{"id": 0, "j": {"a": 1}}, {"id": 3, "j": {"a": 0}}]
