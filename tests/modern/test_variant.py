"""Variant(...) and Dynamic against ClickHouse 26.x's engine (chdb): jetsink's choice is ClickHouse's, or a refusal.

For each type, the messages jetsink stores go through its real path (the mapper from
``system.columns``, workers/clickhouse/schema/variant.py or dynamic.py, the Native
writers of workers/clickhouse/native_variant.py); the same JSON goes through ClickHouse's
own JSONEachRow parser into a twin table.  Every stored row must read back equal, value
AND variantType() / dynamicType().  The messages jetsink refuses are dead-lettered with
the reason and a detail naming the column; ClickHouse's parse of them is not compared
(it is what jetsink declines to imitate).
"""

from __future__ import annotations

import orjson
import pytest

_STORED = "id, {kind}Type(c) AS type, c, toString(c) AS text"


def _read(modern, table: str, kind: str) -> list[dict]:
    text = modern.client.query(
        f"SELECT {_STORED.format(kind=kind)} FROM {table} ORDER BY id "
        "SETTINGS output_format_json_quote_64bit_integers = 1",
        "JSONEachRow",
    )
    return [orjson.loads(line) for line in text.splitlines()]


def _create(modern, name: str, type_text: str, suspicious: bool) -> str:
    table = f"{modern.database}.{name}"
    if suspicious:  # variants of similar types are refused by CREATE unless asked for
        modern.client.query("SET allow_suspicious_variant_types = 1")
    try:
        modern.client.query(f"CREATE TABLE {table} (id UInt32, c {type_text}) ENGINE = Memory")
    finally:
        if suspicious:
            modern.client.query("SET allow_suspicious_variant_types = 0")
    return table


def round_trip(modern, type_text: str, stored: list[str], refused: dict[str, str], suspicious: bool = False) -> int:
    """``stored`` must be stored as ClickHouse parses them; each ``refused`` value dead-lettered with its reason."""
    kind = "dynamic" if type_text.startswith("Dynamic") else "variant"
    ours, theirs = _create(modern, "ours", type_text, suspicious), _create(modern, "theirs", type_text, suspicious)
    values = stored + list(refused)
    failures = modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(values)])
    assert {values[i]: reason for i, (reason, _) in failures.items()} == refused
    for _, detail in failures.values():
        assert detail.startswith("column c: "), detail
    modern.parse(theirs, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(stored)])
    ours_rows, theirs_rows = _read(modern, ours, kind), _read(modern, theirs, kind)
    assert len(theirs_rows) == len(stored)
    for a, b in zip(ours_rows, theirs_rows, strict=True):
        assert a == b, f"{values[a['id']]}: jetsink {a} != ClickHouse {b}"
    return len(stored)


