"""A routed pipeline's batch split into parts (TableWriter._route, workers/partition/writer.py), no servers."""

from __future__ import annotations

from pathlib import Path

from supervisor.config import parse_config
from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
from workers.clickhouse.table_schema import TableSchema
from workers.observability.telemetry import Telemetry
from workers.partition.prepare import PartitionTarget
from workers.partition.writer import TableWriter, WriteTable

FEATURES = ServerFeatures.from_version((18, 16, 1))


def _writer(unrouted: str = "dead_letter") -> TableWriter:
    config = parse_config({"pipelines": [{
        "name": "ev", "stream": "EV", "subject": "events.*.*", "partitions": 4, "unrouted": unrouted,
        "routes": [
            {"subject": "events.click.*", "table": "clicks"},
            {"field": "kind", "equals": "view", "table": "views"},
            {"subject": "events.debug.*", "skip": True},
        ],
        "columns": {"seq": {"source": "stream_sequence"}},
    }]}, Path("/tmp"))
    p = config.pipelines[0]
    tables = []
    for route in ("clicks", "views"):
        cols = [TableColumn("id", "UInt32"), TableColumn("seq", "UInt64")]
        schema = TableSchema("ev", f"default.{route}", 0.0, lambda c=cols: c,
                             lambda c: compile_mapper("t", c, (), FEATURES, shared_overrides=p.columns))
        schema.route = route
        schema.read("start")
        tables.append(WriteTable(schema, lambda names, columns: len(columns[0])))
    target = PartitionTarget(pipeline=p, index=2, consumer="c", worker=0)
    return TableWriter(None, target, tables, None, Telemetry(), None, {})


def _msg(seq: int, subject: str, body: bytes, delivered: int = 1) -> tuple:
    stored = subject.replace("events.", "events.2.", 1).encode()
    return (stored, b"$JS.ACK.EV.c.%d.%d.%d.1700000000000000000.0" % (delivered, seq, seq), body, None)


def test_a_batch_splits_into_one_part_per_table_with_skips_and_dead_letters_counted_per_route():
    msgs = [
        _msg(1, "events.click.a", b'{"id": 1}'),
        _msg(2, "events.misc.a", b'{"id": 2, "kind": "view"}'),
        _msg(3, "events.debug.a", b"not json"),           # skipped, never a dead letter
        _msg(4, "events.misc.a", b"not json either"),     # no route skips it: invalid_json
        _msg(5, "events.misc.a", b'{"id": 5, "kind": "buy"}'),  # unrouted
        _msg(6, "events.click.b", b'{"id": "x"}'),        # clicks refuses it ("x" is no UInt32), counted for clicks
        _msg(7, "events.debug.b", b'{"id": 7, "kind": "view"}'),  # the field route comes first
    ]
    parts, total = _writer()._route(msgs, first_deliveries=True)
    assert [(p.table.label, [m[1].split(b".")[5] for m in p.msgs], p.prepared.rows) for p in parts] == [
        ("clicks", [b"1", b"6"], 1), ("views", [b"2", b"7"], 2)]
    assert parts[0].prepared.columns == [[1], [1]] and parts[1].prepared.columns == [[2, 7], [2, 7]]
    assert sorted((dl.stream_seq, dl.reason) for dl in total.dead) == [
        (4, "invalid_json"), (5, "unrouted"), (6, "invalid_value")]
    # Skips and unrouted messages are counted here; a part's rows and refusals once it is stored (store()).
    assert total.routes == {"clicks": [0, 0, 0], "views": [0, 0, 0], "skip_2": [0, 1, 0], "unrouted": [0, 0, 1]}
    assert [dl.stream_seq for dl in parts[0].prepared.dead] == [6]


def test_unrouted_skip_counts_instead_of_dead_lettering():
    parts, total = _writer("skip")._route([_msg(5, "events.misc.a", b'{"id": 5}')], first_deliveries=True)
    assert parts == [] and total.dead == [] and total.routes["unrouted"] == [0, 1, 0]
