"""Column sources into types 18.16 does not have (Map, DateTime64), on ClickHouse 26.x's engine."""

from __future__ import annotations

import orjson

from workers.clickhouse import sink
from workers.settings import ColumnOverride

TS = 1_765_000_000_123_456_789


def test_headers_into_maps_and_the_stored_time_into_datetime64_read_back_exactly(modern):
    table = modern.create(
        "t", "id UInt32, hs Map(String, Array(String)), h1 Map(String, String), "
        "t9 DateTime64(9, 'UTC'), t3 DateTime64(3, 'UTC'), subj LowCardinality(String), p UInt16")
    overrides = [ColumnOverride("hs", source="headers"), ColumnOverride("h1", source="headers"),
                 ColumnOverride("t9", source="timestamp"), ColumnOverride("t3", source="timestamp"),
                 ColumnOverride("subj", source="subject"), ColumnOverride("p", source="partition")]
    mapper = modern.mapper(table, overrides, subject="events.*", partitions=8)
    msgs = [
        (b"events.5.k1", b"$JS.ACK.E.c.1.7.7.%d.0" % TS, b'{"id": 1}', b"NATS/1.0\r\nA: x\r\nB: y z\r\n\r\n"),
        (b"events.2.k2", b"$JS.ACK.E.c.1.8.8.%d.0" % (TS + 1), b'{"id": 2}', None),
    ]
    columns, failures = mapper.map_rows([orjson.loads(m[2]) for m in msgs], msgs)
    assert failures == []
    sink.insert(modern.client, table, modern.database, mapper.column_names, columns)
    rows = modern.rows(table)
    assert rows[0] == {"id": 1, "hs": {"A": ["x"], "B": ["y z"]}, "h1": {"A": "x", "B": "y z"},
                       "t9": "2025-12-06 05:46:40.123456789", "t3": "2025-12-06 05:46:40.123",
                       "subj": "events.k1", "p": 5}
    assert rows[1]["hs"] == {} and rows[1]["t9"] == "2025-12-06 05:46:40.123456790" and rows[1]["p"] == 2
