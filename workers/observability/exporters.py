"""OTLP exporters that keep quiet while the collector is down, and say what they dropped.

The SDK's exporters retry each failed export with backoff and log every attempt ("Transient
error ... Max retries exceeded"), several lines a second per signal while a collector is
down; the batch processors log "Queue full, dropping ..." on top. Each exporter here wraps
the SDK's own (the library is not patched) in an `ExportGuard` that:

- logs one warning naming the signal and the endpoint when exports start failing, and one
  line when they succeed again, with how much was dropped meanwhile;
- swallows the wrapped exporter's own log records (only those emitted in the thread and
  the moment it exports) and the processor's queue-full records, counting what they drop;
- while the endpoint is down, tries it for real once every PROBE_INTERVAL_S and drops the
  batches in between at once, so the processor's queue keeps draining and no data waits.

Nothing here runs on the sink's hot path: export() is called by the SDK's processor and
reader threads, which the hot path only hands data to through bounded queues that drop.
Our own lines go to the `EXPORT_LOGGER` logger, which the OTLP log handler never exports
(a logs exporter reporting its own failures as logs would feed itself).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from typing import Any, Callable, Sequence

EXPORT_LOGGER = "jetsink.telemetry.export"
log = logging.getLogger(EXPORT_LOGGER)

PROBE_INTERVAL_S = 5.0
# Where the SDK's batch processors log "Queue full, dropping <Span|Log>." (once per 20 s at most).
_PROCESSOR_LOGGER = "opentelemetry.sdk._shared_internal"
_QUEUE_FULL = "Queue full, dropping %s."
_PROCESSOR_ITEM = {"traces": "Span", "logs": "Log"}
_ITEMS = {"traces": "spans", "metrics": "metric points", "logs": "log records"}


class ExportGuard(logging.Filter):
    """One signal's exporter health: up or down, what it dropped; the one line per change.

    Also the logging filter that keeps the wrapped exporter's records out of the log
    (attached to its loggers by `attach`, removed by `detach`).
    """

    def __init__(self, signal: str, endpoint: str, exporter_loggers: Sequence[str],
                 clock: Callable[[], float] = time.monotonic, probe_interval_s: float = PROBE_INTERVAL_S) -> None:
        super().__init__()
        self.signal = signal
        self.endpoint = endpoint
        self.dropped_total = 0  # since the process started
        self._dropped = 0  # since the endpoint went down
        self._down_since: float | None = None
        self._next_try = 0.0
        self._clock = clock
        self._probe_interval_s = probe_interval_s
        self._exporting = threading.local()
        self._reason: str | None = None
        self._loggers = [logging.getLogger(name) for name in exporter_loggers]
        self._processor_item = _PROCESSOR_ITEM.get(signal)
        self._lock = threading.Lock()  # drops are counted from the processor's thread and the emitting ones

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def attach(self) -> None:
        for logger in self._loggers:
            logger.addFilter(self)
        if self._processor_item:
            # First in line: the processor's own duplicate filter would hide most drops from us.
            logging.getLogger(_PROCESSOR_LOGGER).filters.insert(0, self)

    def detach(self) -> None:
        for logger in self._loggers + [logging.getLogger(_PROCESSOR_LOGGER)]:
            logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _PROCESSOR_LOGGER:
            if record.msg == _QUEUE_FULL and record.args == (self._processor_item,):
                self._count(1)
                return False
            return True
        if not getattr(self._exporting, "active", False):
            return True  # not ours: another exporter's thread, or outside export()
        if self._reason is None:
            # The first record names the cause; an exception among its arguments says it best.
            cause = next((a for a in record.args or () if isinstance(a, BaseException)), None)
            self._reason = " ".join(str(cause or record.getMessage()).split())[:300]
        return False

    def _count(self, n: int) -> None:
        with self._lock:
            self._dropped += n
            self.dropped_total += n

    def export(self, send: Callable[[], bool], items: int) -> bool:
        """Run `send` (True when the batch was accepted) unless the endpoint is down and not due for a try."""
        now = self._clock()
        if self.down and now < self._next_try:
            self._count(items)
            return False
        self._reason = None
        self._exporting.active = True
        try:
            ok = send()
        except Exception as exc:  # the processor would log it with a traceback, every time
            ok, self._reason = False, self._reason or f"{type(exc).__name__}: {exc}"
        finally:
            self._exporting.active = False
        if ok:
            if self.down:
                self._back(now)
            return True
        self._count(items)
        self._next_try = self._clock() + self._probe_interval_s
        if self.down:
            log.debug("telemetry: %s export to %s still failing: %s", self.signal, self.endpoint, self._reason)
        else:
            self._down_since = now
            log.warning(
                "telemetry: cannot export %s to %s (%s); dropping %s until it answers, trying again every %.0fs",
                self.signal, self.endpoint, self._reason or "export failed", _ITEMS[self.signal],
                self._probe_interval_s,
                extra={"signal": self.signal, "endpoint": self.endpoint},
            )
        return False

    def _back(self, now: float) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        log.info(
            "telemetry: exporting %s to %s again; dropped %d %s in the %.0fs it was unreachable",
            self.signal, self.endpoint, dropped, _ITEMS[self.signal], now - (self._down_since or now),
            extra={"signal": self.signal, "endpoint": self.endpoint, "dropped": dropped},
        )
        self._down_since = None


def _sdk_classes() -> dict[str, Any]:
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    return {
        "traces": (SpanExporter, SpanExportResult), "metrics": (MetricExporter, MetricExportResult),
        "logs": (LogRecordExporter, LogRecordExportResult),
    }


def guarded(signal: str, inner: Any, guard: ExportGuard) -> Any:
    """`inner` (an SDK exporter of `signal`) behind `guard`, as an exporter of the same SDK interface."""
    base, result = _sdk_classes()[signal]

    class Guarded(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            if signal == "metrics":
                # The metric reader asks its exporter for these; they are the wrapped one's.
                super().__init__(inner._preferred_temporality, inner._preferred_aggregation)

        def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
            ok = guard.export(lambda: inner.export(batch, *args, **kwargs) == result.SUCCESS, _count(signal, batch))
            return result.SUCCESS if ok else result.FAILURE

        def force_flush(self, *args: Any, **kwargs: Any) -> Any:
            return inner.force_flush(*args, **kwargs)

        def shutdown(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return inner.shutdown(*args, **kwargs)
            finally:
                guard.detach()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{type(inner).__name__}"
    return Guarded()


def _count(signal: str, batch: Any) -> int:
    if signal != "metrics":
        return len(batch)
    return sum(
        len(m.data.data_points)
        for rm in batch.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    )


def build() -> tuple[Any, Any, Any, list[ExportGuard]]:
    """Guarded OTLP span, metric and log exporters for OTEL_EXPORTER_OTLP_PROTOCOL (default http/protobuf).

    Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_* variables,
    which the exporters read themselves. The log exporter is None when unavailable.
    """
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if protocol not in ("grpc", "http/protobuf"):
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; using http/protobuf", protocol)
        protocol = "http/protobuf"
    package = "opentelemetry.exporter.otlp.proto." + ("grpc" if protocol == "grpc" else "http")
    # The modules whose loggers the exporters (and their shared HTTP or gRPC client) write to.
    client_loggers = [f"{package}.exporter"] if protocol == "grpc" else ["opentelemetry.exporter.otlp.common.http"]
    modules = {"traces": "trace_exporter", "metrics": "metric_exporter", "logs": "_log_exporter"}
    classes = {"traces": "OTLPSpanExporter", "metrics": "OTLPMetricExporter", "logs": "OTLPLogExporter"}
    exporters: dict[str, Any] = {}
    guards = []
    for signal, module_name in modules.items():
        try:
            module = importlib.import_module(f"{package}.{module_name}")
            inner = getattr(module, classes[signal])()
        except (ImportError, AttributeError):
            if signal != "logs":
                raise
            exporters[signal] = None
            continue
        guard = ExportGuard(signal, str(getattr(inner, "_endpoint", "") or package), [module.__name__, *client_loggers])
        guard.attach()
        guards.append(guard)
        exporters[signal] = guarded(signal, inner, guard)
    return exporters["traces"], exporters["metrics"], exporters["logs"], guards