# (type, values stored as ClickHouse's parser stores them, {value: reason} refused)
VARIANTS: list[tuple[str, list[str], dict[str, str]]] = [
    ("Variant(Int64, String)",
     ["1", "-5", "9223372036854775807", '"x"', '"12"', '"-3"', '"2024-01-05"', '"1.2.3.4"', '"1e2"', '" 7"',
      '{"a":1}', "[1,2]", "null", '"é"'],
     {'""': "invalid_value", "1.5": "invalid_value", "true": "invalid_value", '"+5"': "invalid_value",
      '"007"': "invalid_value", "18446744073709551615": "invalid_value"}),
    ("Variant(String, UInt64)", ["1", "18446744073709551615", '"a"', "null", '"42"'],
     {"-1": "invalid_value", "2.5": "invalid_value"}),
    ("Variant(Date, String)",
     ['"2024-01-05"', '"x"', '"hello world"', '"1970-01-01"', '"2149-06-06"', "null"],
     {'"2024-02-30"': "invalid_value", '"1900-01-01"': "invalid_value", '"2024-1-5"': "invalid_value",
      '"abc1"': "invalid_value", "5": "invalid_value"}),
    ("Variant(Array(Int64), String)",
     ["[1,2]", "[]", '["a"]', '[1,"x"]', "[1.5]", '"x"', '"[1,2]"', "[-9223372036854775808]"],
     {"[true]": "invalid_value", "[null]": "invalid_value", "1": "invalid_value"}),
    ("Variant(Array(String), Int64)", ['["a","b"]', "[]", "7"], {"[1]": "invalid_value", '"x"': "wrong_type"}),
    ("Variant(LowCardinality(String), UInt8)", ['"a"', '"b"', '"a"', "5", "255", '"255"'],
     {"256": "invalid_value", "-1": "invalid_value"}),
    ("Variant(Array(LowCardinality(String)), LowCardinality(String), UInt8)",
     ['["a","b"]', '"a"', "7", "null", '["a"]'], {}),
    ("Variant(Bool, Float64, Int64, String)",
     ["true", "false", "1", "-7", "1.5", "1e2", "0.1", '"1.5"', '"2"', '"x"', '"1e3"'],
     {'"inf"': "invalid_value", '".5"': "invalid_value"}),
    ("Variant(Float32, UInt8)", ["1", "255", "256", "0.5", "3.4028235e38"], {"16777217": "invalid_value"}),
    ("Variant(Decimal(9, 2), String)", ["1.5", "-3", "0.01", '"1.5"', '"x"'],
     {"1.234": "invalid_value", "1e10": "invalid_value"}),
    ("Variant(IPv4, IPv6, String, UUID)",
     ['"1.2.3.4"', '"::1"', '"2001:db8::ff00:42:8329"', '"00000000-0000-0000-0000-000000000001"',
      '"6F9619FF-8B86-D011-B42D-00C04FC964FF"', '"x"', '"host-1"'],
     {'"01.2.3.4"': "invalid_value", '"300.1.1.1"': "invalid_value",
      '"00000000000000000000000000000001"': "invalid_value", '"fe80::1%eth0"': "invalid_value"}),
    ("Variant(DateTime64(3), String)",
     ['"2024-01-05 10:20:30"', '"2024-01-05 10:20:30.123"', '"nope"'],
     {'"2024-01-05T10:20:30Z"': "invalid_value", '"2024-01-05 10:20:30.1234"': "invalid_value",
      "1704450030": "invalid_value", '"2024-01-05"': "invalid_value"}),
    ("Variant(DateTime, String)", ['"2024-01-05 10:20:30"', '"plain"'],
     {'"2024-01-05 10:20:30.5"': "invalid_value", '"10:20:30"': "invalid_value"}),
    ("Variant(Enum8('a' = 1, 'b' = 2), String)", ['"a"', "1", '"b"', '"c"'],
     {'"1"': "invalid_value", "3": "invalid_value"}),
    ("Variant(FixedString(3), Int32)", ['"ab"', '"abc"', "5"], {'"abcd"': "wrong_type"}),
    ("Variant(Map(String, UInt64), String)", ['{"a":1,"b":2}', "{}", '{"a":"x"}', '{"a":-1}', '"t"'],
     {'{"a":true}': "invalid_value", '{"a":"+1"}': "invalid_value"}),
    ("Variant(String, Tuple(a Int64, b String))", ['{"a":1,"b":"x"}', "[1,2]", '"s"'],
     {'{"a":1}': "invalid_value"}),
    ("Variant(Array(Int64), Tuple(Int64, Int64))", ["[1,2]", "[1,2,3]", "[1]", "[]"],
     {'"x"': "wrong_type", '{"a":1}': "wrong_type"}),
    ("Variant(Map(String, UInt64), Tuple(Int64, String))", ['{"a":1}', "{}", '[1,"x"]'],
     {'{"a":1,"b":"x"}': "wrong_type"}),
    ("Variant(Array(Nullable(Int64)), String)", ["[1,null]", "[null]", '"x"'], {}),
    ("Variant(JSON, UInt8)", ['{"a":1,"b":{"c":"x"}}', "{}", "3"], {'"x"': "wrong_type"}),
    ("Variant(Int8, Int16, UInt64)", ["1", "-128", "300", "-129", "70000", "18446744073709551615", '"300"'],
     {"-9223372036854775809": "wrong_type", "1.5": "wrong_type"}),
]


