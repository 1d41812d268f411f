"""OpenTelemetry for one jetsink process: traces, metrics and trace-correlated logs over OTLP.

`setup()` is called once per process after it starts (each spawned worker builds its
own providers; nothing is inherited). It returns a `Telemetry`: the plain class, whose
methods do nothing, when `observability.enabled` is false, so an idle switch costs no
SDK objects, no exporter threads and one attribute check per batch on the hot path;
or `OtelTelemetry` with real providers when it is true.

The exporters are configured by the standard environment variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG]); see
docs/observability.md.

Telemetry owns no step of the data path: workers/partition/ and workers/worker.py call
prepare, the sink's insert and the ack themselves, and these hooks wrap the calls
(context managers around them, like dramatiq's emit_before/emit_after). A batch's span tree:

    batch (CONSUMER, links to producer spans)   around PartitionRunner._commit
      map                       around prepare(): one per batch, or one per message with per_message_spans
      clickhouse.prepare        the insert's settings: the trace context for the server (see insert())
      clickhouse.send (CLIENT)  around sink.send_insert: the driver's serialisation, the network and the server
      nats.ack                  around PartitionRunner._ack

The insert thread sees the batch span because the partition runs its thread calls in
a copy of its task's context (`carry_context`), so parents are explicit, not guessed.
Traceparents are written and read by OpenTelemetry's W3C TraceContext propagator.
The metric instruments the hooks record to are instruments.py's `Instruments`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from itertools import compress, repeat
from operator import contains, itemgetter
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from workers import message
from workers.observability import exporters
from workers.observability.attributes import A_PARTITION, A_PIPELINE, A_ROLE, A_SLOT
from workers.observability.instruments import Instruments

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACEPARENT_BYTES = TRACEPARENT.encode()  # header names are matched exactly, as nats-py does
_headers, _data = itemgetter(message.HEADERS), itemgetter(message.DATA)
SHUTDOWN_TIMEOUT_S = 3.0

# The labels of the batch a thread is working for (pipeline, partition, slot), set by
# batch() in the partition's task and carried into the insert thread with its context;
# None outside a batch (read through _batch_labels(), which gives {} then).
_BATCH_LABELS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "jetsink_batch_labels", default=None
)


def _batch_labels() -> Mapping[str, Any]:
    labels = _BATCH_LABELS.get()
    return {} if labels is None else labels


# The W3C TraceContext propagator: stateless, so one serves the whole process.
PROPAGATOR = TraceContextTextMapPropagator()


def traceparent_of(ctx: Any = None) -> str | None:
    """The traceparent of the span current in `ctx` (default: this context), or None when there is none."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, ctx)
    return carrier.get(TRACEPARENT)


def current_traceparent() -> str | None:
    """The traceparent of the span current in this context, if any (works with observability off)."""
    return traceparent_of()


def remote_span_context(headers: Mapping[str, Any]) -> Any:
    """The valid remote SpanContext of a carrier's "traceparent" (headers, a control message), or None."""
    ctx = trace.get_current_span(PROPAGATOR.extract(headers)).get_span_context()
    return ctx if ctx.is_valid else None


def _record_nothing(result: Any) -> None:
    pass


