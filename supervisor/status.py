"""What the pool is doing, for people and for Prometheus: /healthz, /metrics, /status and `status`.

The arbiter's loop owns every piece of worker state. Once per iteration it builds a
fresh snapshot (``PoolView.snapshot``) and publishes it by rebinding one attribute;
the HTTP server's threads only ever call the ``snapshot`` callable and read the dict
they get. A published snapshot is never mutated, so no lock is needed:

    view = PoolView()                                   # once, at start
    server = StatusServer(config.admin.listen, lambda: self._snapshot)
    server.start()                                      # OSError if the address is taken
    ...
    self._snapshot = view.snapshot(self._workers.values(), draining=...)   # every loop
    ...
    notifier.status(summary(self._snapshot))           # systemd's STATUS= line
    server.stop()

Snapshot schema (plain JSON-friendly data):

    {
      "started_at": float,        # wall clock (epoch s) when the supervisor started
      "taken_at": float,          # wall clock of this snapshot
      "draining": bool,           # TERM received, workers are draining
      "workers": [
        {
          "slot": int,
          "pid": int | None,      # None while the slot waits for a restart
          "ready": bool,          # the worker reported ready (connected, mappers built)
          "restarts": int,
          "partitions": ["events/0", ...],     # owned (consumed) by the slot, sorted
          "rows_per_s": float,    # rows inserted per second over the last window (~5 s)
          "last_batch_at": float, # wall clock of the slot's last committed batch; 0 = none yet
          "heartbeat_age_s": float | None,     # seconds since the worker's loop last beat
          "stats": {              # the worker's last report, per partition it runs
            "events/0": {"consumed": int, "inserted": int, "dead_lettered": int,
                         "batches": int, "insert_retries": int,
                         "last_batch_at": float, "pending": int, "skipped_duplicates": int,
                         "in_doubt_acked": int, "in_doubt_landed": int,   # workers/partition.py
                         "in_doubt_not_landed": int, "in_doubt_resent": int, ...},  # PartitionStats
          },
          "telemetry_dropped": {"traces": int, "metrics": int, "logs": int},  # OTLP endpoint down
        },
      ],
      "instance_id": str,         # this supervisor's (config instance_id)
      "instances": [              # every live instance sharing the partitions, this one first
        {"instance_id": str, "self": bool, "holds": ["events/0", ...], "seen_s_ago": float | None,
         "admin": "host:port" | None, "workers": int, "ready": int, "partitions": [...],
         "rows_per_s": float, "lag": int, "draining": bool, "host": str, "pid": int, "started_at": float},
      ],
      "schemas": {"events": {...}},   # per pipeline, its table's version (supervisor/schemas.py)
    }

`pool_metrics` (prometheus_client metric families, rendered by `render_prometheus`) and
`render_status_table` are pure functions of a snapshot.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from supervisor.config import Config, ConfigError, load_config
from workers import exitcodes

log = logging.getLogger("jetsink.supervisor")

__all__ = ["PoolView", "StatusServer", "health", "parse_listen", "pool_metrics", "render_prometheus",
           "render_status_table", "summary"]

STALE_AFTER_S = 10.0  # workers beat every second; this much silence makes /healthz fail
RATE_WINDOW_S = 5.0
ADDRESS_FILE = "admin.address"  # in state_dir, while the admin endpoint listens


# --------------------------------------------------------------------------- snapshots


class PoolView:
    """Turns the arbiter's worker handles into snapshots; keeps the rows/s windows between calls.

    Only the arbiter's loop thread calls it.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._window_s = window_s
        self._clock = clock
        self._wall = wall
        self._started_at = wall()
        # slot -> (pid, monotonic time, rows inserted then, rate over the last window)
        self._samples: dict[int, tuple[int | None, float, int, float]] = {}

    def snapshot(self, workers: Iterable[Any], draining: bool) -> dict:
        """A new snapshot of `workers` (objects shaped like worker_handle.WorkerHandle).

        Reads, per worker: slot, process (.pid) or None, ready, restarts, owned: the
        partitions it consumes (assignment.Partition, ordered by pipeline and index),
        stats (the worker's last {"op": "stats", "partitions": {...}} message) and
        heartbeat (.value, time.monotonic() of the last beat).
        """
        now = self._clock()
        entries = [self._worker(w, now) for w in workers]
        return {"started_at": self._started_at, "taken_at": self._wall(), "draining": bool(draining),
                "workers": entries}

    def _worker(self, w: Any, now: float) -> dict:
        pid = w.process.pid if w.process is not None else None
        report = w.stats or {}
        per_partition = report.get("partitions", report) or {}
        stats = {name: dict(values) for name, values in per_partition.items() if isinstance(values, Mapping)}
        inserted = sum(int(s.get("inserted", 0)) for s in stats.values())
        heartbeat = getattr(w, "heartbeat", None)
        return {
            "slot": w.slot,
            "pid": pid,
            "ready": bool(w.ready) and pid is not None,
            "restarts": int(w.restarts),
            "partitions": [f"{p.pipeline}/{p.index}" for p in sorted(w.owned)],
            "rows_per_s": self._rate(w.slot, pid, inserted, now),
            "last_batch_at": max((float(s.get("last_batch_at") or 0.0) for s in stats.values()), default=0.0),
            "heartbeat_age_s": max(0.0, now - heartbeat.value) if pid is not None and heartbeat is not None else None,
            "stats": stats,
            "telemetry_dropped": {k: int(v) for k, v in (report.get("telemetry_dropped") or {}).items()},
        }

    def _rate(self, slot: int, pid: int | None, inserted: int, now: float) -> float:
        sample = self._samples.get(slot)
        if sample is None or sample[0] != pid or inserted < sample[2]:
            # A new process (or partitions released) restarts the counters: new window.
            self._samples[slot] = (pid, now, inserted, 0.0)
            return 0.0
        _, since, rows_then, rate = sample
        if now - since >= self._window_s:
            rate = (inserted - rows_then) / (now - since)
            self._samples[slot] = (pid, now, inserted, rate)
        return round(rate, 1)


