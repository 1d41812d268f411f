"""supervisor.snapshot, .metrics, .admin and .status: snapshots from worker handles, health, Prometheus text
and the status table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from supervisor.admin import parse_listen
from supervisor.assignment import Partition
from supervisor.metrics import METRICS, pool_metrics, render_prometheus
from supervisor.snapshot import PoolView, health
from supervisor.status import render_status_table, summary

NOW = 1_700_000_000.0


def stats(inserted: int = 0, pending: int = 0, last_batch_at: float = 0.0, **more: int) -> dict:
    return {"consumed": inserted, "inserted": inserted, "dead_lettered": 0, "batches": 1 if inserted else 0,
            "insert_retries": 0, "last_batch_at": last_batch_at, "pending": pending, **more}


@dataclass
class Handle:  # shaped like worker_handle.WorkerHandle
    slot: int
    pid: int | None = 100
    ready: bool = True
    restarts: int = 0
    owned: tuple = ()
    stats: dict = field(default_factory=dict)
    beat: float = 0.0

    @property
    def process(self) -> Any:
        return None if self.pid is None else SimpleNamespace(pid=self.pid)

    @property
    def heartbeat(self) -> Any:
        return SimpleNamespace(value=self.beat)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_snapshot_shape_and_rows_per_second():
    clock = Clock()
    view = PoolView(window_s=5.0, clock=clock, wall=lambda: NOW)
    w = Handle(0, owned=(Partition("events", 0), Partition("events", 3)), beat=999.5)
    w.stats = {
        "op": "stats",
        "partitions": {"events/0": stats(100), "events/3": stats(50, pending=7, last_batch_at=NOW - 2)},
    }
    snap = view.snapshot([w], draining=False)
    assert snap["started_at"] == NOW and snap["taken_at"] == NOW and snap["draining"] is False
    (entry,) = snap["workers"]
    assert entry["slot"] == 0 and entry["pid"] == 100 and entry["ready"] is True
    assert entry["partitions"] == ["events/0", "events/3"]
    assert entry["heartbeat_age_s"] == 0.5
    assert entry["last_batch_at"] == NOW - 2
    assert entry["rows_per_s"] == 0.0  # the first sample opens a window
    assert entry["stats"]["events/3"]["pending"] == 7

    clock.t += 2.0
    w.stats = {"op": "stats", "partitions": {"events/0": stats(300), "events/3": stats(50)}}
    assert view.snapshot([w], draining=False)["workers"][0]["rows_per_s"] == 0.0  # window not over
    clock.t += 3.0
    assert view.snapshot([w], draining=False)["workers"][0]["rows_per_s"] == 40.0  # 200 rows / 5 s
    clock.t += 1.0
    assert view.snapshot([w], draining=False)["workers"][0]["rows_per_s"] == 40.0  # holds until the next window

    # A restarted process starts its counters again: no negative rate.
    w.pid, w.stats = 101, {"op": "stats", "partitions": {"events/0": stats(10)}}
    assert view.snapshot([w], draining=False)["workers"][0]["rows_per_s"] == 0.0


def test_snapshot_is_a_copy():
    w = Handle(0, stats={"op": "stats", "partitions": {"events/0": stats(1)}})
    snap = PoolView().snapshot([w], draining=False)
    w.stats["partitions"]["events/0"]["inserted"] = 99
    assert snap["workers"][0]["stats"]["events/0"]["inserted"] == 1


def test_a_slot_waiting_for_restart():
    view = PoolView(clock=Clock(), wall=lambda: NOW)
    entry = view.snapshot([Handle(1, pid=None, ready=True, restarts=3)], draining=False)["workers"][0]
    assert (
        entry["pid"] is None and entry["ready"] is False and entry["heartbeat_age_s"] is None and entry["restarts"] == 3
    )


def snapshot(**worker: Any) -> dict:
    w = {
        "slot": 0,
        "pid": 100,
        "ready": True,
        "restarts": 0,
        "partitions": ["events/0"],
        "rows_per_s": 10.0,
        "last_batch_at": NOW - 1,
        "heartbeat_age_s": 0.5,
        "stats": {"events/0": stats(5, pending=3, last_batch_at=NOW - 1)},
        "clickhouse": {"in_use": "ch1:9000", "preferred": "ch1:9000", "switches": 0, "waiting": [0], "replicas": [
            {"address": "ch1:9000", "state": "healthy", "error": "", "down_s": 0.0, "inserts": 7}]},
    }
    w.update(worker)
    return {"started_at": NOW - 3700, "taken_at": NOW, "draining": False, "workers": [w], "instance_id": "a",
            "instances": [{"instance_id": "a", "self": True, "holds": ["events/0"]},
                          {"instance_id": "b", "self": False, "holds": ["events/1"]}]}


def test_health():
    assert health(snapshot(), now=NOW) == []
    assert health(None) == ["supervisor is starting"]
    assert health(snapshot(ready=False), now=NOW) == ["worker 0 (pid 100) is not ready"]
    assert health(snapshot(pid=None), now=NOW) == ["worker 0 is not running (restarts: 0)"]
    assert health(snapshot(heartbeat_age_s=30.0), now=NOW) == ["worker 0 (pid 100) has not beaten for 30s"]
    assert health(snapshot(), now=NOW + 60) == ["supervisor loop made no progress for 60s"]
    assert health({**snapshot(), "draining": True}, now=NOW) == ["supervisor is draining (shutting down)"]
    assert health({**snapshot(), "workers": []}, now=NOW) == ["no workers"]


def scrape(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple], float]]:
    """prometheus_client's own parser: ({family: type}, {(sample name, sorted labels): value})."""
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, values


