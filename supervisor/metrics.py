"""The pool's snapshot as Prometheus metrics: what /metrics serves (prometheus_client writes the text).

`METRICS` declares every family (name, type, help, labels); docs/operations.md's table
lists the same. `pool_metrics` and `render_prometheus` are pure functions of a snapshot
(supervisor/snapshot.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["METRICS", "PROMETHEUS_CONTENT_TYPE", "pool_metrics", "render_prometheus"]

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
     "consumer's ack floor), landed or not_landed (from ClickHouse's query log), resent (nobody could tell; also "
     "a worker's own failed insert sent again when ClickHouse restarted before it could say).",
     ("slot", "pipeline", "partition", "settled")),
    ("jetsink_expired_unread_total", "counter",
     "Stream sequences after the partition's stored one that the stream had removed (max_age, max_msgs, ...) when a "
     "worker opened its commit state: its messages among them expired unread.", ("slot", "pipeline", "partition")),
    ("jetsink_commit_state_resets_total", "counter",
     "Commit states set aside (the stream was created again, or the bucket was deleted).",
     ("slot", "pipeline", "partition")),
    ("jetsink_consumers_created_total", "counter",
     "Times the partition's consumer (or stream) was found missing and created again.",
     ("slot", "pipeline", "partition")),
    ("jetsink_last_batch_timestamp_seconds", "gauge", "When the partition's last batch was committed (unix seconds).",
     ("slot", "pipeline", "partition")),
    ("jetsink_consumer_pending", "gauge", "Messages left in the partition's consumer (lag), as of the last delivery.",
     ("pipeline", "partition")),
    ("jetsink_clickhouse_replica_in_use", "gauge",
     "1 for the ClickHouse replica (host:port of clickhouse.hosts) the worker slot inserts into, 0 for the others.",
     ("slot", "replica")),
    ("jetsink_clickhouse_replica_up", "gauge",
     "0 while the worker slot holds the replica down (its last insert or look failed: unreachable, read-only, "
     "ZooKeeper trouble), else 1.", ("slot", "replica")),
    ("jetsink_clickhouse_replica_switches_total", "counter",
     "Times the worker slot moved to another ClickHouse replica (failovers and returns to its preferred one).",
     ("slot",)),
    ("jetsink_clickhouse_shard_parts_waiting", "gauge",
     "Batches of the worker slot whose part for this shard (1-based, clickhouse.shards) failed and waits while "
     "the other shards' parts are stored.", ("slot", "shard")),
    ("jetsink_skipped_total", "counter",
     "Messages a routed pipeline acked without storing them: a route with skip: true, or unrouted: skip "
     "(route \"unrouted\"). Summed over the live workers.", ("pipeline", "route")),
    ("jetsink_routed_rows_total", "counter",
     "Rows a routed pipeline inserted into each route's table. Summed over the live workers.", ("pipeline", "route")),
    ("jetsink_routed_dead_letters_total", "counter",
     "Messages of each route a routed pipeline dead-lettered (route \"unrouted\": no route matched). Summed over the "
     "live workers.", ("pipeline", "route")),
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
    "jetsink_expired_unread_total": "expired_unread",
    "jetsink_commit_state_resets_total": "state_resets",
    "jetsink_consumers_created_total": "consumers_created",
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
    routes: dict[tuple[str, str], list[int]] = {}
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
        ch = w.get("clickhouse") or {}
        if ch:
            add("jetsink_clickhouse_replica_switches_total", slot, ch.get("switches", 0))
        for r in ch.get("replicas") or ():
            in_use = ch.get("in_use_list") or [ch.get("in_use")]
            add("jetsink_clickhouse_replica_in_use", (w["slot"], r["address"]), r["address"] in in_use)
            add("jetsink_clickhouse_replica_up", (w["slot"], r["address"]), r.get("state") != "down")
        for shard, waiting in enumerate(ch.get("waiting") or (), start=1):
            add("jetsink_clickhouse_shard_parts_waiting", (w["slot"], shard), waiting)
        for name, stats in sorted((w.get("stats") or {}).items()):
            pipeline, _, index = name.rpartition("/")
            labels = (w["slot"], pipeline, index)
            for metric, key in _COUNTERS.items():
                add(metric, labels, stats.get(key, 0))
            for settled, key in _IN_DOUBT.items():
                add("jetsink_in_doubt_batches_total", (*labels, settled), stats.get(key, 0))
            if stats.get("last_batch_at"):
                add("jetsink_last_batch_timestamp_seconds", labels, stats["last_batch_at"])
            for route, counts in (stats.get("routes") or {}).items():
                total = routes.setdefault((pipeline, route), [0, 0, 0])
                for i, n in enumerate(counts[:3]):
                    total[i] += n
            # During a move two workers may report a partition; the first report wins.
            if (pipeline, index) not in pending_seen:
                pending_seen.add((pipeline, index))
                add("jetsink_consumer_pending", (pipeline, index), stats.get("pending", 0))
    for (pipeline, route), (inserted, skipped, dead) in sorted(routes.items()):
        add("jetsink_routed_rows_total", (pipeline, route), inserted)
        add("jetsink_skipped_total", (pipeline, route), skipped)
        add("jetsink_routed_dead_letters_total", (pipeline, route), dead)
    for key, t in sorted((snapshot.get("schemas") or {}).items()):
        labels = (key.partition("/")[0], t.get("table", ""))  # "pipeline/route" for a route's table
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
