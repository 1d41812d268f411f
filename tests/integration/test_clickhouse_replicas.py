"""Replicas of one shard with failover (clickhouse.hosts), on a real cluster: ZooKeeper + 1 shard x 2
replicas of clickhouse-server 18.16 (bench/clickhouse_cluster.py), one for the module.

Each scenario counts every event_id on every replica (after SYSTEM SYNC REPLICA): 0 lost, 0
duplicates.  How long inserts stopped is printed (run with -s) for docs/operations.md, never asserted.
"""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from bench.clickhouse_cluster import ClickHouseCluster, Replica
from supervisor import embedded
from tests.integration.harness import (
    DEMO_COLUMNS,
    Load,
    Supervisor,
    demo_events,
    fed,
    pipeline_names,
    sink_config,
    wait_until,
)
from tests.integration.harness import replica_sql as run
from workers.clickhouse import indoubt, sink
from workers.clickhouse.replicas import ReplicaSet
from workers.delivery import commits
from workers.settings import ClickHouseConfig


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = ClickHouseCluster.start(tmp_path_factory.mktemp("chreplicas"), shards=1, replicas=2)
    except embedded.ServerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def healthy(cluster):
    """The cluster with every process up (a test restarts what it stopped) and a fresh database on each replica."""
    assert cluster.zookeeper.alive() and all(r.alive() for r in cluster.replicas)
    db = f"rep_{uuid.uuid4().hex[:10]}"
    for r in cluster.replicas:
        run(r, f"CREATE DATABASE {db}")
    yield cluster, db


def create_events(cluster: ClickHouseCluster, db: str, engine: str = "replicated") -> None:
    for r in cluster.replicas:
        table_engine = (f"ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}/events', '{{replica}}')"
                        if engine == "replicated" else "MergeTree()")
        run(r, f"CREATE TABLE {db}.events {DEMO_COLUMNS} ENGINE = {table_engine} ORDER BY (kind, ts)")


def hosts_config(cfg_path, cluster: ClickHouseCluster):
    """The config sink_config wrote, with clickhouse.hosts (both replicas) instead of host/port."""
    data = yaml.safe_load(cfg_path.read_text())
    for k in ("host", "port"):
        data["clickhouse"].pop(k)
    data["clickhouse"]["hosts"] = [r.address for r in cluster.replicas]
    data["pipelines"][0].pop("create_table")
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg_path


def counts(replica: Replica, db: str) -> tuple[int, int]:
    return run(replica, f"SELECT count(), uniqExact(event_id) FROM {db}.events")[0]


def every_replica_once(cluster: ClickHouseCluster, db: str, total: int) -> list[tuple[int, int]]:
    """(lost, duplicates) of events 0..total-1 on each replica, once replication caught up."""
    out = []
    for r in cluster.replicas:
        wait_until(lambda r=r: counts(r, db)[1] >= total, 120, f"all {total} event_ids on {r.address}", interval=0.2)
        run(r, f"SYSTEM SYNC REPLICA {db}.events")
        rows, distinct = counts(r, db)
        assert run(r, f"SELECT count() FROM {db}.events WHERE toUInt64(substring(event_id, 2)) >= {total}") == [(0,)]
        out.append((total - distinct, rows - distinct))
    return out


def replica_view(sup: Supervisor) -> dict:
    workers = sup.workers()
    return (workers[0].get("clickhouse") or {}) if workers else {}


def by_address(cluster: ClickHouseCluster, address: str) -> Replica:
    return next(r for r in cluster.replicas if r.address == address)


def resumed_after(replica: Replica, db: str, since: float, what: str) -> float:
    """Seconds from `since` until `replica` holds more events than it does now (inserts resumed)."""
    before = counts(replica, db)[0]
    wait_until(lambda: counts(replica, db)[0] > before, 120, what, interval=0.05)
    return time.monotonic() - since


# --------------------------------------------------------------------------- the in-doubt question