def test_prometheus_samples():
    snap = snapshot()
    snap["workers"].append({"slot": 1, "pid": None, "ready": False, "restarts": 2, "partitions": ["events/1"],
                            "rows_per_s": 0.0, "last_batch_at": 0.0, "heartbeat_age_s": None, "stats": {}})
    types, values = scrape(render_prometheus(snap))
    part0 = (("partition", "0"), ("pipeline", "events"), ("slot", "0"))
    assert values[("jetsink_worker_up", (("slot", "0"),))] == 1
    assert values[("jetsink_worker_up", (("slot", "1"),))] == 0
    assert values[("jetsink_worker_pid", (("slot", "0"),))] == 100
    assert ("jetsink_worker_pid", (("slot", "1"),)) not in values
    assert values[("jetsink_worker_restarts_total", (("slot", "1"),))] == 2
    assert values[("jetsink_worker_partitions", (("slot", "0"),))] == 1
    assert values[("jetsink_rows_inserted_total", part0)] == 5
    assert values[("jetsink_messages_consumed_total", part0)] == 5
    assert values[("jetsink_dead_letters_total", part0)] == 0
    assert values[("jetsink_rows_per_second", (("slot", "0"),))] == 10.0
    assert values[("jetsink_last_batch_timestamp_seconds", part0)] == NOW - 1
    assert values[("jetsink_consumer_pending", (("partition", "0"), ("pipeline", "events")))] == 3
    # How the in-doubt batches a dead owner left were settled, one sample per way.
    snap["workers"][0]["stats"]["events/0"].update(in_doubt_acked=2, in_doubt_not_landed=1)
    _, values = scrape(render_prometheus(snap))
    in_doubt = {dict(labels)["settled"]: v for (name, labels), v in values.items()
                if name == "jetsink_in_doubt_batches_total" and dict(labels)["slot"] == "0"}
    assert in_doubt == {"acked": 2, "landed": 0, "not_landed": 1, "resent": 0}
    # The parser names a counter family without its _total suffix.
    assert types["jetsink_rows_inserted"] == "counter"
    assert types["jetsink_consumer_pending"] == "gauge"


def test_prometheus_label_values_round_trip():
    _, values = scrape(render_prometheus(snapshot(stats={'we"ird\\pipe\nline/0': stats(1)})))
    assert values[("jetsink_rows_inserted_total",
                   (("partition", "0"), ("pipeline", 'we"ird\\pipe\nline'), ("slot", "0")))] == 1


