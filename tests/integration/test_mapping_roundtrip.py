"""Issue 13 against a real clickhouse-server (18.16 here): what the mapper accepts is stored exactly.

Each test sends JSON text through orjson, the mapper compiled from the live table
(workers.clickhouse.sink.build_mapper: system.columns, the server's time zone) and the sink's
insert path (workers.clickhouse.sink.insert, with the worker's native column writers), then reads
the stored values back with a SELECT and compares them with what was sent.
"""

from __future__ import annotations

import math
from decimal import Decimal

import orjson
import pytest

from workers.clickhouse import native, sink
from workers.clickhouse.schema import ServerFeatures
from workers.clickhouse.schema.mapper import omission_groups
from workers.settings import ColumnOverride


@pytest.fixture
def store(clickhouse_client, ch_database, ch_version):
    """A function: (DDL columns, JSON texts, overrides, unknown_keys) -> (table, failures)."""
    features = ServerFeatures.from_version(ch_version)
    was_installed = native.installed()
    native.install()

    def run(ddl: str, texts: list[str], overrides=(), unknown_keys="ignore", settings=None):
        table = f"{ch_database}.t"
        clickhouse_client.execute(f"DROP TABLE IF EXISTS {table}")
        clickhouse_client.execute(f"CREATE TABLE {table} ({ddl}) ENGINE = Memory", settings=settings)
        mapper = sink.build_mapper(clickhouse_client, table, ch_database, overrides, features, unknown_keys)
        columns, failures = mapper.map_rows([orjson.loads(t) for t in texts])
        if columns[0]:
            groups = omission_groups(mapper, columns)  # rows leaving per-row DEFAULTs to the server, as inserted
            for names, part in [(mapper.column_names, columns)] if groups is None else \
                    [(g.names, g.columns) for g in groups]:
                sink.insert(clickhouse_client, table, ch_database, names, part)
        return table, {i: (e.reason, e.detail) for i, e in failures}

    yield run
    if not was_installed:
        native.uninstall()


def select(client, sql: str) -> list[tuple]:
    return client.execute(sql)


def test_decimals_from_json_numbers(clickhouse_client, store):
    sent = ["1.5", "1.23", "1.230", "9999999.99", "-9999999.99", "1e2", "1.5e1", "0.01"]
    texts = [f'{{"id": {i}, "d": {s}, "d4": 1.2345}}' for i, s in enumerate(sent)]
    bad = ['{"id": 100, "d": 0.30000000000000004}', '{"id": 101, "d": 1.234}', '{"id": 102, "d": 1e7}']
    table, failures = store("id UInt32, d Decimal(9, 2), d4 Decimal(18, 4)", texts + bad)
    rows = select(clickhouse_client, f"SELECT id, d, d4 FROM {table} ORDER BY id")
    assert [(i, d) for i, d, _ in rows] == [(i, Decimal(s)) for i, s in enumerate(sent)]
    assert {d4 for _, _, d4 in rows} == {Decimal("1.2345")}
    n = len(sent)
    assert failures[n][0] == "lost_precision"
    assert "column d" in failures[n][1]
    assert "string" in failures[n][1]
    assert failures[n + 1][0] == "lost_precision"
    assert failures[n + 2][0] == "out_of_range"


def test_integers_from_decimal_strings(clickhouse_client, store):
    texts = [
        '{"id": 0, "i": "9223372036854775807", "u": "18446744073709551615", "s": "-128"}',
        '{"id": 1, "i": "-123", "u": "42", "s": "0"}',
        '{"id": 2, "i": "05", "u": "1", "s": "1"}',
        '{"id": 3, "i": "1", "u": "-1", "s": "1"}',
        '{"id": 4, "i": true, "u": "1", "s": "1"}',
    ]
    table, failures = store("id UInt32, i Int64, u UInt64, s Int8", texts)
    rows = select(clickhouse_client, f"SELECT id, toString(i), toString(u), toString(s) FROM {table} ORDER BY id")
    assert rows == [(0, "9223372036854775807", "18446744073709551615", "-128"), (1, "-123", "42", "0")]
    assert {i: r for i, (r, _) in failures.items()} == {2: "invalid_value", 3: "out_of_range", 4: "wrong_type"}
    assert "column i" in failures[2][1]


def test_floats_from_strings_and_the_float32_boundary(clickhouse_client, store):
    texts = [
        '{"id": 0, "f": 3.4028235e38, "g": "NaN"}',
        '{"id": 1, "f": -3.4028235e38, "g": "Infinity"}',
        '{"id": 2, "f": "1.5", "g": "-Infinity"}',
        '{"id": 3, "f": 3.5e38, "g": "1"}',
        '{"id": 4, "f": 1, "g": "nan"}',
    ]
    table, failures = store("id UInt32, f Float32, g Float64", texts)
    rows = select(clickhouse_client, f"SELECT id, toString(f), g FROM {table} ORDER BY id")
    assert [r[:2] for r in rows] == [(0, "3.4028235e38"), (1, "-3.4028235e38"), (2, "1.5")]
    assert math.isnan(rows[0][2])
    assert rows[1][2] == math.inf
    assert rows[2][2] == -math.inf
    assert {i: r for i, (r, _) in failures.items()} == {3: "out_of_range", 4: "invalid_value"}