@pytest.mark.parametrize("type_text, stored, refused", VARIANTS, ids=[t for t, _, _ in VARIANTS])
def test_variant_stores_what_clickhouse_parses(modern, type_text, stored, refused):
    round_trip(modern, type_text, stored, refused, suspicious=True)


DYNAMICS: list[tuple[str, list[str], dict[str, str]]] = [
    ("Dynamic",
     ["null", "true", "false", "1", "-1", "9223372036854775807", "9223372036854775808", "18446744073709551615",
      "1.5", "1e2", "3.0", '"x"', '""', '"1"', '"1.5"', '"true"', '"2024-01-05"', '"2024-01-05 10:20:30"',
      '"2024-01-05T10:20:30"', '"2024-01-05 10:20:30.123"', '"2024-01-05 10:20:30.123456789"', '"1.2.3.4"',
      '"abc1"', '"v1.2"', '"10:20:30"', '"00000000-0000-0000-0000-000000000001"', '"20240105"', '"é"',
      "[1,2]", "[1,2.5]", "[2.5,1]", "[]", "[null]", "[1,null]", "[[1],[]]", "[[]]", '["a","b"]',
      '["2024-01-05","2024-01-06"]', "[true,false]", '[["x"],["y","z"]]', "[9223372036854775808]"],
     {'{"a":1}': "wrong_type", "{}": "wrong_type", '[1,"x"]': "invalid_value", "[true,1]": "invalid_value",
      '"05 Jan 2024"': "invalid_value", '"2024-02-30"': "invalid_value", '"1900-01-01"': "invalid_value",
      '"01/05/2024"': "invalid_value", '"2024-01-05T10:20:30Z"': "invalid_value", '[[1],null]': "invalid_value",
      "[1,9223372036854775808]": "invalid_value"}),
    ("Dynamic(max_types=2)", ["1", '"x"', "1.5", "true", "[1]", "2", '"y"', "null", "2.5", '"2024-01-05"'], {}),
    ("Dynamic(max_types=0)", ["1", '"x"', "[1,null]", "null", '"2024-01-05 10:20:30.5"', "18446744073709551615",
                              '"2024-01-05 10:20:30"', '"2024-01-05"', "true", "-2.5", '[["a"],[]]', '"é"'], {}),
]


@pytest.mark.parametrize("type_text, stored, refused", DYNAMICS, ids=[t for t, _, _ in DYNAMICS])
def test_dynamic_stores_what_clickhouse_infers(modern, type_text, stored, refused):
    round_trip(modern, type_text, stored, refused)


def test_dynamic_overflow_is_in_the_shared_variant_as_clickhouse_puts_it(modern):
    texts = ["1", '"x"', "1.5", "true", "[1]", "2", '"y"', "null"]
    ours, theirs = (_create(modern, n, "Dynamic(max_types=2)", False) for n in ("ours", "theirs"))
    assert modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(texts)]) == {}
    modern.parse(theirs, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(texts)])
    sql = "SELECT id, isDynamicElementInSharedData(c) FROM {} ORDER BY id"
    shared = modern.client.query(sql.format(ours))
    assert shared == modern.client.query(sql.format(theirs))
    assert shared.count("true") == 3  # Float64, Bool and Array(Int64): beyond the first two types


NESTED: list[tuple[str, list[str], dict[str, str]]] = [
    ("Array(Variant(Int64, String))", ['[1,"x",null,"7"]', "[]"], {'[1.5]': "invalid_value"}),
    ("Map(String, Dynamic)", ['{"a":1,"b":"x","c":[1,2],"d":null,"e":"2024-01-05"}', "{}"],
     {'{"a":{"b":1}}': "wrong_type"}),
    ("Tuple(a Variant(Int64, String), b UInt8)", ['{"a":"x","b":1}', '{"a":5,"b":2}'],
     {'{"a":true,"b":1}': "invalid_value"}),
    ("Array(Dynamic)", ['[1,"x",[1]]', "[]"], {}),
    ("Map(String, Variant(Array(String), UInt64))", ['{"a":["x"],"b":5}'], {}),
]