def test_prometheus_of_nothing_declares_every_metric_without_samples():
    text = render_prometheus(None)
    types, values = scrape(text)
    assert values == {}
    assert len(types) == len([line for line in text.splitlines() if line.startswith("# TYPE ")]) == len(METRICS) == 31


def test_status_table():
    snap = snapshot(partitions=["events/10", "events/2", "orders/1"], restarts=4)
    table = render_status_table(snap, now=NOW)
    lines = table.splitlines()
    assert lines[0] == "jetsink supervisor running, up 1h01m: 1 worker(s), 3 partition(s), 10 rows/s"
    assert lines[2].split() == ["SLOT", "PID", "READY", "PARTITIONS", "ROWS/S", "LAG", "LAST", "BATCH", "RESTARTS"]
    assert lines[3].split() == ["0", "100", "yes", "events:2,10", "orders:1", "10.0", "3", "1.0s", "ago", "4"]
    assert "unhealthy" not in table


def test_status_table_shows_problems_and_never_run_batches():
    table = render_status_table(snapshot(pid=None, ready=False, last_batch_at=0.0, stats={}), now=NOW)
    assert "never" in table
    assert "unhealthy:\n  worker 0 is not running (restarts: 0)" in table
    assert render_status_table(None) == "supervisor is starting (no status yet)\n"


def test_status_shows_what_telemetry_dropped_while_its_endpoint_was_down():
    workers = [
        Handle(slot, stats={"op": "stats", "partitions": {}, "telemetry_dropped": {"traces": 10 * slot, "logs": 2}})
        for slot in (1, 2)
    ]
    snap = PoolView(wall=lambda: NOW).snapshot(workers, draining=False)
    assert [w["telemetry_dropped"] for w in snap["workers"]] == [{"traces": 10, "logs": 2}, {"traces": 20, "logs": 2}]
    assert "telemetry dropped while its OTLP endpoint was unreachable: traces 30, logs 4" in render_status_table(
        snap, now=NOW
    )
    quiet = PoolView(wall=lambda: NOW).snapshot([Handle(0, stats={"op": "stats", "partitions": {}})], draining=False)
    assert "telemetry" not in render_status_table(quiet, now=NOW)


def test_status_and_metrics_show_what_partitions_found_changed_in_jetstream():
    snap = snapshot()
    snap["workers"][0]["stats"]["events/0"].update(expired_unread=400, state_resets=1, consumers_created=2)
    table = render_status_table(snap, now=NOW)
    assert "JetStream changes found:" in table
    assert "events/0: 400 stream sequences expired unread" in table
    assert "events/0: commit state set aside 1 time(s)" in table
    assert "events/0: consumer created again 2 time(s)" in table
    _, values = scrape(render_prometheus(snap))
    part0 = (("partition", "0"), ("pipeline", "events"), ("slot", "0"))
    assert values[("jetsink_expired_unread_total", part0)] == 400
    assert values[("jetsink_commit_state_resets_total", part0)] == 1
    assert values[("jetsink_consumers_created_total", part0)] == 2
    assert "JetStream changes" not in render_status_table(snapshot(), now=NOW)


def test_parse_listen():
    assert parse_listen("127.0.0.1:9470") == ("127.0.0.1", 9470)
    assert parse_listen("[::1]:0") == ("::1", 0)


def test_snapshot_of_the_arbiters_own_worker_handles():
    from supervisor.worker_handle import WorkerHandle

    w = WorkerHandle(slot=2)
    w.owned = {Partition("events", 10), Partition("events", 2)}
    w.process, w.ready, w.restarts = SimpleNamespace(pid=7), True, 1
    w.heartbeat = SimpleNamespace(value=999.0)
    w.stats = {"op": "stats", "partitions": {"events/2": stats(3, pending=1)}}
    clock = Clock()
    entry = PoolView(clock=clock, wall=lambda: NOW).snapshot([w], draining=False)["workers"][0]
    assert entry["partitions"] == ["events/2", "events/10"]
    assert (entry["slot"], entry["pid"], entry["ready"], entry["restarts"], entry["heartbeat_age_s"]) == (
        2,
        7,
        True,
        1,
        1.0,
    )
    assert entry["stats"]["events/2"]["pending"] == 1