def test_an_in_doubt_insert_is_asked_of_every_replica_it_may_be_on(healthy):
    """The danger: the query log is per server, and a replica that never saw an insert says it never
    landed.  The ReplicaSet asks every replica, and resends (deduplicated) where one is silent."""
    cluster, db = healthy
    r1, r2 = cluster.replicas
    create_events(cluster, db)
    cfg = ClickHouseConfig(hosts_items=(r1.address, r2.address), database=db)
    names = ("event_id", "ts", "user_id", "kind", "amount", "country", "tags", "session_id", "payload")
    statement = sink.insert_statement("events", db, names)
    columns = [[f"e{i}" for i in range(10)], [1_700_000_000] * 10, list(range(10)), ["k"] * 10, [1.5] * 10,
               ["de"] * 10, [[]] * 10, [uuid.UUID(int=i) for i in range(10)], ["p"] * 10]
    ident = indoubt.identity("p", 0, 1, 10, 123, tokens=False)
    # "Never landed" needs a server process up since before the insert, with a margin (indoubt.UPTIME_MARGIN_S).
    for r in (r1, r2):
        wait_until(lambda r=r: run(r, "SELECT uptime()")[0][0] > indoubt.UPTIME_MARGIN_S + 1, 30,
                   "uptime past the margin")
    began = time.time()

    owner = ReplicaSet(cfg, preferred=0)  # the worker that inserted, into r1
    indoubt.run_as(ident, owner.insert, lambda c: sink.send_insert(c, statement, [list(col) for col in columns]))
    run(r2, f"SYSTEM SYNC REPLICA {db}.events")
    owner.disconnect()

    # r2 never saw the insert: asked alone, its query log says "never landed".
    asked = r2.client()
    try:
        assert indoubt.landed(asked, ident.query_id, began, 10.0) is False
    finally:
        asked.disconnect()
    # A next owner, preferring r2: it asks both (r1 first when the range names it), and r1 says landed.
    heir = ReplicaSet(cfg, preferred=1)
    try:
        assert heir.landed("events", db, ident.query_id, began, 10.0) is True
        assert heir.landed("events", db, ident.query_id, began, 10.0, recorded=r2.address) is True
        never = indoubt.identity("p", 0, 11, 20, 456, tokens=False)
        assert heir.landed("events", db, never.query_id, began, 10.0) is False  # no replica has it

        # r1 killed: nobody can say; on a Replicated table the answer is "resend", and the resent
        # identical block is dropped by the shard's block deduplication.
        r1.kill()
        assert heir.landed("events", db, ident.query_id, began, 10.0, recorded=r1.address) is None
        indoubt.run_as(ident, heir.insert, lambda c: sink.send_insert(c, statement, [list(col) for col in columns]))
        assert counts(r2, db) == (10, 10)
    finally:
        heir.disconnect()
        r1.start()
    wait_until(lambda: counts(r1, db) == (10, 10), 60, "r1 to catch up", interval=0.2)


def test_an_in_doubt_insert_into_a_plain_table_waits_for_its_replica(healthy):
    cluster, db = healthy
    r1, r2 = cluster.replicas
    create_events(cluster, db, engine="plain")
    cfg = ClickHouseConfig(hosts_items=(r1.address, r2.address), database=db)
    ident = indoubt.identity("p", 0, 1, 10, 789, tokens=False)
    heir = ReplicaSet(cfg, preferred=1)
    r1.kill()
    try:
        # MergeTree on each host: r2 cannot drop a copy r1 stored, so the batch waits for r1.
        with pytest.raises(ConnectionError, match=f"{r1.address}.*waits for that replica"):
            heir.landed("events", db, ident.query_id, time.time() - 1, 10.0)
    finally:
        heir.disconnect()
        r1.start()


# --------------------------------------------------------------------------- failures mid-stream


def test_kill_9_of_the_replica_in_use_mid_stream(healthy, nats_url, tmp_path):
    cluster, db = healthy
    create_events(cluster, db)
    names, prefix = pipeline_names("rk")
    cfg = hosts_config(sink_config(tmp_path, nats_url, 0, db, workers=1, partitions=2, max_rows=500, **names),
                       cluster)
    total, more = 6000, 1000
    sup = Supervisor(cfg, tmp_path / "sup.log")
    try:
        sup.wait_acquired(2)
        view = sup.wait(lambda: replica_view(sup), 30, "the worker's replicas in /status")
        preferred = by_address(cluster, view["in_use"])
        survivor = next(r for r in cluster.replicas if r is not preferred)
        load = Load(nats_url, prefix, 0, total, rate=1500)
        load.start()
        sup.wait(lambda: counts(survivor, db)[0] > 1500, 60, "rows flowing")

        preferred.kill()
        killed = time.monotonic()
        took = resumed_after(survivor, db, killed, "inserts into the other replica")
        print(f"\nkill -9 of the replica in use: inserts resumed on the other one {took:.2f}s later")
        sup.wait(lambda: replica_view(sup).get("in_use") == survivor.address, 30, "status naming the new replica")
        assert sup.logged(f"clickhouse {preferred.address} failed")
        assert load.join_checked(60) == total

        preferred.start()
        restarted = time.monotonic()
        # More events after the restart: the worker goes back to its preferred replica once it is healthy.
        more_load = Load(nats_url, prefix, total, more, rate=500)
        more_load.start()
        sup.wait(lambda: replica_view(sup).get("in_use") == preferred.address, 60, "the return to the preferred one")
        print(f"back on the preferred replica {time.monotonic() - restarted:.2f}s after its restart")
        assert more_load.join_checked(60) == more
        assert sup.logged("back on its preferred clickhouse")
        view = replica_view(sup)
        assert view["switches"] >= 2
        for lost, duplicates in every_replica_once(cluster, db, total + more):
            assert (lost, duplicates) == (0, 0)
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_zookeeper_stopped_for_10s_mid_stream(healthy, nats_url, tmp_path):
    cluster, db = healthy
    create_events(cluster, db)
    names, prefix = pipeline_names("rz")
    cfg = hosts_config(sink_config(tmp_path, nats_url, 0, db, workers=1, partitions=2, max_rows=500, **names),
                       cluster)
    total = 8000
    sup = Supervisor(cfg, tmp_path / "sup.log")
    try:
        sup.wait_acquired(2)
        load = Load(nats_url, prefix, 0, total, rate=600)
        load.start()
        r1 = cluster.replicas[0]
        sup.wait(lambda: counts(r1, db)[0] > 1000, 60, "rows flowing")

        cluster.zookeeper.stop()
        stopped = time.monotonic()
        # The outage itself lasts 10 s (the scenario, not a wait for an event); the load goes on.
        time.sleep(10)
        cluster.zookeeper.start()
        took = resumed_after(r1, db, time.monotonic(), "inserts after ZooKeeper's return")
        print(f"\nZooKeeper stopped 10 s: inserts resumed {took:.2f}s after it was back "
              f"({time.monotonic() - stopped:.2f}s after it stopped)")
        assert load.join_checked(120) == total
        for lost, duplicates in every_replica_once(cluster, db, total):
            assert (lost, duplicates) == (0, 0)
        assert sup.terminate() == 0
    finally:
        sup.close()
    # Every replica's session is back before the next test.
    wait_until(lambda: all(run(r, "SELECT count() FROM system.zookeeper WHERE path = '/'") for r in cluster.replicas),
               60, "every replica to read ZooKeeper again")