def member_info(snapshot: Mapping, admin: str | None) -> dict:
    """What this instance publishes in its members key for the others' `status` (supervisor/members.py)."""
    workers = snapshot.get("workers") or []
    return {
        "admin": admin,
        "workers": len(workers),
        "ready": sum(1 for w in workers if w.get("ready")),
        "partitions": sorted(p for w in workers for p in w.get("partitions") or ()),
        "rows_per_s": round(sum(float(w.get("rows_per_s", 0.0)) for w in workers), 1),
        "lag": sum(int(s.get("pending", 0)) for w in workers for s in (w.get("stats") or {}).values()),
        "draining": bool(snapshot.get("draining")),
    }


def health(snapshot: Mapping | None, now: float | None = None, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Why the pool is not healthy; empty when every worker is up, ready and beating."""
    if not snapshot:
        return ["supervisor is starting"]
    now = time.time() if now is None else now
    problems = []
    if snapshot.get("draining"):
        problems.append("supervisor is draining (shutting down)")
    if now - snapshot.get("taken_at", now) > stale_after_s:
        problems.append(f"supervisor loop made no progress for {now - snapshot['taken_at']:.0f}s")
    workers = snapshot.get("workers") or []
    if not workers:
        problems.append("no workers")
    for w in workers:
        slot = w.get("slot")
        if w.get("pid") is None:
            problems.append(f"worker {slot} is not running (restarts: {w.get('restarts', 0)})")
        elif not w.get("ready"):
            problems.append(f"worker {slot} (pid {w['pid']}) is not ready")
        elif (w.get("heartbeat_age_s") or 0.0) > stale_after_s:
            problems.append(f"worker {slot} (pid {w['pid']}) has not beaten for {w['heartbeat_age_s']:.0f}s")
    return problems


# --------------------------------------------------------------------------- Prometheus


METRICS = (
    # name, type, help, label names
    ("jetsink_supervisor_start_time_seconds", "gauge", "Start time of the supervisor (unix seconds).", ()),
    ("jetsink_instance_info", "gauge", "1, labelled with this supervisor's instance_id.", ("instance_id",)),
    ("jetsink_instances_live", "gauge", "Live instances sharing the partitions (the members bucket).", ()),
    ("jetsink_draining", "gauge", "1 while the supervisor drains its workers for shutdown.", ()),
    ("jetsink_worker_up", "gauge", "1 when the worker slot's process runs and reported ready.", ("slot",)),
    ("jetsink_worker_pid", "gauge", "Process id of the worker slot.", ("slot",)),
    ("jetsink_worker_restarts_total", "counter", "Times the worker slot's process was restarted.", ("slot",)),
    ("jetsink_worker_partitions", "gauge", "Partitions assigned to the worker slot.", ("slot",)),
    ("jetsink_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's event loop last beat.", ("slot",)),
    ("jetsink_rows_per_second", "gauge", "Rows the worker slot inserted per second over the last window.", ("slot",)),
    ("jetsink_messages_consumed_total", "counter",
     "Messages pulled from the partition's consumer by the current worker process.", ("slot", "pipeline", "partition")),
    ("jetsink_rows_inserted_total", "counter", "Rows inserted into ClickHouse by the current worker process.",
     ("slot", "pipeline", "partition")),
    ("jetsink_dead_letters_total", "counter", "Messages sent to the dead-letter stream by the current worker process.",
     ("slot", "pipeline", "partition")),
    ("jetsink_batches_total", "counter", "Batches committed by the current worker process.",
     ("slot", "pipeline", "partition")),
    ("jetsink_insert_retries_total", "counter", "Retried inserts or DLQ publishes.", ("slot", "pipeline", "partition")),
    ("jetsink_skipped_duplicates_total", "counter",
     "Deliveries at or below the stored sequence, acked without storing.", ("slot", "pipeline", "partition")),
    ("jetsink_in_doubt_batches_total", "counter",
     "Batches a dead previous owner left in flight, settled by the current worker process: acked (from the "
     "consumer's ack floor), landed or not_landed (from ClickHouse's query log), resent (nobody could tell).",
     ("slot", "pipeline", "partition", "settled")),
    ("jetsink_last_batch_timestamp_seconds", "gauge", "When the partition's last batch was committed (unix seconds).",
     ("slot", "pipeline", "partition")),
    ("jetsink_consumer_pending", "gauge", "Messages left in the partition's consumer (lag), as of the last delivery.",
     ("pipeline", "partition")),
    ("jetsink_schema_changes_total", "counter",
     "Changes of the pipeline's table (columns added, dropped or retyped) the workers found.", ("pipeline", "table")),
    ("jetsink_schema_read_timestamp_seconds", "gauge",
     "When a worker last read the pipeline's table (unix seconds).", ("pipeline", "table")),
)

_COUNTERS = {
    "jetsink_messages_consumed_total": "consumed",
    "jetsink_rows_inserted_total": "inserted",
    "jetsink_dead_letters_total": "dead_lettered",
    "jetsink_batches_total": "batches",
    "jetsink_insert_retries_total": "insert_retries",
    "jetsink_skipped_duplicates_total": "skipped_duplicates",
}

_IN_DOUBT = {"acked": "in_doubt_acked", "landed": "in_doubt_landed", "not_landed": "in_doubt_not_landed",
             "resent": "in_doubt_resent"}

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def pool_metrics(snapshot: Mapping | None) -> list[Metric]:
    """The snapshot as Prometheus metric families (every family, with or without samples)."""
    snapshot = snapshot or {}
    families: dict[str, Metric] = {
        name: (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help_text, labels=labels)
        for name, kind, help_text, labels in METRICS
    }

    def add(name: str, labels: tuple, value: float) -> None:
        families[name].add_metric([str(v) for v in labels], float(value))

    if snapshot:
        add("jetsink_supervisor_start_time_seconds", (), snapshot.get("started_at", 0.0))
        if snapshot.get("instance_id"):
            add("jetsink_instance_info", (snapshot["instance_id"],), 1)
            add("jetsink_instances_live", (), len(snapshot.get("instances") or ()))
        add("jetsink_draining", (), bool(snapshot.get("draining")))
    pending_seen: set[tuple[str, str]] = set()
    for w in snapshot.get("workers") or []:
        slot = (w["slot"],)
        add("jetsink_worker_up", slot, bool(w.get("ready")) and w.get("pid") is not None)
        if w.get("pid") is not None:
            add("jetsink_worker_pid", slot, w["pid"])
        add("jetsink_worker_restarts_total", slot, w.get("restarts", 0))
        add("jetsink_worker_partitions", slot, len(w.get("partitions") or ()))
        if w.get("heartbeat_age_s") is not None:
            add("jetsink_worker_heartbeat_age_seconds", slot, w["heartbeat_age_s"])
        add("jetsink_rows_per_second", slot, w.get("rows_per_s", 0.0))
        for name, stats in sorted((w.get("stats") or {}).items()):
            pipeline, _, index = name.rpartition("/")
            labels = (w["slot"], pipeline, index)
            for metric, key in _COUNTERS.items():
                add(metric, labels, stats.get(key, 0))
            for settled, key in _IN_DOUBT.items():
                add("jetsink_in_doubt_batches_total", (*labels, settled), stats.get(key, 0))
            if stats.get("last_batch_at"):
                add("jetsink_last_batch_timestamp_seconds", labels, stats["last_batch_at"])
            # During a move two workers may report a partition; the first report wins.
            if (pipeline, index) not in pending_seen:
                pending_seen.add((pipeline, index))
                add("jetsink_consumer_pending", (pipeline, index), stats.get("pending", 0))
    for pipeline, t in sorted((snapshot.get("schemas") or {}).items()):
        labels = (pipeline, t.get("table", ""))
        add("jetsink_schema_changes_total", labels, t.get("changes", 0))
        add("jetsink_schema_read_timestamp_seconds", labels, t.get("read_at") or 0.0)
    return list(families.values())


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Mapping | None) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return pool_metrics(self._snapshot)


def render_prometheus(snapshot: Mapping | None) -> str:
    """The snapshot in the Prometheus text exposition format 0.0.4 (prometheus_client writes it)."""
    registry = CollectorRegistry(auto_describe=False)  # one per scrape: no state shared between threads
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry).decode()


# --------------------------------------------------------------------------- the status table


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _partition_list(names: Iterable[str]) -> str:
    """events/0, events/3, orders/1 -> "events:0,3 orders:1"."""
    by_pipeline: dict[str, list[str]] = {}
    for name in names:
        pipeline, _, index = name.rpartition("/")
        by_pipeline.setdefault(pipeline, []).append(index)
    # (length, text) orders decimal indices numerically.
    return " ".join(f"{p}:{','.join(sorted(idx, key=lambda i: (len(i), i)))}" for p, idx in by_pipeline.items()) or "-"


def summary(snapshot: Mapping | None) -> str:
    """One line, e.g. for systemd's STATUS=: "2/2 workers ready, 8 partitions, 15230 rows/s"."""
    workers = (snapshot or {}).get("workers") or []
    ready = sum(1 for w in workers if w.get("ready"))
    partitions = sum(len(w.get("partitions") or ()) for w in workers)
    rate = sum(float(w.get("rows_per_s", 0.0)) for w in workers)
    draining = ", draining" if (snapshot or {}).get("draining") else ""
    return f"{ready}/{len(workers)} workers ready, {partitions} partitions, {rate:.0f} rows/s{draining}"


def render_status_table(snapshot: Mapping | None, now: float | None = None) -> str:
    """A table per worker slot: pid, partitions, rows/s, lag, last batch age, restarts."""
    if not snapshot:
        return "supervisor is starting (no status yet)\n"
    now = snapshot.get("now", time.time()) if now is None else now
    workers = snapshot.get("workers") or []
    total_rate = sum(float(w.get("rows_per_s", 0.0)) for w in workers)
    partitions = sum(len(w.get("partitions") or ()) for w in workers)
    state = "draining" if snapshot.get("draining") else "running"
    head = (f"jetsink supervisor {state}, up {_age(max(0.0, now - snapshot.get('started_at', now)))}: "
            f"{len(workers)} worker(s), {partitions} partition(s), {total_rate:.0f} rows/s")
    header = ("SLOT", "PID", "READY", "PARTITIONS", "ROWS/S", "LAG", "LAST BATCH", "RESTARTS")
    rows = [header]
    for w in workers:
        stats = w.get("stats") or {}
        lag = sum(int(s.get("pending", 0)) for s in stats.values())
        last = float(w.get("last_batch_at") or 0.0)
        rows.append((
            str(w.get("slot")),
            str(w["pid"]) if w.get("pid") is not None else "-",
            "yes" if w.get("ready") else "no",
            _partition_list(w.get("partitions") or ()),
            f"{float(w.get('rows_per_s', 0.0)):.1f}",
            str(lag),
            f"{_age(max(0.0, now - last))} ago" if last else "never",
            str(w.get("restarts", 0)),
        ))
    lines = [head, "", *_aligned(rows)]
    members = snapshot.get("instances") or []
    if members:
        lines += ["", f"instances ({len(members)} live, this one is {snapshot.get('instance_id')}):", ""]
        table = [("INSTANCE", "ADMIN", "WORKERS", "PARTITIONS", "ROWS/S", "LAG")]
        for m in members:
            table.append((
                m["instance_id"] + (" *" if m.get("self") else ""),
                str(m.get("admin") or "-"),
                f"{m.get('ready', 0)}/{m.get('workers', 0)}",
                _partition_list(m.get("partitions") or m.get("holds") or ()),
                f"{float(m.get('rows_per_s', 0.0)):.1f}",
                str(m.get("lag", 0)),
            ))
        lines += _aligned(table)
    lines += _schema_table(snapshot.get("schemas") or {}, now)
    dropped: dict[str, int] = {}
    for w in workers:
        for signal, n in (w.get("telemetry_dropped") or {}).items():
            dropped[signal] = dropped.get(signal, 0) + int(n)
    if any(dropped.values()):
        counts = ", ".join(f"{signal} {n}" for signal, n in dropped.items())
        lines += ["", f"telemetry dropped while its OTLP endpoint was unreachable: {counts}"]
    problems = health(snapshot, now=now)
    if problems and not snapshot.get("draining"):
        lines += ["", "unhealthy:"] + [f"  {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _schema_table(schemas: Mapping, now: float) -> list[str]:
    """Per pipeline: its table, schema version (hash), when it was read, changes; workers still on another version."""
    if not schemas:
        return []
    header = ("PIPELINE", "TABLE", "SCHEMA", "SINCE", "READ", "CHANGES")
    rows = [header]
    notes = []
    for pipeline, t in sorted(schemas.items()):
        since, read_at = float(t.get("since") or 0.0), float(t.get("read_at") or 0.0)
        rows.append((
            pipeline, str(t.get("table", "")), str(t.get("digest") or "-"),
            f"{_age(max(0.0, now - since))} ago" if since else "-",
            f"{_age(max(0.0, now - read_at))} ago" if read_at else "never",
            str(t.get("changes", 0)),
        ))
        behind = sorted(s for s, d in (t.get("slots") or {}).items() if d != t.get("digest"))
        if behind:
            notes.append(f"  {pipeline}: worker(s) {', '.join(behind)} still on an older schema")
        if t.get("problem"):
            notes.append(f"  {pipeline}: {t['problem']}")
    return ["", *_aligned(rows), *notes]


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of cells (the first one the header) as lines, each column padded to its widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip() for r in rows]


# --------------------------------------------------------------------------- the HTTP server


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9470" -> ("127.0.0.1", 9470); "[::1]:9470" -> ("::1", 9470)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int, snapshot: Callable[[], Mapping | None],
                 stale_after_s: float) -> None:
        self.address_family = family
        self.snapshot = snapshot
        self.stale_after_s = stale_after_s
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "jetsink"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            snapshot = self.server.snapshot()
        except Exception as exc:  # a bug in the publisher must not kill the endpoint
            log.exception("status snapshot failed")
            self._send(500, "text/plain; charset=utf-8", f"snapshot failed: {type(exc).__name__}\n")
            return
        if path == "/healthz":
            problems = health(snapshot, stale_after_s=self.server.stale_after_s)
            if problems:
                self._send(503, "application/json", json.dumps({"ok": False, "problems": problems}) + "\n")
            else:
                self._send(200, "text/plain; charset=utf-8", "ok\n")
        elif path == "/metrics":
            self._send(200, PROMETHEUS_CONTENT_TYPE, render_prometheus(snapshot))
        elif path == "/status":
            problems = health(snapshot, stale_after_s=self.server.stale_after_s)
            body = {**(snapshot or {}), "now": time.time(), "healthy": not problems, "problems": problems}
            self._send(200, "application/json", json.dumps(body) + "\n")
        else:
            self._send(404, "text/plain; charset=utf-8", "not found; try /healthz, /metrics or /status\n")

    def _send(self, code: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("admin %s %s", self.address_string(), format % args)


class StatusServer:
    """/healthz, /metrics and /status on `listen`, served from a daemon thread."""

    def __init__(self, listen: str, snapshot: Callable[[], Mapping | None], stale_after_s: float = STALE_AFTER_S,
                 address_file: Path | None = None) -> None:
        self._listen = listen
        self._snapshot = snapshot
        self._stale_after_s = stale_after_s
        self._address_file = address_file
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and start serving; raises OSError naming the address if it cannot bind."""
        host, port = parse_listen(self._listen)
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._server = _Server((host, port), family, self._snapshot, self._stale_after_s)
        except OSError as exc:
            raise OSError(exc.errno, f"admin endpoint cannot listen on {self._listen}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="jetsink-admin", daemon=True)
        self._thread.start()
        if self._address_file is not None:
            # Where `status` finds a port picked at start (listen port 0); renamed into place whole.
            self._address_file.parent.mkdir(parents=True, exist_ok=True)
            partial = self._address_file.with_name(self._address_file.name + ".new")
            partial.write_text(self.address + "\n")
            partial.replace(self._address_file)
        log.info("admin endpoint on http://%s/ (/healthz, /metrics, /status)", self.address)

    @property
    def address(self) -> str:
        """host:port actually listened on (the real port when `listen` asked for port 0)."""
        if self._server is None:
            return self._listen
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._address_file is not None:
            self._address_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------- `python -m supervisor status`


def add_parser(sub: Any) -> None:
    """Register `status` on the CLI's subparsers."""
    p = sub.add_parser("status", help="per worker: pid, partitions, rows/s, lag, last batch, restarts")
    p.add_argument("--config", default="config.yaml",
                   help="config.yaml whose admin.listen to ask (default: ./config.yaml)")
    p.add_argument("--listen", help="ask this host:port instead of the config's admin.listen")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(handler=run)


def address_file(config: Config) -> Path:
    """Where a running supervisor of `config` writes the admin address it listens on."""
    return Path(config.state_dir) / ADDRESS_FILE


def admin_address(config: Config) -> str | None:
    """host:port of the admin endpoint of `config`'s supervisor: admin.listen, or with port 0 the
    address the running supervisor wrote to its state_dir (None when it has not, or is not running)."""
    if parse_listen(config.admin.listen)[1] != 0:
        return config.admin.listen
    try:
        return address_file(config).read_text().strip() or None
    except FileNotFoundError:
        return None


def fetch_status(address: str, timeout: float = 5.0) -> dict:
    """GET /status from the admin endpoint at host:port; raises OSError or ValueError."""
    host, port = parse_listen(address)
    # A wildcard bind answers on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{host}]:{port}/status" if ":" in host else f"http://{host}:{port}/status"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http only, built above
        return json.load(resp)


def run(args: argparse.Namespace) -> int:
    """`python -m supervisor status`: fetch /status from the running supervisor and print it."""
    listen, where = args.listen, "--listen"
    if listen is None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"jetsink: invalid config {args.config}:\n{exc}", file=sys.stderr)
            return exitcodes.CONFIG
        if not config.admin.enabled:
            print(f"jetsink: the admin endpoint is disabled in {args.config} (admin.enabled: false)", file=sys.stderr)
            return exitcodes.CONFIG
        listen, where = admin_address(config), f"admin.listen in {args.config}"
        if listen is None:
            print(f"jetsink: {where} is {config.admin.listen!r} (a free port chosen at start) and "
                  f"{address_file(config)} does not exist; is the supervisor running?", file=sys.stderr)
            return exitcodes.BOOT
    try:
        port = parse_listen(listen)[1]
    except ValueError as exc:
        print(f"jetsink: {where}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if port == 0:
        print(f"jetsink: {where} is {listen!r}: give the port the supervisor listens on", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        body = fetch_status(listen, timeout=args.timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"jetsink: no status from {listen} ({where}): {reason}; is the supervisor running?", file=sys.stderr)
        return exitcodes.BOOT
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        sys.stdout.write(render_status_table(body))
    return exitcodes.OK