def admin_problems(admin: Any) -> list[str]:
    from supervisor.config import ConfigError, parse_config

    base = {
        "pipelines": [{"name": "e", "stream": "E", "subject": "e.*", "partitions": 1, "table": "t"}],
        "admin": admin,
    }
    try:
        parse_config(base, Path("."))
    except ConfigError as exc:
        return exc.problems
    return []


def test_admin_config_defaults_to_loopback():
    from supervisor.config import AdminConfig, parse_config

    config = parse_config(
        {"pipelines": [{"name": "e", "stream": "E", "subject": "e.*", "partitions": 1, "table": "t"}]}, Path(".")
    )
    assert config.admin == AdminConfig(enabled=True, listen="127.0.0.1:9470", allow_remote=False)


def test_admin_listen_is_checked():
    for ok in ("127.0.0.1:9470", "127.0.0.2:1", "localhost:9470", "[::1]:9470", "127.0.0.1:0"):
        assert admin_problems({"listen": ok}) == [], ok
    assert admin_problems({"listen": "0.0.0.0:9470", "allow_remote": True}) == []
    assert admin_problems({"listen": "0.0.0.0:9470"})[0].startswith(
        "admin.listen: '0.0.0.0:9470' is not a loopback address"
    )
    assert "is not a loopback address" in admin_problems({"listen": "[::]:9470"})[0]
    for bad in ("9470", "::1:9470", "host:http", "127.0.0.1:65536", ":9470", 9470):
        assert admin_problems({"listen": bad})[0].startswith("admin.listen: expected host:port"), bad
    assert admin_problems({"enabled": "yes"}) == ["admin.enabled: expected true or false, got 'yes'"]


def test_summary_line():
    assert summary(snapshot()) == "1/1 workers ready, 1 partitions, 10 rows/s"
    assert (
        summary({**snapshot(ready=False), "draining": True}) == "0/1 workers ready, 1 partitions, 10 rows/s, draining"
    )
    assert summary(None) == "0/0 workers ready, 0 partitions, 0 rows/s"


