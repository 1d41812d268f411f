"""ExportGuard: one line when an OTLP endpoint goes away, one when it is back, the drops counted in between."""

from __future__ import annotations

import logging

import pytest

from workers.observability import exporters

EXPORTER_LOGGER = "test.exporter.module"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def guard():
    g = exporters.ExportGuard("traces", "http://127.0.0.1:1/v1/traces", [EXPORTER_LOGGER], clock=Clock(),
                              probe_interval_s=5.0)
    g.attach()
    yield g
    g.detach()


def _failing(calls: list):
    def send() -> bool:
        calls.append(1)
        # What the SDK's HTTP client logs while it retries (it passes the error as an argument).
        logging.getLogger(EXPORTER_LOGGER).warning(
            "Transient error %s encountered while exporting %s batch, retrying in %.2fs.",
            ConnectionRefusedError("Connection refused"), "spans", 1.0,
        )
        logging.getLogger(EXPORTER_LOGGER).error(
            "Failed to export %s batch due to timeout, max retries or shutdown.", "spans")
        return False

    return send


def _ours(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == exporters.EXPORT_LOGGER]


def test_an_outage_is_one_warning_then_quiet_then_one_line_when_back(guard, caplog):
    calls: list = []
    with caplog.at_level(logging.DEBUG):
        assert guard.export(_failing(calls), 10) is False
        assert guard.down and calls == [1]
        # Within the probe interval: dropped at once, the endpoint is not tried.
        for _ in range(3):
            assert guard.export(_failing(calls), 10) is False
        assert calls == [1]
        guard._clock.now += 5.0  # due for a try: it fails again, silently
        assert guard.export(_failing(calls), 10) is False
        assert calls == [1, 1]
        # Logged by the exporter outside export() (not an outage report): let through.
        logging.getLogger(EXPORTER_LOGGER).warning("Failed to encode span batch")
        guard._clock.now += 5.0
        assert guard.export(lambda: True, 7) is True
        assert not guard.down
        assert guard.export(lambda: True, 7) is True
    # (the failed retry is logged at debug only)
    records = [r for r in caplog.records
               if r.name in (EXPORTER_LOGGER, exporters.EXPORT_LOGGER) and r.levelno >= logging.INFO]
    assert [(r.name, r.levelname) for r in records] == [
        (exporters.EXPORT_LOGGER, "WARNING"), (EXPORTER_LOGGER, "WARNING"), (exporters.EXPORT_LOGGER, "INFO"),
    ]
    down, _, back = (r.getMessage() for r in records)
    assert "traces" in down and "http://127.0.0.1:1/v1/traces" in down and "Connection refused" in down
    assert "traces" in back and "dropped 50 spans" in back
    assert guard.dropped_total == 50


def test_a_raising_exporter_counts_as_down_and_says_why(guard, caplog):
    def send() -> bool:
        raise RuntimeError("encoder broke")

    with caplog.at_level(logging.INFO):
        assert guard.export(send, 3) is False
        assert guard.export(send, 3) is False
    (line,) = _ours(caplog)
    assert "RuntimeError: encoder broke" in line.getMessage()
    assert guard.dropped_total == 6


def test_the_processors_queue_full_drops_are_counted_not_logged(guard, caplog):
    processor = logging.getLogger("opentelemetry.sdk._shared_internal")
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            processor.warning("Queue full, dropping %s.", "Span")  # the SDK's duplicate filter would pass 1 of these
        processor.warning("Queue full, dropping %s.", "Log")  # another signal's: not ours
    assert guard.dropped_total == 4
    assert [r.getMessage() for r in caplog.records if r.name == processor.name] == ["Queue full, dropping Log."]


def test_a_guarded_sdk_exporter_keeps_the_interface(guard):
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    inner = InMemorySpanExporter()
    wrapped = exporters.guarded("traces", inner, guard)
    assert wrapped.export(["a", "b"]) is SpanExportResult.SUCCESS
    assert inner.get_finished_spans() == ("a", "b")
    wrapped.shutdown()
    assert wrapped.export(["c"]) is SpanExportResult.FAILURE  # the in-memory exporter refuses after shutdown
    assert guard.down and guard.dropped_total == 1