@pytest.mark.parametrize("type_text, stored, refused", NESTED, ids=[t for t, _, _ in NESTED])
def test_nested_variant_and_dynamic(modern, type_text, stored, refused):
    ours, theirs = _create(modern, "ours", type_text, False), _create(modern, "theirs", type_text, False)
    values = stored + list(refused)
    failures = modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(values)])
    assert {values[i]: reason for i, (reason, _) in failures.items()} == refused
    modern.parse(theirs, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(stored)])
    # toJSONString keeps each element's type apart (1 and "1"), and the types below say which variant.
    sql = "SELECT id, toJSONString(c), toTypeName(c) FROM {} ORDER BY id"
    assert modern.client.query(sql.format(ours)) == modern.client.query(sql.format(theirs))
    types = {
        "Array(Variant(Int64, String))": "arrayMap(x -> variantType(x), c)",
        "Map(String, Dynamic)": "mapApply((k, v) -> (k, dynamicType(v)), c)",
        "Tuple(a Variant(Int64, String), b UInt8)": "variantType(c.a)",
        "Array(Dynamic)": "arrayMap(x -> dynamicType(x), c)",
        "Map(String, Variant(Array(String), UInt64))": "mapApply((k, v) -> (k, variantType(v)), c)",
    }[type_text]
    sql = f"SELECT id, {types} FROM {{}} ORDER BY id"
    assert modern.client.query(sql.format(ours)) == modern.client.query(sql.format(theirs))


def test_json_typed_path_of_a_variant_is_the_servers_parse(modern):
    type_text = "JSON(a Variant(Int64, String))"
    ours, theirs = _create(modern, "ours", type_text, False), _create(modern, "theirs", type_text, False)
    texts = ['{"id": 0, "c": {"a": 1}}', '{"id": 1, "c": {"a": "x"}}', '{"id": 2, "c": {}}']
    assert modern.store(ours, texts) == {}
    modern.parse(theirs, texts)
    sql = "SELECT id, c, variantType(c.a) FROM {} ORDER BY id"
    assert modern.client.query(sql.format(ours)) == modern.client.query(sql.format(theirs))


# Strings one at a time, as each date_time_input_format reads them: jetsink's rule must not
# depend on the server's setting, so each stored one is compared under both.
STRINGS = ["x", "", "1", "-1", "+1", "007", "1.5", ".5", "1e2", "inf", "NaN", "true", "0x10", " 1", "1,000",
           "2024-01-05", "2024-1-5", "2024/01/05", "20240105", "05.01.2024", "01/05/2024", "2024-02-30",
           "1900-01-01", "2024-01-05 10:20:30", "2024-01-05T10:20:30", "2024-01-05T10:20:30Z",
           "2024-01-05 10:20:30.5", "2024-01-05 10:20", "10:20:30", "12:30", "Jan 5 2024", "5 Jan 2024", "2024",
           "2024-01", "1704450030", "00000000-0000-0000-0000-000000000001", "00000000000000000000000000000001",
           "1.2.3.4", "01.2.3.4", "::1", "::ffff:1.2.3.4", "abc1", "a1b2", "v1.2", "[1,2]", "hello world", "1 2"]
STRING_TYPES = ["Dynamic", "Variant(Int64, String)", "Variant(Float64, String)", "Variant(Date, String)",
                "Variant(DateTime, String)", "Variant(UUID, String)", "Variant(IPv4, String)",
                "Variant(IPv6, String)", "Variant(Date32, DateTime64(3), String)", "Variant(Bool, String)"]