def test_docs_list_every_metric_with_its_type_and_labels():
    """docs/operations.md's metric table is what /metrics serves."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    documented = {}
    for names, kind, labels in re.findall(r"^\| (`jetsink_.*?) \| (gauge|counter) \|(.*?)\|$", text, re.M):
        for name in re.findall(r"`(jetsink_\w+)`", names):
            documented[name] = (kind, tuple(label.strip() for label in labels.split(",") if label.strip()))
    assert documented == {name: (kind, labels) for name, kind, _, labels in METRICS}


def test_served_metrics_are_the_declared_ones():
    declared = {name: (kind, set(labels)) for name, kind, _, labels in METRICS}
    served = {}
    schemas = {"events": {"table": "default.events", "digest": "3f2a", "since": NOW - 60, "read_at": NOW - 1,
                          "changes": 1, "columns": 3, "problem": None, "slots": {"0": "3f2a"}}}
    snap = snapshot()
    snap["workers"][0]["stats"]["events/0"]["routes"] = {"clicks": [1, 2, 3]}
    for family in pool_metrics({**snap, "schemas": schemas}):
        for sample in family.samples:
            served[sample.name] = (family.type, set(sample.labels))
    assert {name: declared[name] for name in served} == served
    assert set(served) == set(declared)


def test_routed_pipelines_are_counted_per_route_over_workers_and_partitions():
    snap = snapshot(stats={"events/0": {**stats(5), "routes": {"clicks": [4, 0, 1], "skip_2": [0, 3, 0]}},
                           "events/1": {**stats(5), "routes": {"clicks": [2, 0, 0], "unrouted": [0, 0, 7]}}})
    _, values = scrape(render_prometheus(snap))
    assert values[("jetsink_routed_rows_total", (("pipeline", "events"), ("route", "clicks")))] == 6
    assert values[("jetsink_skipped_total", (("pipeline", "events"), ("route", "skip_2")))] == 3
    assert values[("jetsink_routed_dead_letters_total", (("pipeline", "events"), ("route", "unrouted")))] == 7
    assert values[("jetsink_routed_dead_letters_total", (("pipeline", "events"), ("route", "clicks")))] == 1
    lines = render_status_table(snap, now=NOW).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("PIPELINE  ROUTE")))
    assert [line.split() for line in lines[at + 1:at + 4]] == [
        ["events", "clicks", "6", "0", "1"], ["events", "skip_2", "0", "3", "0"], ["events", "unrouted", "0", "0", "7"]]
    assert "ROUTE" not in render_status_table(snapshot(), now=NOW)  # no routed pipeline: no table


def test_metrics_name_the_instance_and_count_the_live_ones():
    _, values = scrape(render_prometheus(snapshot()))
    assert values[("jetsink_instance_info", (("instance_id", "a"),))] == 1
    assert values[("jetsink_instances_live", ())] == 2


def test_status_table_lists_every_instance():
    table = render_status_table(snapshot(), now=NOW)
    assert "instances (2 live, this one is a)" in table
    assert any(line.startswith("a *") for line in table.splitlines())
    assert any(line.startswith("b ") and "events:1" in line for line in table.splitlines())


def test_status_and_metrics_show_the_replica_each_worker_uses_and_each_replicas_health():
    ch = {"in_use": "ch2:9000", "preferred": "ch1:9000", "switches": 1, "replicas": [
        {"address": "ch1:9000", "state": "down", "error": "EOFError: Unexpected EOF", "down_s": 12.0, "inserts": 3},
        {"address": "ch2:9000", "state": "healthy", "error": "", "down_s": 0.0, "inserts": 9}]}
    table = render_status_table(snapshot(clickhouse=ch), now=NOW)
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("SLOT  SHARD  CLICKHOUSE"))
    assert lines[at + 1].split()[:6] == ["0", "1", "ch1:9000", "(preferred)", "down", "12.0s"]
    assert lines[at + 2].split()[:6] == ["0", "1", "ch2:9000", "yes", "healthy", "9"]
    _, samples = scrape(render_prometheus(snapshot(clickhouse=ch)))
    assert samples[("jetsink_clickhouse_replica_in_use", (("replica", "ch2:9000"), ("slot", "0")))] == 1
    assert samples[("jetsink_clickhouse_replica_in_use", (("replica", "ch1:9000"), ("slot", "0")))] == 0
    assert samples[("jetsink_clickhouse_replica_up", (("replica", "ch1:9000"), ("slot", "0")))] == 0
    assert samples[("jetsink_clickhouse_replica_switches_total", (("slot", "0"),))] == 1
    # One replica: no replica table (nothing to choose between).
    assert "CLICKHOUSE" not in render_status_table(snapshot(), now=NOW)
    # Two shards: the replica in use of each, and the parts waiting for shard 2.
    sharded = {"in_use": "a1:9000,b1:9000", "in_use_list": ["a1:9000", "b1:9000"], "preferred": "a1:9000,b1:9000",
               "switches": 0, "waiting": [0, 3], "replicas": [
                   {"address": "a1:9000", "state": "healthy", "error": "", "down_s": 0.0, "inserts": 5, "shard": 1},
                   {"address": "b1:9000", "state": "down", "error": "EOFError", "down_s": 4.0, "inserts": 2,
                    "shard": 2},
               ]}
    _, samples = scrape(render_prometheus(snapshot(clickhouse=sharded)))
    assert samples[("jetsink_clickhouse_shard_parts_waiting", (("shard", "2"), ("slot", "0")))] == 3
    assert samples[("jetsink_clickhouse_shard_parts_waiting", (("shard", "1"), ("slot", "0")))] == 0
    assert samples[("jetsink_clickhouse_replica_in_use", (("replica", "a1:9000"), ("slot", "0")))] == 1
    assert samples[("jetsink_clickhouse_replica_in_use", (("replica", "b1:9000"), ("slot", "0")))] == 1