def test_datetimes_without_offset(clickhouse_client, store):
    assert select(clickhouse_client, "SELECT timezone()")[0][0] in ("UTC", "Etc/UTC")  # the fixture's server
    sent = "2024-01-05 10:20:30"
    texts = [
        f'{{"id": 0, "a": "{sent}", "b": "{sent}", "c": "{sent}", "d": "2024-01-05 00:00:00"}}',
        f'{{"id": 1, "a": "2024-01-05T10:20:30", "b": "2024-07-05T10:20:30", "c": "{sent}", "d": "2024-01-05"}}',
        f'{{"id": 2, "a": "{sent}.5", "b": "{sent}", "c": "{sent}", "d": "2024-01-05"}}',
        f'{{"id": 3, "a": "{sent}", "b": "{sent}", "c": "{sent}", "d": "{sent}"}}',
    ]
    overrides = [ColumnOverride("c", timezone="Asia/Tokyo")]
    table, failures = store(
        "id UInt32, a DateTime, b DateTime('Europe/Berlin'), c DateTime, d Date", texts, overrides
    )
    rows = select(
        clickhouse_client,
        f"SELECT id, toString(a), toString(b), toString(c, 'Asia/Tokyo'), toString(d), toUnixTimestamp(a) "
        f"FROM {table} ORDER BY id",
    )
    assert rows == [
        (0, sent, sent, sent, "2024-01-05", 1704450030),
        (1, sent, "2024-07-05 10:20:30", sent, "2024-01-05", 1704450030),
    ]
    assert failures[2][0] == "lost_precision"
    assert "column a" in failures[2][1]
    assert failures[3][0] == "lost_precision"
    assert "column d" in failures[3][1]


def test_low_cardinality_on_this_server(clickhouse_client, store):
    table, failures = store(
        "id UInt32, tag LowCardinality(String), maybe LowCardinality(Nullable(String))",
        ['{"id": 0, "tag": "a", "maybe": null}', '{"id": 1, "tag": "b", "maybe": "x"}', '{"id": 2, "tag": 5}'],
        settings={"allow_experimental_low_cardinality_type": 1},
    )
    rows = select(clickhouse_client, f"SELECT id, tag, maybe FROM {table} ORDER BY id")
    assert rows == [(0, "a", None), (1, "b", "x")]
    assert failures[2][0] == "wrong_type"


def test_unknown_keys_dead_letter(clickhouse_client, store):
    texts = ['{"id": 0, "a": "x"}', '{"id": 1, "a": "y", "typo": 1}', '{"id": 2, "a": "z", "a": "w"}']
    table, failures = store("id UInt32, a String", texts, unknown_keys="dead_letter")
    assert select(clickhouse_client, f"SELECT id, a FROM {table} ORDER BY id") == [(0, "x"), (2, "w")]  # last wins
    assert failures[1][0] == "unknown_key"
    assert "'typo'" in failures[1][1]


def test_constant_defaults_are_stored_as_the_server_stores_them(clickhouse_client, store):
    # A message without the fields, and a row the server fills itself: the same values
    # (tests/modern/test_defaults.py does the same on 26.9 with DateTime64 and the newer types).
    ddl = (
        "id UInt32, d Decimal(18, 4) DEFAULT 1.5, "
        "dec38 Decimal(38, 10) DEFAULT '-1234567890123456789012345678.0123456789', "
        "u UUID DEFAULT '6f9619ff-8b86-d011-b42d-00c04fc964ff', e Enum8('a' = 1, 'b' = -2) DEFAULT 'b', "
        "ad Array(Decimal(9, 2)) DEFAULT [1.5, -0.01], aa Array(Array(Enum8('x' = 1, 'y' = 2))) DEFAULT [['y'], []], "
        "dt DateTime DEFAULT '2105-12-31 23:59:59', s String DEFAULT 'it''s', n Nullable(UInt8) DEFAULT 7, "
        "dflt String DEFAULT concat(s, '!')"
    )
    table, failures = store(ddl, ['{"id": 0}'])
    assert failures == {}
    clickhouse_client.execute(f"INSERT INTO {table} (id) VALUES", [(1,)])
    ours, theirs = select(clickhouse_client, f"SELECT * FROM {table} ORDER BY id")
    assert ours[1:] == theirs[1:]
