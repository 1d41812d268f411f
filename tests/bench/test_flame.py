"""Bench CPU profile views and the events it publishes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
import pytest

from bench import flame
from bench.events import EventTemplates, event_id, make_event
from bench.report import bar_chart, line_chart

RAW = """thread (1): MainThread;run (w.py:1);loads (x.py:2) 30
thread (1): MainThread;run (w.py:1);insert (y.py:3) 10
thread (2): insert-0;send (z.py:9) 60
"""


def test_collapsed_stacks_become_speedscope_and_svg():
    data, svg, samples = flame.convert(RAW, "worker0", rate_hz=100)
    doc = orjson.loads(data)
    assert samples == 100
    assert doc["profiles"][0]["type"] == "sampled" and len(doc["profiles"][0]["samples"]) == 3
    assert {"name": "loads", "file": "x.py", "line": 2} in doc["shared"]["frames"]
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")


def test_top_functions_rank_by_self_time():
    top = flame.top_functions(RAW)
    assert top[0] == {"frame": "send (z.py:9)", "self_pct": 60.0, "total_pct": 60.0}
    assert {"frame": "loads (x.py:2)", "self_pct": 30.0, "total_pct": 30.0} in top


WORKER_RAW = (
    "thread (1): MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1);"
    "_SelectorSocketTransport._read_ready (asyncio/selector_events.py:2);"
    "BulkParser.parse (workers/nats/wire.py:81) 40\n"
    "thread (1): MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1);"
    "BulkParser.parse (workers/nats/wire.py:112);BulkParser._dispatch (workers/nats/wire.py:150);"
    "Fetcher._on_msgs (workers/partition/fetcher.py:261) 5\n"
    "thread (1): MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1);"
    "_SelectorSocketTransport._read_ready (asyncio/selector_events.py:2) 5\n"
    "thread (2): insert-0;_WorkItem.run (concurrent/futures/thread.py:58);prepare (workers/partition/prepare.py:98);"
    "_loads_all (workers/partition/prepare.py:120) 20\n"
    "thread (2): insert-0;_WorkItem.run (concurrent/futures/thread.py:58);prepare (workers/partition/prepare.py:120);"
    "ColumnMapper.map_rows (workers/clickhouse/schema/mapper.py:1309) 15\n"
    "thread (2): insert-0;_WorkItem.run (concurrent/futures/thread.py:58);"
    "Telemetry.insert (workers/observability/telemetry.py:300);Client.execute (clickhouse_driver/client.py:1);"
    "BlockOutputStream.write (clickhouse_driver/streams/native.py:1) 10\n"
    "thread (2): insert-0;_WorkItem.run (concurrent/futures/thread.py:58);"
    "Telemetry.insert (workers/observability/telemetry.py:300);Client.execute (clickhouse_driver/client.py:1) 4\n"
    "thread (2): insert-0;_WorkItem.run (concurrent/futures/thread.py:58) 1\n"
)


def test_worker_parts_take_the_first_rule_on_the_stack():
    parts = {p["part"]: p["pct"] for p in flame.worker_parts(WORKER_RAW)}
    assert parts == {
        "intake: NATS protocol read (workers/nats/wire.py)": 40.0,  # the parser inside a socket read
        "parse JSON (orjson.loads)": 20.0,
        "map (ColumnMapper)": 15.0,
        "serialise (clickhouse-driver, workers/clickhouse/native.py)": 10.0,  # inside the insert call
        "batching": 5.0,  # inside the parser's dispatch
        "intake: socket reads": 5.0,
        "insert: send and wait for ClickHouse": 4.0,
        "insert thread: hand-offs, freeing batches": 1.0,
    }
    assert flame.worker_parts("") == []


def test_templates_are_make_event_with_their_own_id():
    t = EventTemplates(payload_bytes=350, size=50)
    doc = orjson.loads(t.body(1234))
    expected = make_event(1234 % 50, 350)
    expected["event_id"] = event_id(1234)
    assert doc == expected
    assert abs(len(t.body(7)) - 350) <= 2
    kind, ts = t.kind_and_ts(1234)
    assert kind == doc["kind"]


SVG = "{http://www.w3.org/2000/svg}"


def test_charts_are_svg_with_a_line_per_series_and_a_bar_per_value():
    root = ET.fromstring(line_chart("rate <&>", {"a<b": [(0, 1), (1, 3)], "b": [(0, 2)]}, "s", "n", marks=(0.5,)))
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "rate <&>" and "a<b" in texts and "b" in texts  # title and legend, escaped in the SVG
    lines = [p.get("points").split() for p in root.iter(f"{SVG}polyline")]
    assert [len(points) for points in lines] == [2, 1]
    assert float(lines[0][1].split(",")[1]) < float(lines[0][0].split(",")[1])  # 3 is drawn above 1
    bars = ET.fromstring(bar_chart("t", [("x", 1.0), ("y", 2.0)], "n"))
    rects = [r for r in bars.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert [r.find(f"{SVG}title").text for r in rects] == ["x: 1.0", "y: 2.0"]
    assert float(rects[1].get("height")) == pytest.approx(2 * float(rects[0].get("height")), rel=0.01)


def test_where_cpu_went_weights_workers_by_their_samples():
    from bench.report import where_cpu_went

    figures = {
        "cpu_us_per_msg": {"workers": 10.0, "nats": 8.0},
        "workers": [
            {"profiles": {"samples": 100, "parts": [{"part": "map", "pct": 60.0}, {"part": "intake", "pct": 40.0}]}},
            {"profiles": {"samples": 300, "parts": [{"part": "map", "pct": 20.0}, {"part": "intake", "pct": 80.0}]}},
        ],
        "servers": {
            "nats_profile": {"parts": [{"part": "message lookup", "pct": 50.0}, {"part": "acks", "pct": 50.0}]}
        },
    }
    assert where_cpu_went(figures, top=1) == [
        "workers (10.0 us/msg): intake 70% (7.0 us)",  # (40 x 100 + 80 x 300) / 400
        "nats-server (8.0 us/msg): message lookup 50% (4.0 us)",
    ]
    assert where_cpu_went({"workers": [{"profiles": {}}], "servers": {"nats_profile": None}}) == []
