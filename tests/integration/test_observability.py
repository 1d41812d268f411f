"""Observability end to end: a real OTLP/HTTP receiver, a real 2-worker sink, real py-spy and memray."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import nats
import orjson
import pytest

from bench.events import make_event
from supervisor.profiler import find_py_spy
from tests.integration.harness import REPO, Supervisor, pipeline_names, publish_events, run, sink_config, wait_until
from tests.integration.otlp_receiver import OTLPReceiver

N_GOOD = 300
N_TRACED = 12  # messages published with a producer traceparent


def _otel_env(monkeypatch, receiver):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    # Export spans and logs every 200 ms instead of 5 s, so the test waits less.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "200")
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)


def _dead_letters(nats_url, stream):
    async def go():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream)
            return (
                [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
                if info.state.messages
                else []
            )
        finally:
            await nc.close()

    return run(go())


def _count(client, db):
    return client.execute(f"SELECT count() FROM {db}.events")[0][0]


def _thread_names(pid: int) -> list[str]:
    """Python thread names of a live process, read by py-spy (no cooperation from the process)."""
    out = subprocess.run(
        [find_py_spy(), "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return [line.split('"')[1] for line in out.stdout.splitlines() if line.startswith("Thread ") and '"' in line]


def test_traces_metrics_logs_and_profiles_across_processes(
    tmp_path, monkeypatch, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("ob")
    name, stream = names["name"], names["stream"]
    profiles = tmp_path / "profiles"
    observability = {
        "enabled": True,
        "traces": {"sample_ratio": 1.0},
        "metrics": {"interval_s": 1},
        "profiling": {
            "interval_s": 2,
            "duration_s": 2,
            "rate_hz": 50,
            "log_base64": True,
            "memory": True,
            "dir": str(profiles),
        },
    }
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=4, workers=2, observability=observability,
        **names,
    )
    rng = random.Random(7)
    producers = {(f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}") for _ in range(N_TRACED)}
    traced = sorted(producers)
    msgs = []
    for i in range(N_GOOD):
        headers = (
            {"traceparent": f"00-{traced[i % N_TRACED][0]}-{traced[i % N_TRACED][1]}-01"} if i < N_TRACED else None
        )
        msgs.append((f"{prefix}.k{i % 8}", orjson.dumps(make_event(i)), headers))
    bad_tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    msgs.append((f"{prefix}.bad", b'{"event_id": "broken', {"traceparent": bad_tp}))

    with OTLPReceiver() as receiver:
        _otel_env(monkeypatch, receiver)
        sup = Supervisor(cfg, tmp_path / "sink.log")
        try:
            sup.wait_acquired(4)
            assert publish_events(nats_url, msgs, stream).published == len(msgs)
            wait_until(lambda: _count(clickhouse_client, ch_database) >= N_GOOD, 60, "rows")

            # -- the batch span tree ------------------------------------------------
            def linked():
                got = {link for s in receiver.spans("batch") for link in s.links}
                return producers <= got and receiver.spans("nats.ack")

            wait_until(linked, 30, "batch spans linking every producer span")
            spans = receiver.spans()
            by_id = {s.span_id: s for s in spans}
            batches = [s for s in spans if s.name == "batch"]
            for batch in batches:
                assert batch.kind == "CONSUMER" and batch.parent_span_id == ""
                a = batch.attributes
                assert a["messaging.system"] == "nats"
                assert a["messaging.destination.name"] == stream
                assert a["messaging.consumer.group.name"].startswith(f"jetsink_{name}_")
                assert a["messaging.batch.message_count"] >= 1
                assert a["jetsink.pipeline"] == name and 0 <= a["jetsink.partition"] < 4
                assert batch.resource["service.name"] == "jetsink" and batch.resource["jetsink.role"] == "worker"
            wait_until(
                lambda: all(
                    {"map", "clickhouse.prepare", "clickhouse.send", "nats.ack"}
                    <= {s.name for s in receiver.spans() if s.parent_span_id == b.span_id}
                    for b in batches
                ),
                15,
                "every batch's children",
            )
            children = [s for s in receiver.spans() if s.parent_span_id in {b.span_id for b in batches}]
            for child in children:
                assert child.trace_id == by_id[child.parent_span_id].trace_id
            send = [c for c in children if c.name == "clickhouse.send"]
            assert send and all(c.kind == "CLIENT" for c in send)
            assert all(
                c.attributes["db.system.name"] == "clickhouse"
                and c.attributes["db.collection.name"] == "events"
                and c.attributes["db.operation.name"] == "INSERT"
                and c.attributes["db.namespace"] == ch_database
                for c in send
            )
            assert sum(c.attributes["jetsink.rows"] for c in children if c.name == "map") == N_GOOD

            # -- a dead letter: an event on its batch span, and that span on the letter --
            dead_batch = wait_until(
                lambda: [b for b in receiver.spans("batch") if any(e[0] == "dead_letter" for e in b.events)],
                15,
                "dead_letter event",
            )[0]
            event = next(e for e in dead_batch.events if e[0] == "dead_letter")[1]
            assert event["jetsink.dlq.reason"] == "invalid_json"
            letters = wait_until(lambda: _dead_letters(nats_url, f"{stream}_DLQ"), 30, "the dead letter")
            assert letters[0].headers["traceparent"] == bad_tp  # the producer's, untouched
            assert (
                letters[0].headers["Jetsink-Traceparent"].startswith(f"00-{dead_batch.trace_id}-{dead_batch.span_id}-")
            )

            # -- supervisor span -> worker spans in other processes -------------------
            worker_assigns = wait_until(
                lambda: [
                    s
                    for s in receiver.spans("worker.assign")
                    if s.parent_span_id in by_id
                    or s.parent_span_id in {x.span_id for x in receiver.spans("supervisor.assign")}
                ],
                15,
                "worker.assign spans",
            )
            sup_assigns = {s.span_id: s for s in receiver.spans("supervisor.assign")}
            slots = set()
            for ws in worker_assigns:
                parent = sup_assigns[ws.parent_span_id]
                assert parent.trace_id == ws.trace_id
                assert parent.resource["jetsink.role"] == "supervisor" and ws.resource["jetsink.role"] == "worker"
                assert parent.resource["service.instance.id"] != ws.resource["service.instance.id"]
                assert parent.resource["process.pid"] != ws.resource["process.pid"]
                slots.add(ws.resource["jetsink.worker.slot"])
            assert slots == {0, 1}
            start = receiver.spans("supervisor.start")
            assert len(start) == 1 and all(s.trace_id == start[0].trace_id for s in sup_assigns.values())

            # -- log lines carry the ids of the span they were written in ----------------
            for ws in worker_assigns:
                lines = [ln for ln in sup.logged("acquired partition") if ln.get("span_id") == ws.span_id]
                assert lines and all(
                    ln["trace_id"] == ws.trace_id and ln["slot"] == ws.resource["jetsink.worker.slot"] for ln in lines
                )
            wait_until(
                lambda: any(r["span_id"] == worker_assigns[0].span_id for r in receiver.received.logs),
                15,
                "OTLP log records",
            )

            # -- metrics -----------------------------------------------------------------
            wanted = {
                "jetsink.messages.consumed",
                "jetsink.rows.inserted",
                "jetsink.bytes.inserted",
                "jetsink.batch.rows",
                "jetsink.insert.duration",
                "jetsink.freshness",
                "jetsink.dlq.messages",
                "jetsink.consumer.pending",
            }
            wait_until(lambda: wanted <= receiver.metric_names(), 20, f"metrics {wanted}")
            points = [m for m in receiver.received.metrics if m[0] == "jetsink.dlq.messages"]
            assert {p[1]["jetsink.dlq.reason"] for p in points} == {"invalid_json"}

            # -- CPU profiles: one per worker, each parsing as what it claims -------------
            def cpu_profiles():
                found = {
                    slot: (
                        sorted(profiles.glob(f"cpu-worker{slot}-*.speedscope.json")),
                        sorted(profiles.glob(f"cpu-worker{slot}-*.svg")),
                    )
                    for slot in (0, 1)
                }
                return found if all(j and s for j, s in found.values()) else None

            found = wait_until(cpu_profiles, 40, "a CPU profile of each worker")
            for _slot, (jsons, svgs) in found.items():
                doc = json.loads(jsons[0].read_text())
                assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
                prof = doc["profiles"][0]
                assert prof["type"] == "sampled" and prof["unit"] == "seconds"
                # py-spy samples only threads on CPU: an idle window may have no samples.
                assert len(prof["samples"]) == len(prof["weights"])
                assert prof["endValue"] == pytest.approx(sum(prof["weights"]))
                assert all(0 <= i < len(doc["shared"]["frames"]) for sample in prof["samples"] for i in sample)
                assert ET.parse(svgs[0]).getroot().tag == "{http://www.w3.org/2000/svg}svg"
                assert jsons[0].name[: -len(".speedscope.json")] == svgs[0].name[: -len(".svg")]

            # -- base64 in the log, and back out --------------------------------------------
            out = tmp_path / "extracted"
            proc = subprocess.run(
                [sys.executable, "-m", "supervisor", "profiles", "extract", str(sup.log_path), "-o", str(out)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            for jsons, svgs in found.values():
                for path in (jsons[0], svgs[0]):
                    assert (out / path.name).read_bytes() == path.read_bytes()

            pids = sup.worker_pids()
            assert sup.terminate() == 0
        finally:
            sup.close()

        # -- shutdown is one trace: supervisor.shutdown -> supervisor.drain -> worker.drain --
        def drained():
            drains = {s.span_id: s for s in receiver.spans("supervisor.drain")}
            return [s for s in receiver.spans("worker.drain") if s.parent_span_id in drains]

        worker_drains = wait_until(drained, 10, "worker.drain spans under supervisor.drain")
        assert {s.resource["jetsink.worker.slot"] for s in worker_drains} == {0, 1}
        shutdown = receiver.spans("supervisor.shutdown")
        assert len(shutdown) == 1 and all(s.trace_id == shutdown[0].trace_id for s in worker_drains)

    # -- memray: a capture, a flame graph and a summary per worker ---------------------
    for slot, pid in pids.items():
        html = profiles / f"memray-worker{slot}-{pid}.html"
        summary = json.loads((profiles / f"memray-worker{slot}-{pid}.summary.json").read_text())
        assert (profiles / f"memray-worker{slot}-{pid}.bin").stat().st_size > 0
        assert html.stat().st_size > 0 and "<html" in html.read_text()[:2000].lower()
        assert summary["peak_memory_bytes"] > 0
        assert summary["top_allocations"] and all(t["bytes"] > 0 and t["location"] for t in summary["top_allocations"])
        assert summary["heap_mb_by_minute"] and all(mb > 0 for mb in summary["heap_mb_by_minute"])


def test_observability_off_exports_nothing_and_starts_no_exporter(
    tmp_path, monkeypatch, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("ob")
    stream = names["stream"]
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=2, workers=2, **names)
    with OTLPReceiver() as receiver:
        _otel_env(monkeypatch, receiver)
        sup = Supervisor(cfg, tmp_path / "sink.log")
        try:
            sup.wait_acquired(2)
            msgs = [
                (f"{prefix}.k{i % 4}", orjson.dumps(make_event(i)), {"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"})
                for i in range(200)
            ]
            assert publish_events(nats_url, msgs, stream).published == len(msgs)
            wait_until(lambda: _count(clickhouse_client, ch_database) >= len(msgs), 60, "rows")
            for _slot, pid in sup.worker_pids().items():
                names = _thread_names(pid)
                assert "MainThread" in names, names
                assert not [n for n in names if "otel" in n.lower()], names
            assert not any("trace_id" in line for line in sup.lines())
            assert sup.terminate() == 0
        finally:
            sup.close()
        assert receiver.received.requests == 0
    assert not (tmp_path / "var" / "profiles").exists()


def test_a_collector_that_comes_up_late_gets_the_later_batches_and_the_log_stays_quiet(
        tmp_path, monkeypatch, nats_url, clickhouse_server, clickhouse_client, ch_database):
    from supervisor.embedded import free_port

    names, prefix = pipeline_names("ob")
    stream = names["stream"]
    observability = {"enabled": True, "traces": {"sample_ratio": 1.0}, "metrics": {"interval_s": 1},
                     "profiling": {"cpu": False}}
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=2, workers=1,
                      observability=observability, **names)
    port = free_port()  # nothing listens here until the receiver starts
    rng = random.Random(17)

    def events(first: int, n: int) -> tuple[list, set]:
        # Fewer producers than a batch span links (traces.max_links), so every one must be linked.
        producers = [(f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}") for _ in range(N_TRACED)]
        msgs = [(f"{prefix}.k{i % 4}", orjson.dumps(make_event(first + i)),
                 {"traceparent": f"00-{producers[i][0]}-{producers[i][1]}-01"} if i < N_TRACED else None)
                for i in range(n)]
        return msgs, set(producers)

    _otel_env(monkeypatch, SimpleNamespace(endpoint=f"http://127.0.0.1:{port}"))
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(2)
        before, _ = events(0, 50)
        assert publish_events(nats_url, before, stream).published == len(before)
        sup.wait(lambda: _count(clickhouse_client, ch_database) >= 50, 60, "rows of the first batches")

        def warned(role: str, signal: str) -> list[dict]:
            return [ln for ln in sup.lines() if ln.get("logger") == "jetsink.telemetry.export"
                    and ln.get("level") == "warning" and ln.get("role") == role and ln.get("signal") == signal]

        signals = ("traces", "metrics", "logs")
        sup.wait(lambda: all(warned(role, signal) for role in ("worker", "supervisor") for signal in signals),
                 60, "a warning per signal from each process")
        line = warned("worker", "traces")[0]
        assert line["endpoint"] == f"http://127.0.0.1:{port}/v1/traces" and line["endpoint"] in line["msg"]

        with OTLPReceiver(port) as receiver:
            # The exporters try the endpoint again every few seconds and drop what comes
            # meanwhile: batches keep coming until one of them arrives.
            def later_batch_arrived() -> bool:
                msgs, producers = events(_count(clickhouse_client, ch_database), 20)
                assert publish_events(nats_url, msgs, stream).published == len(msgs)
                linked = lambda: producers <= {link for s in receiver.spans("batch") for link in s.links}  # noqa: E731
                try:
                    return bool(wait_until(linked, 3, "this batch's spans"))
                except AssertionError:
                    return False

            sup.wait(later_batch_arrived, 90, "the spans of a batch published after the receiver came up")
            back = sup.wait(lambda: [ln for ln in sup.lines() if ln.get("logger") == "jetsink.telemetry.export"
                                     and ln.get("role") == "worker" and ln.get("signal") == "traces"
                                     and "dropped" in ln], 30, "the worker's line saying traces are exported again")
            assert len(back) == 1 and back[0]["dropped"] > 0 and "again" in back[0]["msg"]
            assert sup.terminate() == 0
    finally:
        sup.close()
    lines = sup.lines()
    # During the outage: one warning per signal and process, and nothing from the exporters themselves.
    assert not [ln for ln in lines if str(ln.get("logger", "")).startswith("opentelemetry")]
    warnings = [(ln.get("role"), ln.get("slot"), ln.get("signal")) for ln in lines
                if ln.get("logger") == "jetsink.telemetry.export" and ln.get("level") == "warning"]
    assert len(warnings) == len(set(warnings)) == 6, warnings
    assert not [ln for ln in lines if "Transient error" in str(ln.get("msg")) or "Queue full" in str(ln.get("msg"))]
