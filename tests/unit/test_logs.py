"""workers/observability/logs.py: JSON log lines carry trace and span ids, and nothing of OTel's internals."""

from __future__ import annotations

import json
import logging

from workers.observability.logs import JsonFormatter

# -- traceparent ---------------------------------------------------------------------


def test_json_lines_carry_trace_and_span_ids_and_no_otel_internals():
    fmt = JsonFormatter({"role": "worker", "slot": 1})
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    record.otelTraceID, record.otelSpanID, record.otelTraceSampled, record.otelServiceName = (
        "ab" * 16,
        "cd" * 8,
        True,
        "jetsink",
    )
    line = json.loads(fmt.format(record))
    assert (line["trace_id"], line["span_id"], line["slot"]) == ("ab" * 16, "cd" * 8, 1)
    assert not [k for k in line if k.startswith("otel")]
    record.otelTraceID, record.otelSpanID = "0", "0"
    assert "trace_id" not in json.loads(fmt.format(record))
