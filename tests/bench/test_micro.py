"""bench/micro.py: the hot-path micro-benchmarks run (tiny sizes) and measure the real thing.

Only structure is asserted here, never timings.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import orjson

from bench import micro
from supervisor.config import load_config
from workers.clickhouse import native

REPO = Path(__file__).resolve().parents[2]


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _str_size(text: str) -> int:
    raw = len(text.encode("utf-8"))
    return _varint_size(raw) + raw


def _column_size(type_text: str, values: list) -> int:
    """Bytes of one column's data in the Native format (ClickHouse docs), for the demo table's types."""
    n = len(values)
    if type_text == "String":
        return sum(map(_str_size, values))
    if m := re.fullmatch(r"FixedString\((\d+)\)", type_text):
        return int(m[1]) * n
    if type_text == "Array(String)":
        return 8 * n + sum(_str_size(s) for row in values for s in row)  # UInt64 end offsets, then the items
    return {"DateTime": 4, "UInt64": 8, "Float64": 8, "UUID": 16}[type_text] * n


def _expected_block_size(names, types, columns) -> int:
    rows = len(columns[0])
    size = 1 + 1  # packet type Data, empty temporary-table name
    size += 8  # block info: field 1 (is_overflows), field 2 (bucket_num Int32), end
    size += _varint_size(len(names)) + _varint_size(rows)
    for name, type_text, values in zip(names, types, columns, strict=False):
        size += _str_size(name) + _str_size(type_text) + 1  # + "no custom serialization"
        size += _column_size(type_text, values)
    return size


def test_demo_table_and_overrides_are_those_of_config_yaml():
    pipeline = load_config(REPO / "config.yaml").pipelines[0]
    assert sorted(pipeline.columns, key=lambda o: o.column) == sorted(micro.DEMO_OVERRIDES, key=lambda o: o.column)
    declared = re.findall(r"^\s*(\w+) ([A-Za-z]\w*(?:\([^)]*\))?),?$", pipeline.create_table, re.M)
    assert [(c.name, c.type) for c in micro.DEMO_COLUMNS] == declared


def test_demo_bodies_are_the_bench_traffic():
    bodies = micro.demo_bodies(30)
    assert len(bodies) == 30 and len(set(bodies)) == 30
    sizes = [len(b) for b in bodies]
    assert all(abs(s - micro.DEFAULT_PAYLOAD_BYTES) <= 2 for s in sizes), sizes  # event ids differ in digits only
    assert orjson.loads(bodies[7])["event_id"] == "e000000000007"


def test_serialised_block_has_exactly_the_native_format_size():
    names, types, columns = micro.demo_block(40)
    serialiser = micro.Serialiser(names, types)
    size = serialiser.write(columns)
    assert size == _expected_block_size(names, types, columns)
    assert serialiser.write(columns) == size  # the same again: nothing was consumed or changed
    session_ids = columns[names.index("session_id")]
    assert all(type(u) is bytes and len(u) == 16 for u in session_ids)  # packed, as a worker's mapper makes them
    uuids = list(map(native.unpack_uuid, session_ids))
    columns[names.index("session_id")] = uuids  # UUID objects (a value-by-value batch) the driver rewrites ...
    assert serialiser.write(columns) == size
    assert columns[names.index("session_id")] == uuids  # ... in copies only


def test_serialised_block_reads_back_as_the_mapped_rows():
    from clickhouse_driver.bufferedreader import BufferedSocketReader
    from clickhouse_driver.reader import read_binary_str
    from clickhouse_driver.streams.native import BlockInputStream
    from clickhouse_driver.varint import read_varint

    names, types, columns = micro.demo_block(25)
    serialiser = micro.Serialiser(names, types, keep=True)
    serialiser.write(columns)
    data = b"".join(serialiser.socket.kept)
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        reader = BufferedSocketReader(b, 1 << 16)
        assert read_varint(reader) == 2 and read_binary_str(reader) == ""  # Data packet, no table name
        block = BlockInputStream(reader, serialiser.context).read()
    finally:
        a.close()
        b.close()
    assert [n for n, _ in block.columns_with_types] == list(names)
    back = dict(zip(names, block.get_columns(), strict=False))
    sent = dict(zip(names, columns, strict=False))
    sent["session_id"] = list(map(native.unpack_uuid, sent["session_id"]))  # packed by the mapper
    for name in ("event_id", "user_id", "kind", "amount", "country", "tags", "session_id", "payload"):
        assert list(back[name]) == sent[name], name
    # Read back as naive datetimes in the local zone, the serialiser's "server" zone.
    assert [int(d.timestamp()) for d in back["ts"]] == sent["ts"]


def test_each_benchmark_runs_on_a_tiny_batch():
    bodies = micro.demo_bodies(20)
    docs = [orjson.loads(b) for b in bodies]
    mapper = micro.demo_mapper()
    names, types, columns = micro.demo_block(20)
    assert micro.bench_loads(micro.demo_messages(bodies), 2) > 0
    assert micro.bench_intake(micro.delivery_frames(bodies, chunk=100), 20, 2) > 0
    assert micro.bench_map(mapper, docs, 2) > 0
    assert micro.bench_serialise(micro.Serialiser(names, types), columns, 2) > 0


def test_run_and_main_report_every_step(capsys):
    result = micro.run(rows=30, repeats=2)
    assert result["rows"] == 30 and result["repeats"] == 2
    for key in ("intake_us", "loads_us", "map_us", "serialise_us", "total_us"):
        assert result[key] > 0, key
    names, types, columns = micro.demo_block(30)
    assert result["block_bytes"] == _expected_block_size(names, types, columns)
    assert micro.main(["--rows", "12", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "12 demo events" in out
    for label in (
        "intake (wire, batch, ack)",
        "orjson.loads",
        "ColumnMapper.map_rows",
        "driver serialisation",
        "total",
    ):
        assert label in out


def test_intake_frames_are_real_deliveries_whatever_the_read_size():
    """The intake benchmark feeds what nats-server sends: every body comes out intact, in order."""
    import asyncio

    from workers.nats.wire import BulkParser

    bodies = micro.demo_bodies(50)
    for chunk in (7, 1000, 1 << 20):
        got = []
        parser = BulkParser(type("C", (), {"stats": {"in_msgs": 0}})())
        parser.routes[b"7"] = got.extend

        frames = micro.delivery_frames(bodies, chunk=chunk)

        async def feed(parser=parser, frames=frames):
            for f in frames:
                await parser.parse(f)

        asyncio.run(feed())
        assert [m[2] for m in got] == bodies
        assert got[3][3] == b"NATS/1.0\r\nNats-Msg-Id: e000000000003\r\n\r\n"
