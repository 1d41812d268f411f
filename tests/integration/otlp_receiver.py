"""A real OTLP/HTTP receiver for tests: POST /v1/traces, /v1/metrics, /v1/logs (protobuf).

Decodes with opentelemetry-proto and keeps flat, easy-to-assert records: spans with
their resource attributes, metric names with their data points' attributes, log
records with trace and span ids.
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

KIND = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metrics: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(
        default_factory=list
    )  # (name, point attrs, resource)
    logs: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0


class OTLPReceiver:
    """Listens on 127.0.0.1:<port> (default: a free one); `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should be."""

    def __init__(self, port: int = 0) -> None:
        self.received = Received()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                response = receiver._handle(self.path, body)
                if response is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = response.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "OTLPReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, path: str, body: bytes) -> Any:
        if path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            spans = []
            for rs in req.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans.append(Span(
                            name=s.name, kind=KIND[s.kind], trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(), attributes=_attrs(s.attributes), resource=resource,
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            events=[(e.name, _attrs(e.attributes)) for e in s.events], status_code=s.status.code,
                        ))
            with self._lock:
                self.received.spans.extend(spans)
                self.received.requests += 1
            return ExportTraceServiceResponse()
        if path == "/v1/metrics":
            req = ExportMetricsServiceRequest.FromString(body)
            points = []
            for rm in req.resource_metrics:
                resource = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        data = getattr(m, m.WhichOneof("data"))
                        for dp in data.data_points:
                            points.append((m.name, _attrs(dp.attributes), resource))
            with self._lock:
                self.received.metrics.extend(points)
                self.received.requests += 1
            return ExportMetricsServiceResponse()
        if path == "/v1/logs":
            req = ExportLogsServiceRequest.FromString(body)
            logs = []
            for rl in req.resource_logs:
                resource = _attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        logs.append({
                            "body": _value(r.body), "trace_id": r.trace_id.hex(), "span_id": r.span_id.hex(),
                            "attributes": _attrs(r.attributes), "resource": resource,
                        })
            with self._lock:
                self.received.logs.extend(logs)
                self.received.requests += 1
            return ExportLogsServiceResponse()
        return None

    def spans(self, name: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self.received.spans if name is None or s.name == name]

    def metric_names(self) -> set[str]:
        with self._lock:
            return {m[0] for m in self.received.metrics}
