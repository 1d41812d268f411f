"""The OpenTelemetry metric instruments of one process, and what each batch, insert and retry records.

`OtelTelemetry` (telemetry.py) builds one `Instruments` on its meter and calls it from its
hooks with the batch's labels; the observable ones (consumer pending, telemetry dropped)
are read by the SDK's metric reader on its own thread. docs/observability.md lists them.
"""

from __future__ import annotations

import time
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping

from workers import message
from workers.observability.attributes import A_PARTITION, A_PIPELINE, A_SLOT

_data = itemgetter(message.DATA)


class Instruments:
    """The counters, histograms and observable gauges of one process (its `slot`, None for the supervisor)."""

    def __init__(self, meter: Any, slot: int | None, export_guards: Iterable[Any] = ()) -> None:
        self._slot = slot
        self._export_guards = tuple(export_guards)
        self._pending_sources: list[Callable[[], Iterable[tuple[str, int, int]]]] = []
        self._consumed = meter.create_counter(
            "jetsink.messages.consumed",
            "{message}",
            "Messages taken from JetStream and committed (inserted, dead-lettered and acked).",
        )
        self._rows = meter.create_counter("jetsink.rows.inserted", "{row}", "Rows ClickHouse accepted.")
        self._bytes = meter.create_counter(
            "jetsink.bytes.inserted", "By", "Payload bytes of the messages whose rows ClickHouse accepted."
        )
        self._batch_rows = meter.create_histogram("jetsink.batch.rows", "{row}", "Messages per committed batch.")
        self._insert_duration = meter.create_histogram(
            "jetsink.insert.duration", "s", "Duration of one ClickHouse INSERT (prepare + send)."
        )
        self._freshness = meter.create_histogram(
            "jetsink.freshness", "s", "From JetStream storing a message to its batch being acked."
        )
        self._dlq = meter.create_counter("jetsink.dlq.messages", "{message}", "Messages dead-lettered, by reason.")
        self._retries = meter.create_counter(
            "jetsink.retries", "{retry}", "Failed attempts at an insert or a DLQ publish that were retried."
        )
        self._restarts = meter.create_counter(
            "jetsink.worker.restarts", "{restart}", "Workers respawned by the supervisor after dying."
        )
        meter.create_observable_gauge(
            "jetsink.consumer.pending",
            [self._observe_pending],
            "{message}",
            "Messages left in a partition's consumer at its last delivery.",
        )
        meter.create_observable_counter(
            "jetsink.telemetry.dropped", [self._observe_dropped], "{item}",
            "Spans, metric points and log records dropped because their OTLP endpoint was unreachable.",
        )

    def batch_committed(self, labels: Mapping[str, Any], msgs: list[Any], prepared: Any, total_bytes: int) -> None:
        """A committed batch: its messages, rows, bytes (`total_bytes` less the dead letters'), dead letters and
        freshness."""
        dead_bytes = 0
        for dl in prepared.dead:
            dead_bytes += len(dl.data)
            self._dlq.add(1, {**labels, "jetsink.dlq.reason": dl.reason})
        self._consumed.add(len(msgs), labels)
        self._rows.add(prepared.rows, labels)
        self._bytes.add(total_bytes - dead_bytes, labels)
        self._batch_rows.record(len(msgs), labels)
        now_ns = time.time_ns()
        # The oldest and the newest message of the batch: the range of its freshness
        # without a histogram observation per message.
        for msg in (msgs[0], msgs[-1]) if len(msgs) > 1 else msgs:
            self._freshness.record(
                max(0, now_ns - message.parse_ack_subject(msg[message.REPLY]).timestamp_ns) / 1e9, labels
            )

    def insert_done(self, seconds: float, labels: Mapping[str, Any], outcome: str) -> None:
        """An INSERT's duration; `outcome` "ok" or the exception's type name (then its error.type)."""
        self._insert_duration.record(seconds, {**labels, "error.type": outcome} if outcome != "ok" else labels)

    def retried(self, labels: Mapping[str, Any], what: str, error_type: str) -> None:
        self._retries.add(1, {**labels, "jetsink.operation": what, "error.type": error_type})

    def worker_restarted(self, slot: int) -> None:
        self._restarts.add(1, {A_SLOT: slot})

    def observe_pending(self, source: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Read `source` ((pipeline, partition, pending) triples) at each collection of jetsink.consumer.pending."""
        self._pending_sources.append(source)

    def dropped(self) -> dict[str, int]:
        """Spans, metric points and log records dropped so far because their OTLP endpoint was down, by signal."""
        return {g.signal: g.dropped_total for g in self._export_guards}

    def _observe_pending(self, options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for source in self._pending_sources:
            for pipeline, partition, pending in source():
                yield Observation(pending, {A_PIPELINE: pipeline, A_PARTITION: partition, A_SLOT: self._slot})

    def _observe_dropped(self, options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for guard in self._export_guards:
            yield Observation(guard.dropped_total, {"jetsink.telemetry.signal": guard.signal})