@pytest.mark.parametrize("type_text", STRING_TYPES)
def test_strings_go_where_clickhouse_puts_them_under_either_date_format(modern, type_text):
    kind = "dynamic" if type_text == "Dynamic" else "variant"
    ours = _create(modern, "ours", type_text, True)
    texts = [orjson.dumps(s).decode() for s in STRINGS]
    failures = modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(texts)])
    assert {r for r, _ in failures.values()} <= {"invalid_value"}
    ours_rows = {r["id"]: r for r in _read(modern, ours, kind)}
    assert len(ours_rows) + len(failures) == len(STRINGS)
    for mode in ("basic", "best_effort"):
        for i, row in ours_rows.items():
            got = modern.client.query(
                f"SELECT {_STORED.format(kind=kind)} FROM format(JSONEachRow, 'id UInt32, c {type_text}', "
                f"$${{\"id\": {i}, \"c\": {texts[i]}}}$$) SETTINGS date_time_input_format = '{mode}', "
                "allow_suspicious_variant_types = 1, "
                "output_format_json_quote_64bit_integers = 1",
                "JSONEachRow",
            )
            assert orjson.loads(got) == row, f"{STRINGS[i]!r} ({mode})"


def _single_column(modern, type_text: str) -> tuple[str, str]:
    tables = []
    for name in ("ours", "theirs"):
        table = f"{modern.database}.{name}"
        modern.client.query(f"CREATE TABLE {table} (c {type_text}) ENGINE = Memory")
        tables.append(table)
    return tables[0], tables[1]


@pytest.mark.parametrize(
    "type_text, texts",
    [
        ("Variant(Int64, String)", ["1", '"x"', "null", '"y"', "2"]),
        # (LowCardinality is left out: the driver's dictionaries are laid out unlike the server's, read the same)
        ("Variant(Array(String), String, UInt8)", ['["a","b"]', '"a"', "7", "null", '["a"]']),
        ("Variant(Date, Map(String, UInt64), Tuple(Int64, String))", ['"2024-01-05"', '{"a":1}', '[1,"x"]', "null"]),
        ("Variant(Int64, String)", ["1", "2"]),  # one variant only
        ("Variant(Int64, String)", ["null", "null"]),
        ("Dynamic", ["1", '"x"', "null", "[1,2]", "1.5", '"2024-01-05"', "true"]),
        ("Dynamic(max_types=1)", ["1", '"x"', "[1,2]", "2.5", "[[null]]"]),
    ],
)
def test_blocks_are_the_bytes_clickhouse_writes(modern, type_text, texts):
    """jetsink's Native block is byte for byte the one ClickHouse writes for the column it parsed."""
    ours, theirs = _single_column(modern, type_text)
    modern.client.inserts.clear()
    assert modern.store(ours, [f'{{"c": {t}}}' for t in texts]) == {}
    (block,) = modern.client.inserts
    modern.parse(theirs, [f'{{"c": {t}}}' for t in texts])
    assert block == modern.client.session.query(f"SELECT c FROM {theirs}", "Native").bytes()


def test_a_variant_jetsink_has_no_rule_for_leaves_the_column_to_the_server(modern):
    table = modern.create("t", "id UInt32, v Variant(String, Time)")
    mapper = modern.mapper(table)
    assert mapper.column_names == ("id",)
    (left,) = mapper.unsupported
    assert left.name == "v" and "Time inside a Variant or Dynamic has no rule" in left.why


def test_dead_letters_name_the_column_and_the_variants(modern):
    table = modern.create("t", "id UInt32, v Variant(Int64, String), d Dynamic")
    failures = modern.store(table, ['{"id": 0, "v": 1.5}', '{"id": 1, "v": [1], "d": {"a": 1}}',
                                    '{"id": 2, "d": "5 Jan 2024"}'])
    assert failures[0][0] == "invalid_value"
    assert failures[0][1].startswith("column v: Variant(Int64, String): String may take 1.5")
    assert failures[1][0] == "wrong_type" and failures[1][1].startswith("column d: ")
    assert failures[2][0] == "invalid_value" and "date" in failures[2][1]