def test_a_batch_in_doubt_whose_replica_died_is_resent_to_the_other_and_dropped(healthy, nats_url, tmp_path,
                                                                                  monkeypatch):
    """The worker exits between its insert (into r1) and its ack, and r1 is kill -9'd before the next
    owner asks: r1 cannot be asked, r2 never saw the insert (its "never landed" alone would store the
    batch twice), so the batch is resent as the same block to r2 and the shard drops it."""
    cluster, db = healthy
    r1, r2 = cluster.replicas
    create_events(cluster, db)
    monkeypatch.setenv(commits.EXIT_AFTER_INSERT_ENV, f"2:{tmp_path / 'hook-fired'}")
    names, prefix = pipeline_names("ri")
    cfg = hosts_config(sink_config(tmp_path, nats_url, 0, db, workers=1, partitions=1, max_rows=1000, **names),
                       cluster)
    total = 5000
    with fed(cfg, tmp_path / "sup.log", nats_url, names["stream"], demo_events(prefix, 0, total)) as sup:
        line = sup.wait(lambda: sup.logged("test hook"), 60, "the worker to exit between insert and ack")[0]
        r1.kill()
        first, last = (int(x) for x in line["msg"].rsplit("range ", 1)[1].rstrip(")").split(".."))
        settled = sup.wait(lambda: sup.logged(f"in-doubt batch {first}..{last}"), 60, "the in-doubt batch settled")[0]
        print(f"\n{settled['msg']}")
        assert f"sent while clickhouse {r1.address} was in use" in settled["msg"]
        assert "sent again" in settled["msg"]
        wait_until(lambda: counts(r2, db)[1] >= total, 120, "every event on r2", interval=0.2)
        r1.start()
        for lost, duplicates in every_replica_once(cluster, db, total):
            assert (lost, duplicates) == (0, 0)
        assert sup.terminate() == 0


@pytest.mark.slow
def test_a_quorum_insert_of_unknown_status_moves_on_and_stores_nothing_twice(healthy, nats_url, tmp_path):
    """insert_quorum 2 and the other replica kill -9'd (its ZooKeeper session still alive): the insert waits
    insert_quorum_timeout, then 319 (unknown status: the block is on this replica, its quorum unknown);
    later 285 (too few live replicas). Once the replica is back, every event is stored once."""
    cluster, db = healthy
    r1, r2 = cluster.replicas
    create_events(cluster, db)
    names, prefix = pipeline_names("rq")
    quorum = {"settings": {"insert_quorum": 2, "insert_quorum_timeout": 2000}}
    cfg = hosts_config(sink_config(tmp_path, nats_url, 0, db, workers=1, partitions=1, max_rows=500,
                                   clickhouse=quorum, **names), cluster)
    total = 3000
    sup = Supervisor(cfg, tmp_path / "sup.log")
    try:
        sup.wait_acquired(1)
        load = Load(nats_url, prefix, 0, total, rate=300)
        load.start()
        sup.wait(lambda: counts(r1, db)[0] > 500, 60, "rows flowing")
        r2.kill()
        killed = time.monotonic()
        sup.wait(lambda: sup.logged("(code 319)"), 60, "an insert of unknown quorum status")
        print(f"\n319 {time.monotonic() - killed:.1f}s after the other replica's kill -9")
        r2.start()
        took = resumed_after(r2, db, time.monotonic(), "inserts with both replicas again")
        print(f"inserts resumed {took:.1f}s after the replica was started again")
        assert load.join_checked(120) == total
        for lost, duplicates in every_replica_once(cluster, db, total):
            assert (lost, duplicates) == (0, 0)
        assert sup.terminate() == 0
    finally:
        sup.close()
