"""Shards (clickhouse.shards + pipelines[].sharding_key) on a real cluster: ZooKeeper + 2 shards x 2
replicas of clickhouse-server 18.16 (bench/clickhouse_cluster.py), weighted 1 and 2 so that
`slots[hash % total_weight]` is told apart from `hash % shards`; one cluster for the module.

Rows are counted on every replica of every shard after SYSTEM SYNC REPLICA: each event once
in the cluster, each on the shard the Distributed table's rule names.  How long a shard's
inserts stopped is printed (run with -s), never asserted.
"""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from bench.clickhouse_cluster import ClickHouseCluster, Replica
from supervisor import embedded
from tests.integration.harness import DEMO_COLUMNS, Load, Supervisor, pipeline_names, sink_config, wait_until
from tests.integration.harness import replica_sql as run
from workers.clickhouse import indoubt, sink
from workers.clickhouse.sharding import shard_of, slots_for
from workers.clickhouse.shards import Shards
from workers.settings import ClickHouseConfig, ShardConfig

WEIGHTS = [1, 2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = ClickHouseCluster.start(tmp_path_factory.mktemp("chshards"), shards=2, replicas=2, weights=WEIGHTS)
    except embedded.ServerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def tables(cluster):
    """A fresh database with `events` (ReplicatedMergeTree) on every node and `events_all` (Distributed,
    cityHash64(event_id)) over it."""
    assert cluster.zookeeper.alive() and all(r.alive() for r in cluster.replicas)
    db = f"sh_{uuid.uuid4().hex[:10]}"
    name, first = cluster.cluster_name, cluster.replicas[0]
    run(first, f"CREATE DATABASE {db} ON CLUSTER {name}")
    run(first, f"CREATE TABLE {db}.events ON CLUSTER {name} {DEMO_COLUMNS} "
               f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{db}/events', '{{replica}}') "
               "ORDER BY (kind, ts)")
    run(first, f"CREATE TABLE {db}.events_all ON CLUSTER {name} AS {db}.events "
               f"ENGINE = Distributed({name}, {db}, events, cityHash64(event_id))")
    return db


def shards_config(cfg_path, cluster: ClickHouseCluster, sharding_key: str):
    data = yaml.safe_load(cfg_path.read_text())
    for k in ("host", "port"):
        data["clickhouse"].pop(k)
    data["clickhouse"]["shards"] = [{"hosts": [r.address for r in s.replicas], "weight": s.weight}
                                    for s in cluster.shards]
    data["pipelines"][0].pop("create_table")
    data["pipelines"][0]["sharding_key"] = sharding_key
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg_path


def event_ids(replica: Replica, db: str) -> list[str]:
    return [e for (e,) in run(replica, f"SELECT event_id FROM {db}.events")]


def each_once_where_the_rule_says(cluster: ClickHouseCluster, db: str, total: int) -> dict[str, int]:
    """Every event 0..total-1 once in the cluster, on the shard cityHash64(event_id) names, on each replica;
    returns rows per replica."""
    slots = slots_for(WEIGHTS)
    per_replica = {}
    seen: list[str] = []
    for i, shard in enumerate(cluster.shards):
        replicas_ids = []
        for r in shard.replicas:
            run(r, f"SYSTEM SYNC REPLICA {db}.events")
            ids = event_ids(r, db)
            per_replica[f"shard {shard.number} {r.name}"] = len(ids)
            assert len(ids) == len(set(ids)), f"duplicates on {r.address}"
            assert all(shard_of(e, "String", slots) == i for e in ids), f"a row on the wrong shard {shard.number}"
            replicas_ids.append(sorted(ids))
        assert replicas_ids[0] == replicas_ids[1]
        seen += replicas_ids[0]
    assert sorted(int(e[1:]) for e in seen) == list(range(total))
    return per_replica


def test_a_batch_split_over_the_shards_is_one_part_each_and_a_resend_is_dropped(cluster, tables):
    """Shards.insert on real servers: each row where the Distributed table puts it; a shard part resent
    (the same batch again, as after an in-doubt question) is dropped by its shard's block deduplication;
    the in-doubt question asks each shard about its own part."""
    db = tables
    cfg = ClickHouseConfig(shards_items=tuple(ShardConfig(tuple(r.address for r in s.replicas), s.weight)
                                              for s in cluster.shards), database=db)
    names = ("event_id", "ts", "user_id", "kind", "amount", "country", "tags", "session_id", "payload")
    statement = sink.insert_statement("events", db, names)
    n = 300
    columns = [[f"e{i}" for i in range(n)], [1_700_000_000] * n, list(range(n)), ["k"] * n, [1.0] * n,
               ["de"] * n, [[]] * n, [uuid.UUID(int=i) for i in range(n)], ["p"] * n]
    ident = indoubt.identity("p", 0, 1, n, 42, tokens=False)

    def send(client, part):
        return sink.send_insert(client, statement, [list(c) for c in part])

    shards = Shards(cfg, preferred=0)
    try:
        for r in cluster.replicas:
            wait_until(lambda r=r: run(r, "SELECT uptime()")[0][0] > indoubt.UPTIME_MARGIN_S + 1, 30, "uptime")
        began = time.time()
        indoubt.run_as(ident, shards.insert, "events", db, "cityHash64(event_id)", names, columns, send)
        assert shards.landed("events", db, ident.query_id, began, 10.0) is True
        other = indoubt.identity("p", 0, n + 1, 2 * n, 43, tokens=False)
        assert shards.landed("events", db, other.query_id, began, 10.0) is False
        # A new process resends it all (it remembers nothing): every shard drops its identical part.
        again = Shards(cfg, preferred=1)
        try:
            indoubt.run_as(ident, again.insert, "events", db, "cityHash64(event_id)", names, columns, send)
        finally:
            again.disconnect()
    finally:
        shards.disconnect()
    rows = each_once_where_the_rule_says(cluster, db, n)
    print(f"\n{n} rows split by cityHash64(event_id), weights {WEIGHTS}: {rows}")
    assert run(cluster.replicas[0], f"SELECT count() FROM {db}.events_all") == [(n,)]


def test_a_whole_shard_down_for_10s_mid_stream(cluster, tables, nats_url, tmp_path):
    db = tables
    names, prefix = pipeline_names("sd")
    cfg = shards_config(sink_config(tmp_path, nats_url, 0, db, workers=1, partitions=2, max_rows=500, **names),
                        cluster, "cityHash64(event_id)")
    total = 8000
    first, second = cluster.shards
    sup = Supervisor(cfg, tmp_path / "sup.log")
    try:
        sup.wait_acquired(2)
        load = Load(nats_url, prefix, 0, total, rate=600)
        load.start()
        count = lambda replica: run(replica, f"SELECT count() FROM {db}.events")[0][0]  # noqa: E731
        sup.wait(lambda: count(second.replicas[0]) > 1000, 60, "rows flowing to shard 2")

        for r in second.replicas:
            r.kill()
        killed = time.monotonic()
        on_first = count(first.replicas[0])
        sup.wait(lambda: (sup.workers()[0].get("clickhouse") or {}).get("waiting", [0, 0])[1] > 0, 30,
                 "status showing a part waiting for shard 2")
        # The outage lasts 10 s (the scenario itself, not a wait for an event); the load goes on.
        time.sleep(max(0.0, 10 - (time.monotonic() - killed)))
        stored_meanwhile = count(first.replicas[0]) - on_first
        for r in second.replicas:
            r.start()
        back = time.monotonic()
        before = count(second.replicas[0])
        wait_until(lambda: count(second.replicas[0]) > before or count(second.replicas[1]) > before, 120,
                   "inserts into shard 2 again", interval=0.05)
        print(f"\nshard 2 down 10 s: shard 1 stored {stored_meanwhile} rows meanwhile; shard 2 took inserts "
              f"again {time.monotonic() - back:.2f}s after its servers were started")
        assert sup.logged("for shard 2") and sup.logged("waits")
        assert load.join_checked(120) == total
        wait_until(lambda: run(first.replicas[0], f"SELECT count() FROM {db}.events_all")[0][0] >= total, 120,
                   "every event in the cluster", interval=0.2)
        rows = each_once_where_the_rule_says(cluster, db, total)
        print(f"rows per replica: {rows}")
        assert sup.terminate() == 0
    finally:
        sup.close()