def test_columns_with_a_constant_default_take_the_message_and_else_the_default(modern):
    # The DEFAULT is read once through the same columns (native_variant.py), in the converter's form.
    assert modern.client.execute("SELECT CAST(5::Int64 AS Variant(Int64, String)), CAST('x' AS Dynamic)") == [
        ((0, 5), ("String", "x"))
    ]
    table = modern.create("t", "id UInt32, v Variant(Int64, String) DEFAULT 'x', d Dynamic DEFAULT [1, 2]")
    assert modern.mapper(table).column_names == ("id", "v", "d")
    assert modern.store(table, ['{"id": 0}', '{"id": 1, "v": 5, "d": "y"}']) == {}
    modern.client.query(f"INSERT INTO {table} (id) VALUES (2)")
    sql = f"SELECT id, v, variantType(v), d, dynamicType(d) FROM {table} ORDER BY id"
    assert modern.client.query(sql).splitlines() == [
        "0\tx\tString\t[1,2]\tArray(UInt8)",  # the DEFAULT literal's own type, read and written back
        "1\t5\tInt64\ty\tString",
        "2\tx\tString\t[1,2]\tArray(UInt8)",
    ]


def _random_values(rng, count: int) -> list[str]:
    """JSON texts of many shapes: numbers at the types' edges, the strings above, arrays and objects of them."""
    scalars = ["null", "true", "false", "0", "1", "-1", "127", "128", "-129", "255", "256", "65536", "-2147483649",
               "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615",
               "-9223372036854775808", "0.5", "1.5", "-2.25", "1e2", "3.0", "1e-7", "16777217", "0.1"]
    scalars += [orjson.dumps(s).decode() for s in STRINGS]

    def value(depth: int) -> str:
        roll = rng.random()
        if depth < 2 and roll < 0.15:
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randrange(4))) + "]"
        if depth < 2 and roll < 0.25:
            keys = rng.sample(["a", "b", "k", "1"], rng.randrange(3))
            return "{" + ",".join(f'"{k}":{value(depth + 1)}' for k in keys) + "}"
        return rng.choice(scalars)

    return [value(0) for _ in range(count)]


RANDOM_TYPES = [
    "Variant(Int64, String)", "Variant(Bool, Float64, Int8, UInt64)", "Variant(Date, DateTime, String)",
    "Variant(Array(Int32), Array(String), String)", "Variant(Decimal(18, 4), IPv4, UUID)",
    "Variant(Map(String, Int64), Tuple(a Int64, b String), String)", "Variant(Array(Nullable(Float32)), Int16)",
    "Variant(Enum8('a' = 1, 'b' = 2), FixedString(2), Int32)", "Dynamic", "Dynamic(max_types=3)",
]


@pytest.mark.parametrize("type_text", RANDOM_TYPES)
def test_random_values_go_where_clickhouse_puts_them(modern, type_text):
    import random

    rng = random.Random(type_text)  # the same values every run
    values = _random_values(rng, 300)
    kind = "dynamic" if type_text.startswith("Dynamic") else "variant"
    ours, theirs = _create(modern, "ours", type_text, True), _create(modern, "theirs", type_text, True)
    failures = modern.store(ours, [f'{{"id": {i}, "c": {v}}}' for i, v in enumerate(values)])
    assert {r for r, _ in failures.values()} <= {"invalid_value", "wrong_type"}
    stored = [i for i in range(len(values)) if i not in failures]
    modern.parse(theirs, [f'{{"id": {i}, "c": {values[i]}}}' for i in stored])
    ours_rows, theirs_rows = _read(modern, ours, kind), _read(modern, theirs, kind)
    assert len(ours_rows) == len(theirs_rows) == len(stored) > 0
    for a, b in zip(ours_rows, theirs_rows, strict=True):
        # Objects and arrays held as String are their JSON text: ClickHouse keeps the bytes sent,
        # jetsink orjson's spelling of the same value (1e2 is 100.0), as for a String column.
        assert a["type"] == b["type"] and _as_json(a["c"]) == _as_json(b["c"]), f"{values[a['id']]}: {a} != {b}"


def _as_json(x):
    if isinstance(x, list):
        return [_as_json(e) for e in x]
    if isinstance(x, str) and x[:1] in ("[", "{"):
        try:
            return ("json", orjson.loads(x))
        except orjson.JSONDecodeError:
            return x
    return x
