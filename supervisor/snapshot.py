"""The pool's state as one snapshot: what the arbiter's loop publishes for /status, /metrics and `status`.

The arbiter's loop owns every piece of worker state. Once per iteration it builds a
fresh snapshot (``PoolView.snapshot``) and publishes it by rebinding one attribute;
the admin endpoint's threads (supervisor/admin.py) only ever call the ``snapshot``
callable and read the dict they get. A published snapshot is never mutated, so no
lock is needed:

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
                         "in_doubt_acked": int, "in_doubt_landed": int,   # workers/partition/stats.py
                         "in_doubt_not_landed": int, "in_doubt_resent": int, ...,  # PartitionStats
                         "routes": {"clicks": [inserted, skipped, dead_lettered], ...}},  # routed pipelines
          },
          "telemetry_dropped": {"traces": int, "metrics": int, "logs": int},  # OTLP endpoint down
          "clickhouse": {         # the replicas it inserts into (workers/clickhouse/replicas.py); {} before a report
            "in_use": "host:port", "preferred": "host:port", "switches": int,
            "replicas": [{"address": "host:port", "state": "healthy" | "down" | "unknown", "error": str,
                          "down_s": float, "inserts": int}, ...],
          },
        },
      ],
      "instance_id": str,         # this supervisor's (config instance_id)
      "instances": [              # every live instance sharing the partitions, this one first
        {"instance_id": str, "self": bool, "holds": ["events/0", ...], "seen_s_ago": float | None,
         "admin": "host:port" | None, "workers": int, "ready": int, "partitions": [...],
         "rows_per_s": float, "lag": int, "draining": bool, "host": str, "pid": int, "started_at": float},
      ],
      "schemas": {"events": {...}},   # per pipeline (or "events/clicks": a route's table), supervisor/schemas.py
    }

`health` says why a snapshot is not healthy; `member_info` is what this instance publishes
of it to the others. supervisor/metrics.py and supervisor/status.py render it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["PoolView", "health", "member_info"]

STALE_AFTER_S = 10.0  # workers beat every second; this much silence makes /healthz fail
RATE_WINDOW_S = 5.0


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
            "clickhouse": dict(report.get("clickhouse") or {}),
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
