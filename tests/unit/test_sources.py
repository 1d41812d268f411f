"""Columns filled from the message (workers/clickhouse/schema/sources.py): every source, its type
checks, and what a value that does not fit does (only its message is refused)."""

from __future__ import annotations

import pytest

from workers.clickhouse.schema import SchemaError, ServerFeatures, TableColumn, compile_mapper
from workers.settings import ColumnOverride

FEATURES = ServerFeatures.from_version((25, 8, 1))
TS = 1_765_000_000_123_456_789  # ns


def _msg(i: int, subject: bytes = b"events.3.click.k1", headers: bytes | None = None, delivered: int = 1) -> tuple:
    reply = b"$JS.ACK.EVENTS.c.%d.%d.%d.%d.0" % (delivered, 100 + i, i + 1, TS + i)
    return (subject, reply, b'{"id": %d}' % i, headers)


def _map(column_type: str, msgs: list[tuple], **override):
    mapper = compile_mapper(
        "t", [TableColumn("id", "UInt32"), TableColumn("x", column_type)],
        [ColumnOverride("x", **override)], FEATURES, subject="events.*.*", partitions=8,
    )
    import orjson

    columns, failures = mapper.map_rows([orjson.loads(m[2]) for m in msgs], msgs)
    return columns[1], [(i, e.reason, e.detail) for i, e in failures]


def test_subject_and_its_tokens_are_the_producers_subject_without_the_partition_token():
    msgs = [_msg(0), _msg(1, b"events.5.view.k9")]
    assert _map("String", msgs, source="subject") == (["events.click.k1", "events.view.k9"], [])
    assert _map("LowCardinality(String)", msgs, source="subject_token", subject_token=2)[0] == ["click", "view"]
    assert _map("String", msgs, source="subject_token", subject_token=-1)[0] == ["k1", "k9"]
    # A subject with fewer tokens: missing, so the column's rule (here: required) decides.
    values, failures = _map("String", [_msg(0, b"events.3.x")], source="subject_token", subject_token=5,
                            required=True)
    assert failures and failures[0][1] == "missing_required"
    values, failures = _map("UInt16", [_msg(0, b"events.3.42.k"), _msg(1, b"events.3.x4.k")], source="subject_token",
                            subject_token=2)
    assert values == [42] and failures == [(1, "wrong_type", "column x: subject_token 'x4' is not an integer")]


def test_sequence_timestamp_delivered_and_partition_come_from_the_ack_subject_and_the_stored_subject():
    msgs = [_msg(0), _msg(1, b"events.5.view.k9", delivered=3)]
    assert _map("UInt64", msgs, source="stream_sequence")[0] == [100, 101]
    assert _map("Int64", msgs, source="timestamp")[0] == [TS, TS + 1]
    assert _map("DateTime64(9, 'UTC')", msgs, source="timestamp")[0] == [TS, TS + 1]
    assert _map("DateTime64(3)", msgs, source="timestamp")[0] == [TS // 10**6, (TS + 1) // 10**6]
    assert _map("Nullable(DateTime)", msgs, source="timestamp")[0] == [TS // 10**9] * 2
    assert _map("UInt8", msgs, source="delivered")[0] == [1, 3]
    assert _map("UInt16", msgs, source="partition")[0] == [3, 5]


def test_headers_one_or_all_and_a_repeated_one_refuses_only_its_message():
    one = b"NATS/1.0\r\nX-Tenant: acme\r\nX-Other: 1\r\n\r\n"
    twice = b"NATS/1.0\r\nX-Tenant: a\r\nX-Tenant: b\r\n\r\n"
    msgs = [_msg(0, headers=one), _msg(1, headers=None), _msg(2, headers=twice)]
    values, failures = _map("String", msgs, source="header", header="X-Tenant")
    assert values == ["acme", ""]  # absent: the type's zero (no DEFAULT, not required)
    assert failures == [(2, "invalid_value", "column x: header 'X-Tenant' is sent 2 times; a column holds one value")]
    assert _map("String", msgs[:1], header="x-tenant", source="header")[0] == [""]  # names are exact
    values, failures = _map("Map(String, Array(String))", msgs, source="headers")
    assert values == [{"X-Tenant": ["acme"], "X-Other": ["1"]}, {}, {"X-Tenant": ["a", "b"]}] and failures == []
    values, failures = _map("Map(String, String)", msgs, source="headers")
    assert values == [{"X-Tenant": "acme", "X-Other": "1"}, {}] and [f[:2] for f in failures] == [(2, "invalid_value")]
    # A header into a typed column is read as that type's JSON string would be.
    values, failures = _map("UUID", [_msg(0, headers=b"NATS/1.0\r\nX-Req: not-a-uuid\r\n\r\n")], source="header",
                            header="X-Req")
    assert values == [] and failures[0][1] != "missing_required"


def test_the_raw_message_is_its_bytes():
    msgs = [_msg(0), (b"events.1.a.b", b"$JS.ACK.E.c.1.9.9.1.0", b'{"id": 1, "k": "\xc3\xa9"}', None)]
    assert _map("String", msgs, source="message")[0] == [msgs[0][2], msgs[1][2]]


@pytest.mark.parametrize("source, column_type, extra", [
    ("stream_sequence", "UInt32", {}),
    ("stream_sequence", "String", {}),
    ("timestamp", "String", {}),
    ("timestamp", "Date", {}),
    ("delivered", "String", {}),
    ("partition", "Float64", {}),
    ("headers", "Map(String, UInt8)", {}),
    ("headers", "String", {}),
    ("message", "UInt64", {}),
    ("message", "FixedString(4)", {}),
    ("subject", "Array(String)", {}),
    ("header", "Float32", {"header": "X"}),
])
def test_a_source_that_cannot_fill_its_column_is_refused_when_compiled_naming_it(source, column_type, extra):
    with pytest.raises(SchemaError, match=f"table t column x: source {source} cannot fill "):
        _map(column_type, [], source=source, **extra)


def test_metadata_columns_leave_the_json_keys_alone():
    # A key named like a metadata column is not read by it: with unknown_keys dead_letter it is unknown.
    mapper = compile_mapper("t", [TableColumn("id", "UInt32"), TableColumn("seq", "UInt64")],
                            [ColumnOverride("seq", source="stream_sequence")], FEATURES, unknown_keys="dead_letter")
    columns, failures = mapper.map_rows([{"id": 1}, {"id": 2, "seq": 5}], [_msg(0), _msg(1)])
    assert columns == [[1], [100]] and [(i, e.reason) for i, e in failures] == [(1, "unknown_key")]
    assert mapper.sources == {"seq": "stream_sequence"}
    with pytest.raises(ValueError, match="filled from the messages"):
        mapper.map_rows([{"id": 1}])