class Telemetry:
    """Observability switched off: every method is a cheap no-op.

    `OtelTelemetry` overrides them all; callers never check which one they hold, except
    the hot path, which reads `enabled` once per batch to skip even the no-op calls.
    """

    enabled = False
    per_message_spans = False  # the partition then prepares (and traces) one message at a time

    # -- process ---------------------------------------------------------------

    def shutdown(self) -> None:
        pass

    # -- spans -----------------------------------------------------------------

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, parent: Any = None) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def capture(self) -> Any:
        """The current context, to parent a later span on (e.g. the start span's)."""
        return None

    def inject(self, msg: dict) -> dict:
        """`msg` with a "traceparent" key for the current span (control messages)."""
        return msg

    def control_span(self, msg: Mapping[str, Any]) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def batch(self, target: Any, msgs: list[Any]) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def carry_context(self, run_in_thread: Callable[..., Any]) -> Callable[..., Any]:
        return run_in_thread

    def map(self, target: Any, msgs: list[Any]) -> ContextManager[Callable[[Any], None]]:
        """Around prepare() of a batch; the caller hands the result to the callable it yields."""
        return contextlib.nullcontext(_record_nothing)

    def map_message(self, msg: Any) -> ContextManager[Callable[[Any], None]]:
        """Around prepare() of one message (per_message_spans); as map()."""
        return contextlib.nullcontext(_record_nothing)

    def insert(
        self, client: Any, db: str, name: str, statement: str, rows: int, features: Any,
    ) -> ContextManager[Any]:
        """Around sink.send_insert; yields the settings to send with it (the trace context, or None)."""
        return contextlib.nullcontext()

    def ack(self, n: int) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def retry(self, what: str, exc: BaseException) -> None:
        pass

    def batch_committed(self, target: Any, msgs: list[Any], prepared: Any) -> None:
        pass

    # -- metrics ---------------------------------------------------------------

    def observe_pending(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        pass

    def worker_restarted(self, slot: int) -> None:
        pass

    def dropped(self) -> dict[str, int]:
        """Spans, metric points and log records dropped so far because their OTLP endpoint was down, by signal."""
        return {}


def setup(observability: Any, role: str, slot: int | None = None) -> Telemetry:
    """Build this process's providers when `observability.enabled`, else the no-op Telemetry."""
    if not observability.enabled:
        return Telemetry()
    return OtelTelemetry(observability, role, slot)


def resource_attributes(role: str, slot: int | None) -> dict[str, Any]:
    """Resource attributes of this process; OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES may add or override."""
    attrs: dict[str, Any] = {
        "service.instance.id": str(uuid.uuid4()),
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        A_ROLE: role,
    }
    if slot is not None:
        attrs[A_SLOT] = slot
    env_attrs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in env_attrs:
        attrs["service.name"] = "jetsink"
    return attrs


class OtelTelemetry(Telemetry):
    """Observability switched on: real providers, OTLP exporters, log correlation."""

    enabled = True

    def __init__(self, observability: Any, role: str, slot: int | None) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self._cfg = observability
        self.slot = slot
        self.resource = Resource.create(resource_attributes(role, slot))
        # OTEL_TRACES_SAMPLER set: the SDK reads it (and _ARG); otherwise our ratio.
        sampler = (
            None
            if os.environ.get("OTEL_TRACES_SAMPLER")
            else ParentBased(TraceIdRatioBased(observability.traces.sample_ratio))
        )
        span_exporter, metric_exporter, log_exporter, export_guards = exporters.build()
        # shutdown() is bounded; the SDK's own atexit shutdown would wait out a dead collector.
        self._tracer_provider = TracerProvider(resource=self.resource, sampler=sampler, shutdown_on_exit=False)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        self.tracer = self._tracer_provider.get_tracer("jetsink")
        reader = PeriodicExportingMetricReader(
            metric_exporter, export_interval_millis=observability.metrics.interval_s * 1000
        )
        self._meter_provider = MeterProvider(resource=self.resource, metric_readers=[reader], shutdown_on_exit=False)
        self._metrics = Instruments(self._meter_provider.get_meter("jetsink"), slot, export_guards)
        self._logger_provider = self._log_handler = None
        self._correlate_logs(log_exporter)
        self._max_links = observability.traces.max_links
        self.per_message_spans = observability.traces.per_message_spans

    def _correlate_logs(self, log_exporter: Any) -> None:
        # Log records get otelTraceID/otelSpanID (workers/observability/logs.py turns them into
        # trace_id/span_id); the records are also exported over OTLP when the SDK can.
        from opentelemetry.instrumentation.logging import LoggingInstrumentor

        instrumentor = LoggingInstrumentor()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(
                tracer_provider=self._tracer_provider, set_logging_format=False,
                inject_trace_context=True, enable_log_auto_instrumentation=False,
            )
        if log_exporter is None:
            return
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        self._logger_provider = LoggerProvider(resource=self.resource, shutdown_on_exit=False)
        self._logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        self._log_handler = LoggingHandler(logger_provider=self._logger_provider)
        # The exporters' own complaints, and ours about them, must not be exported (they would loop).
        self._log_handler.addFilter(lambda r: not r.name.startswith(("opentelemetry", exporters.EXPORT_LOGGER)))
        logging.getLogger().addHandler(self._log_handler)

    def shutdown(self) -> None:
        """Flush and stop the exporters, waiting at most SHUTDOWN_TIMEOUT_S.

        An unreachable collector makes the exporters retry for their whole timeout; an
        exit (a drain, a reload) must not wait for that, so what is not sent by then is lost.
        """
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)

        def stop() -> None:
            for provider in (self._tracer_provider, self._meter_provider, self._logger_provider):
                if provider is not None:
                    try:
                        provider.shutdown()
                    except Exception as exc:
                        log.warning("telemetry shutdown: %s", exc)

        stopper = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
        stopper.start()
        stopper.join(SHUTDOWN_TIMEOUT_S)
        if stopper.is_alive():
            log.warning("telemetry: the collector did not take the last data within %.0fs; dropped", SHUTDOWN_TIMEOUT_S)

    # -- spans -----------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None, parent: Any = None) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, context=parent, attributes=attributes) as span:
            yield span

    def capture(self) -> Any:
        from opentelemetry import context

        return context.get_current()

    def inject(self, msg: dict) -> dict:
        carrier = dict(msg)
        PROPAGATOR.inject(carrier)
        return carrier

    @contextlib.contextmanager
    def control_span(self, msg: Mapping[str, Any]) -> Iterator[Any]:
        """The worker's span for a control message: a child of the supervisor span that sent it."""
        # No traceparent (or a bad one): an empty context, so the span is a root of its own.
        parent = PROPAGATOR.extract(msg)
        attrs = {A_SLOT: self.slot, "jetsink.control.op": str(msg.get("op"))}
        if msg.get("partitions"):
            attrs["jetsink.partitions"] = [f"{p}/{i}" for p, i in msg["partitions"]]
        with self.tracer.start_as_current_span(f"worker.{msg.get('op')}", context=parent, attributes=attrs) as span:
            yield span

    def _links(self, msgs: list[Any]) -> list[Any]:
        links: list[Any] = []
        seen: set[tuple[int, int]] = set()
        if self._max_links <= 0:
            return links
        # Raw NATS headers (workers/nats/wire.py), picked in C, parsed only when they hold one;
        # only sampled batches get here, and they stop at max_links.
        raws = list(filter(None, map(_headers, msgs)))
        for raw in compress(raws, map(contains, raws, repeat(TRACEPARENT_BYTES))):
            sc = remote_span_context(message.parse_headers(raw))
            if sc is None or (sc.trace_id, sc.span_id) in seen:
                continue
            seen.add((sc.trace_id, sc.span_id))
            links.append(trace.Link(sc))
            if len(links) >= self._max_links:
                break
        return links

    @contextlib.contextmanager
    def batch(self, target: Any, msgs: list[Any]) -> Iterator[Any]:
        """The `batch` span (CONSUMER), current for the batch's commit, linked to its producers."""
        from opentelemetry import context

        pipeline = target.pipeline
        labels = {A_PIPELINE: pipeline.name, A_PARTITION: target.index, A_SLOT: target.worker}
        attrs = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.operation.name": "batch",
            "messaging.destination.name": pipeline.stream,
            "messaging.destination.subscription.name": target.consumer,
            "messaging.consumer.group.name": target.consumer,
            "messaging.batch.message_count": len(msgs),
            **labels,
        }
        token = _BATCH_LABELS.set(labels)
        try:
            # A batch is a root of its own trace: its producers are links, not parents.
            with self.tracer.start_as_current_span(
                "batch", context=context.Context(), kind=trace.SpanKind.CONSUMER, attributes=attrs,
            ) as span:
                if span.is_recording():  # only sampled batches look for their producers
                    for link in self._links(msgs):
                        span.add_link(link.context)
                yield span
        finally:
            _BATCH_LABELS.reset(token)

    def carry_context(self, run_in_thread: Callable[..., Any]) -> Callable[..., Any]:
        """Run thread calls in a copy of the calling task's context (the batch span and labels)."""

        def run(fn: Callable[..., Any], *args: Any) -> Any:
            return run_in_thread(contextvars.copy_context().run, fn, *args)

        return run

    @contextlib.contextmanager
    def map(self, target: Any, msgs: list[Any]) -> Iterator[Callable[[Any], None]]:
        """The `map` span of a batch's prepare()."""
        attrs = {"messaging.batch.message_count": len(msgs), "db.collection.name": target.pipeline.table}
        with self.tracer.start_as_current_span("map", attributes=attrs) as span:

            def mapped(prepared: Any) -> None:
                span.set_attribute("jetsink.rows", prepared.rows)
                span.set_attribute("jetsink.dead_lettered", len(prepared.dead))

            yield mapped

    @contextlib.contextmanager
    def map_message(self, msg: Any) -> Iterator[Callable[[Any], None]]:
        """The `map` span of one message's prepare() (per_message_spans)."""
        attrs = {"messaging.message.body.size": len(msg[message.DATA])}
        with self.tracer.start_as_current_span("map", attributes=attrs) as span:

            def mapped(prepared: Any) -> None:
                if prepared.dead:
                    span.set_attribute("error.type", prepared.dead[0].reason)

            yield mapped

    @contextlib.contextmanager
    def insert(
        self, client: Any, db: str, name: str, statement: str, rows: int, features: Any,
    ) -> Iterator[Any]:
        """`clickhouse.prepare` then `clickhouse.send` around the INSERT; times it; yields its settings.

        clickhouse-driver serialises the columns while it writes them to the socket
        (and only after the server has sent the table's sample block), so the two cannot
        be separated without re-implementing its protocol: `clickhouse.prepare` covers
        the settings (the trace context for the server), `clickhouse.send` the whole
        call it wraps (`client.execute`): serialisation, network and server.
        """
        from opentelemetry import context

        connection = getattr(client, "connection", None)
        attrs = {
            "db.system.name": "clickhouse", "db.namespace": db, "db.collection.name": name,
            "db.operation.name": "INSERT", "db.operation.batch.size": rows,
            "server.address": getattr(connection, "host", ""), "server.port": getattr(connection, "port", 0),
        }
        started = time.perf_counter()
        batch_context = context.get_current()  # both spans are children of the batch
        with self.tracer.start_as_current_span("clickhouse.prepare", attributes=attrs):
            send = self.tracer.start_span(
                "clickhouse.send", context=batch_context, kind=trace.SpanKind.CLIENT,
                attributes={**attrs, "db.query.text": statement},
            )
            settings = None
            if features is not None and features.opentelemetry_traceparent:
                settings = {"opentelemetry_traceparent": traceparent_of(trace.set_span_in_context(send))}
        labels = _batch_labels()
        outcome = "ok"
        try:
            with trace.use_span(send, end_on_exit=True):
                try:
                    yield settings
                except BaseException as exc:
                    outcome = type(exc).__name__
                    send.set_attribute("error.type", outcome)  # before use_span ends the span
                    raise
        finally:
            self._metrics.insert_done(time.perf_counter() - started, labels, outcome)

    @contextlib.contextmanager
    def ack(self, n: int) -> Iterator[None]:
        attrs = {
            "messaging.system": "nats", "messaging.operation.type": "settle", "messaging.operation.name": "ack",
            "messaging.batch.message_count": n,
        }
        with self.tracer.start_as_current_span("nats.ack", kind=trace.SpanKind.CLIENT, attributes=attrs):
            yield

    def retry(self, what: str, exc: BaseException) -> None:
        span = trace.get_current_span()
        span.record_exception(exc, attributes={"jetsink.operation": what})
        span.set_attribute("error.type", type(exc).__name__)
        self._metrics.retried(_batch_labels(), what, type(exc).__name__)

    def batch_committed(self, target: Any, msgs: list[Any], prepared: Any) -> None:
        labels = _BATCH_LABELS.get() or {
            A_PIPELINE: target.pipeline.name,
            A_PARTITION: target.index,
            A_SLOT: target.worker,
        }
        span = trace.get_current_span()
        for dl in prepared.dead:
            span.add_event("dead_letter", {
                "jetsink.dlq.reason": dl.reason, "jetsink.dlq.error": dl.error[:300],
                "messaging.nats.subject": dl.subject, "jetsink.stream_seq": dl.stream_seq,
            })
        total_bytes = sum(map(len, map(_data, msgs)))
        self._metrics.batch_committed(labels, msgs, prepared, total_bytes)
        span.set_attribute("jetsink.rows", prepared.rows)
        span.set_attribute("jetsink.bytes", total_bytes)
        span.set_attribute("jetsink.dead_lettered", len(prepared.dead))

    # -- metrics ---------------------------------------------------------------

    def observe_pending(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._metrics.observe_pending(source)

    def worker_restarted(self, slot: int) -> None:
        self._metrics.worker_restarted(slot)

    def dropped(self) -> dict[str, int]:
        return self._metrics.dropped()
