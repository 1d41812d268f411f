"""workers/observability/telemetry.py and instruments.py without servers: traceparents, the off switch, links,
map and insert hooks, config."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from supervisor.config import ConfigError, parse_config
from workers.observability import telemetry
from workers.observability.instruments import Instruments
from workers.settings import profiles_dir

PIPELINE = {"name": "a", "stream": "S", "subject": "e.*", "partitions": 1, "table": "t"}


def _config(**observability):
    return parse_config({"pipelines": [PIPELINE], "observability": observability}, Path("/tmp"))


# -- traceparent ---------------------------------------------------------------------


def _traceparent(trace_id: int, span_id: int) -> str:
    """What a producer's propagator writes for a sampled span."""
    from opentelemetry import trace

    ctx = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=trace.TraceFlags(1))
    span = trace.NonRecordingSpan(ctx)
    return telemetry.traceparent_of(trace.set_span_in_context(span))


def test_traceparent_round_trip_and_rejects():
    tp = _traceparent(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    assert tp == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sc = telemetry.remote_span_context({"traceparent": tp})
    assert (sc.trace_id, sc.span_id, int(sc.trace_flags), sc.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1, True)
    for bad in (
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01",
    ):
        assert telemetry.remote_span_context({"traceparent": bad}) is None
    assert telemetry.remote_span_context({}) is None


def test_current_traceparent_is_none_outside_spans():
    assert telemetry.current_traceparent() is None


def test_off_builds_nothing_and_every_method_is_a_no_op():
    before = {t.name for t in threading.enumerate()}
    t = telemetry.setup(_config().observability, role="worker", slot=0)
    assert type(t) is telemetry.Telemetry and not t.enabled
    with t.span("x") as s, t.batch(None, []), t.control_span({"op": "assign"}), t.ack(3):
        assert s is None
    assert t.inject({"op": "drain"}) == {"op": "drain"}
    run = object()
    assert t.carry_context(run) is run
    insert = t.insert(None, "db", "t", "INSERT", 0, None)
    with t.map(None, []) as mapped, t.map_message(None) as mapped_one, insert as settings:
        assert mapped(None) is None and mapped_one(None) is None and settings is None
    t.retry("insert", RuntimeError()), t.batch_committed(None, [], None), t.worker_restarted(1), t.shutdown()
    assert {th.name for th in threading.enumerate()} == before


def test_resource_names_the_process_and_respects_otel_service_name(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = telemetry.resource_attributes("worker", 3)
    assert (
        attrs["service.name"] == "jetsink" and attrs["jetsink.worker.slot"] == 3 and attrs["process.pid"] == os.getpid()
    )
    assert attrs["service.instance.id"] != telemetry.resource_attributes("worker", 3)["service.instance.id"]
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sink-eu")
    assert "service.name" not in telemetry.resource_attributes("supervisor", None)


def test_batch_links_are_deduplicated_and_capped():
    t = telemetry.OtelTelemetry.__new__(telemetry.OtelTelemetry)  # only the link logic, no providers
    t._max_links = 3
    def raw(headers):  # a delivery as workers/nats/wire.py hands it over: raw NATS headers
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (b"events.0.k", b"$JS.ACK.EVENTS.c.1.1.1.1.0", b"{}", f"NATS/1.0\r\n{lines}\r\n".encode())

    msgs = [raw({"traceparent": _traceparent(i + 1, i + 1)}) for i in range(5)]
    msgs.insert(0, raw({"traceparent": _traceparent(1, 1), "Nats-Msg-Id": "x"}))  # a repeat
    msgs.insert(0, (b"events.0.k", b"$JS.ACK.EVENTS.c.1.1.1.1.0", b"{}", None))
    msgs.insert(0, raw({"traceparent": "nonsense"}))
    links = t._links(msgs)
    assert [(link.context.trace_id, link.context.span_id) for link in links] == [(1, 1), (2, 2), (3, 3)]
    assert all(link.context.is_remote for link in links)


def test_observability_defaults_and_keys():
    obs = _config().observability
    assert (obs.enabled, obs.traces.sample_ratio, obs.traces.per_message_spans, obs.traces.max_links) == (
        False,
        0.1,
        False,
        32,
    )
    assert obs.metrics.interval_s == 10
    p = obs.profiling
    assert (p.cpu, p.interval_s, p.duration_s, p.rate_hz, p.log_base64, p.memory, p.dir) == (
        True,
        300,
        30,
        100,
        False,
        False,
        None,
    )
    assert profiles_dir(parse_config({"pipelines": [PIPELINE], "state_dir": "var"}, Path("/srv"))) == Path(
        "/srv/var/profiles"
    )


@pytest.mark.parametrize(
    "observability, problem",
    [
        (
            {"traces": {"sample_ratio": 1.5}},
            "observability.traces.sample_ratio: expected a number from 0 to 1, got 1.5",
        ),
        ({"traces": {"sample_rate": 1}}, "observability.traces.sample_rate: unknown key; did you mean 'sample_ratio'?"),
        ({"profiling": {"memroy": True}}, "observability.profiling.memroy: unknown key; did you mean 'memory'?"),
        ({"profiling": {"duration_s": 0.5}}, "observability.profiling.duration_s: expected at least 1 second, got 0.5"),
        (
            {"profiling": {"interval_s": 10, "duration_s": 30}},
            "observability.profiling.duration_s: must not be longer than interval_s",
        ),
        (
            {"metrics": {"interval_s": "fast"}},
            "observability.metrics.interval_s: expected a positive number of seconds, got 'fast'",
        ),
    ],
)
def test_observability_problems_name_the_key(observability, problem):
    with pytest.raises(ConfigError) as exc:
        _config(**observability)
    assert problem in str(exc.value)


def test_per_message_map_spans_give_the_same_columns_as_one_batch():
    from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
    from workers.partition.prepare import PartitionTarget, join_prepared, prepare

    config = _config()
    target = PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=0)
    mapper = compile_mapper(
        "t", [TableColumn("id", "String"), TableColumn("n", "UInt8")], (), ServerFeatures.from_version((18, 16))
    )
    bodies = [b'{"id": "a", "n": 1}', b'{"id": "b", "n": 300}', b"nope", b'{"id": "c", "n": 3}', b'{"id": "d", "n": 4}',
              b'{"id": "e", "n": 5, "extra": 0}']
    msgs = [(f"e.0.k{i}".encode(), f"$JS.ACK.S.c.1.{i + 1}.{i + 1}.1700000000000000000.0".encode(), b, None)
            for i, b in enumerate(bodies)]
    whole = prepare(msgs, mapper, target)
    joined = join_prepared([prepare([m], mapper, target) for m in msgs])
    assert (
        (joined.columns, joined.rows, joined.row_msgs)
        == (whole.columns, whole.rows, whole.row_msgs)
        == ([["a", "c", "d", "e"], [1, 3, 4, 5]], 4, [0, 3, 4, 5])
    )
    # The whole batch's order of dead letters (invalid JSON before refused documents), and its new keys.
    assert [d.stream_seq for d in joined.dead] == [d.stream_seq for d in whole.dead] == [3, 2]
    assert joined.new_keys == whole.new_keys == {"extra"}


@pytest.mark.parametrize("per_message", [False, True])
def test_the_partition_prepares_under_map_spans(per_message):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
    from workers.partition.prepare import PartitionTarget, prepare
    from workers.partition.writer import TableWriter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    t = telemetry.OtelTelemetry.__new__(telemetry.OtelTelemetry)  # its span hooks on an in-memory tracer
    t.tracer, t.per_message_spans = provider.get_tracer("test"), per_message
    writer = TableWriter.__new__(TableWriter)  # only _prepare: no connection needed
    writer._telemetry = t
    mapper = compile_mapper("t", [TableColumn("id", "String")], (), ServerFeatures.from_version((18, 16)))
    target = PartitionTarget(pipeline=_config().pipelines[0], index=0, consumer="c", worker=0)
    bodies = [b'{"id": "a"}', b"nope", b'{"id": "c"}']
    msgs = [(b"e.0.k", f"$JS.ACK.S.c.1.{i + 1}.{i + 1}.1700000000000000000.0".encode(), b, None)
            for i, b in enumerate(bodies)]
    prepared = writer._prepare(msgs, mapper, target)
    whole = prepare(msgs, mapper, target)
    assert (prepared.columns, prepared.row_msgs, len(prepared.dead)) == (whole.columns, whole.row_msgs, 1)
    assert (whole.columns, whole.row_msgs) == ([["a", "c"]], [0, 2])
    spans = exported.get_finished_spans()
    assert {s.name for s in spans} == {"map"}
    if per_message:
        assert [s.attributes["messaging.message.body.size"] for s in spans] == [len(b) for b in bodies]
        assert [s.attributes.get("error.type") for s in spans] == [None, "invalid_json", None]
    else:
        (span,) = spans
        assert dict(span.attributes) == {"messaging.batch.message_count": 3, "db.collection.name": "t",
                                         "jetsink.rows": 2, "jetsink.dead_lettered": 1}


def test_the_insert_hook_wraps_the_call_in_prepare_and_send_and_hands_the_server_its_trace():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    from workers.clickhouse.schema import ServerFeatures

    exported, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    t = telemetry.OtelTelemetry.__new__(telemetry.OtelTelemetry)
    t.tracer = provider.get_tracer("test")
    t._metrics = Instruments(MeterProvider(metric_readers=[reader]).get_meter("test"), slot=None)
    statement = "INSERT INTO `db`.`t` (`id`) VALUES"
    with t.span("batch") as batch:
        with t.insert(None, "db", "t", statement, 2, ServerFeatures.from_version((23, 8))) as settings:
            pass
        failing = t.insert(None, "db", "t", statement, 2, ServerFeatures.from_version((18, 16)))
        with pytest.raises(ConnectionError), failing as old:
            raise ConnectionError("gone")
    assert old is None  # 18.16 has no trace context in its protocol
    spans = [s for s in exported.get_finished_spans() if s.name != "batch"]
    assert [s.name for s in spans] == ["clickhouse.prepare", "clickhouse.send", "clickhouse.prepare", "clickhouse.send"]
    assert all(s.parent.span_id == batch.get_span_context().span_id for s in spans)
    send = spans[1]
    ctx = send.context
    assert settings == {"opentelemetry_traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    assert send.attributes["db.query.text"] == statement and send.attributes["db.operation.batch.size"] == 2
    assert spans[3].attributes["error.type"] == "ConnectionError" and not spans[3].status.is_ok
    (metric,) = [m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert metric.name == "jetsink.insert.duration"
    assert sorted(p.count for p in metric.data.data_points) == [1, 1]  # one ok, one with error.type
