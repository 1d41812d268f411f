"""JSON-lines logging on stdout, one line per record, tagged with the process's role."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with extra= and is emitted.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
# Set on every record by opentelemetry-instrumentation-logging when observability is on.
_OTEL = {"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"}


def _add_trace_ids(out: dict[str, Any], record: logging.LogRecord) -> None:
    """trace_id / span_id of the span current when the record was made (none outside spans)."""
    trace_id = getattr(record, "otelTraceID", "0")
    if trace_id != "0":
        out["trace_id"] = trace_id
        out["span_id"] = record.otelSpanID


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; `static` fields (role, slot) go on every line."""

    def __init__(self, static: dict[str, Any]) -> None:
        super().__init__()
        self._static = static

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in _OTEL:
                out[key] = value
        _add_trace_ids(out, record)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str, **static: Any) -> None:
    """Route the root logger to stdout as JSON lines (called once per process)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py logs every reconnect attempt at error level through its own callbacks,
    # which we already turn into one line each.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    # clickhouse-driver logs a traceback per failed connection attempt; our own error
    # line names the server once.
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
