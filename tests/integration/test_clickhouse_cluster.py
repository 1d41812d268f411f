"""bench/clickhouse_cluster.py on real processes, and the 18.16 facts issue 25 builds on.

One cluster for the module: ZooKeeper + 2 shards x 2 replicas, the shards weighted 1 and
2 so that `slots[hash % total_weight]` is told apart from `hash % shards`. Tests that
kill or stop a process start it again before they end; `healthy` checks that they did.
Times are printed (run with -s), never asserted.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid

import pytest
from clickhouse_driver.errors import ServerException

from bench import clickhouse_cluster
from bench.clickhouse_cluster import ClickHouseCluster, Replica
from supervisor import embedded
from tests.integration.harness import replica_sql as run
from tests.integration.harness import wait_until
from workers.clickhouse.sharding import key_function, shard_of, slots_for

WEIGHTS = [1, 2]
COLUMNS = "(event_date Date, user_id String, uid UInt64, small Int8, seq UInt32)"
# ZooKeeper gone: 999 (Keeper exception, e.g. connection loss) or 225 (NO_ZOOKEEPER: the
# server has no session at all yet, seen under load) until the table notices, then 242 (the
# table is read-only).
ZOOKEEPER_DOWN_CODES = {999, 225, 242}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = time.monotonic()
    try:
        cluster = ClickHouseCluster.start(tmp_path_factory.mktemp("chcluster"), shards=2, replicas=2,
                                          weights=WEIGHTS)
    except embedded.ServerNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\ncluster up (ZooKeeper + 2x2 clickhouse-server) in {time.monotonic() - started:.2f}s")
    yield cluster
    started = time.monotonic()
    cluster.stop()
    print(f"\ncluster stopped in {time.monotonic() - started:.2f}s")
    assert not any(r.alive() for r in cluster.replicas) and not cluster.zookeeper.alive()


@pytest.fixture
def healthy(cluster):
    """The cluster, every process up as the test starts (the one before restarted what it stopped)."""
    assert cluster.zookeeper.alive() and all(r.alive() for r in cluster.replicas)
    return cluster



def create_tables(cluster: ClickHouseCluster, sharding_key: str = "rand()") -> tuple[str, str]:
    """A ReplicatedMergeTree table on every node and a Distributed table over it, ON CLUSTER."""
    local = f"t_{uuid.uuid4().hex[:10]}"
    name = cluster.cluster_name
    first = cluster.replicas[0]
    run(first, f"CREATE TABLE {local} ON CLUSTER {name} {COLUMNS} "
               f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/{local}', '{{replica}}') "
               "PARTITION BY toYYYYMM(event_date) ORDER BY (user_id, seq)")
    run(first, f"CREATE TABLE {local}_all ON CLUSTER {name} AS {local} "
               f"ENGINE = Distributed({name}, default, {local}, {sharding_key})")
    return local, f"{local}_all"


def make_rows(count: int, seed: int, first_seq: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    words = ["", "a", "é€", "user-" + "x" * 70, "ünïcode"]  # CityHash's length classes 0-16, 17-32, 33-64, >64
    return [(dt.date(2026, 12, 1) + dt.timedelta(days=rng.randrange(40)),
             f"{rng.choice(words)}{rng.getrandbits(40):x}",
             rng.getrandbits(64), rng.randrange(-128, 128), first_seq + i)
            for i in range(count)]


def sync_replicas(replicas: list[Replica], table: str) -> None:
    for replica in replicas:
        run(replica, f"SYSTEM SYNC REPLICA {table}")


def reads_zookeeper(replica: Replica) -> bool:
    try:
        return bool(run(replica, "SELECT count() FROM system.zookeeper WHERE path = '/'"))
    except ServerException:
        return False


def seqs(replica: Replica, table: str) -> list[int]:
    return sorted(seq for (seq,) in run(replica, f"SELECT seq FROM {table}"))


def test_a_missing_zookeeper_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(clickhouse_cluster, "ZOOKEEPER_JAR", tmp_path / "zookeeper.jar")
    with pytest.raises(embedded.ServerNotFoundError, match="apt-get install -y --no-install-recommends zookeeper"):
        ClickHouseCluster.start(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


# ------------------------------------------------------------------------- sharding


def test_hash_rules_match_the_server(healthy):
    """workers/clickhouse/sharding.py's cityHash64 equals the server's, type by type."""
    cases = [
        ("'abc'", "abc", "String"), ("''", "", "String"), ("'é€'", "é€", "String"),
        ("'" + "y" * 40 + "'", "y" * 40, "String"), ("'" + "z" * 100 + "'", "z" * 100, "String"),
        ("toFixedString('ab', 4)", "ab", "FixedString(4)"),
        ("toUInt64(42)", 42, "UInt64"), ("toUInt8(42)", 42, "UInt8"), ("toUInt32(42)", 42, "UInt32"),
        ("toUInt64(18446744073709551615)", 2**64 - 1, "UInt64"), ("toInt8(-1)", -1, "Int8"),
        ("toInt16(-300)", -300, "Int16"), ("toInt32(-7)", -7, "Int32"), ("toInt64(-5)", -5, "Int64"),
        ("toDate('2026-12-06')", dt.date(2026, 12, 6), "Date"),
        ("toDateTime('2026-12-06 07:08:09')", dt.datetime(2026, 12, 6, 7, 8, 9), "DateTime"),
    ]
    select = "SELECT " + ", ".join(f"cityHash64({sql})" for sql, _, _ in cases)
    server = run(healthy.replicas[0], select)[0]
    ours = tuple(key_function(column_type)(value) for _, value, column_type in cases)
    assert ours == server
    # The figures the facts file gives, so a drift in either is seen here.
    assert server[0] == 4220206313085259313 and server[6] == server[7] == server[8] == 11490350930367293593


@pytest.mark.parametrize("key_column, column_type, hashed", [
    ("user_id", "String", True),
    ("uid", "UInt64", True),
    ("small", "Int8", True),
    ("small", "Int8", False),  # a bare signed key: taken as unsigned of its width
])
def test_distributed_puts_each_row_where_the_rule_says(healthy, key_column, column_type, hashed):
    sharding_key = f"cityHash64({key_column})" if hashed else key_column
    local, distributed = create_tables(healthy, sharding_key)
    rows = make_rows(400, seed=sum(map(ord, sharding_key)))
    started = time.monotonic()
    run(healthy.replicas[0], f"INSERT INTO {distributed} VALUES", rows, insert_distributed_sync=1)
    print(f"\n{sharding_key}: 400 rows through Distributed (sync) in {time.monotonic() - started:.3f}s")
    sync_replicas(healthy.replicas, local)

    slots = slots_for(WEIGHTS)
    index = ["event_date", "user_id", "uid", "small", "seq"].index(key_column)
    expected = {i: sorted(r[4] for r in rows if shard_of(r[index], column_type, slots, hashed) == i)
                for i in range(len(healthy.shards))}
    assert sum(map(len, expected.values())) == 400 and all(expected.values())
    for i, shard in enumerate(healthy.shards):
        for replica in shard.replicas:
            assert seqs(replica, local) == expected[i], f"shard {shard.number} replica {replica.name}"


# ---------------------------------------------------------------------- replication


def test_a_block_sent_to_each_replica_of_a_shard_is_stored_once(healthy):
    local, _ = create_tables(healthy)
    r1, r2 = healthy.shards[0].replicas
    block = make_rows(100, seed=1)
    run(r1, f"INSERT INTO {local} VALUES", block)
    run(r2, f"INSERT INTO {local} VALUES", block)
    # The same rows in another order: unique sort keys, so the same part, dropped too.
    run(r1, f"INSERT INTO {local} VALUES", list(reversed(block)))
    sync_replicas([r1, r2], local)
    assert seqs(r1, local) == seqs(r2, local) == list(range(100))

    # The block spans two partitions (months) and dedup works per partition: a superset
    # block whose extra row is in December stores its December rows again, and drops its
    # January rows as a duplicate part.
    december = [r[4] for r in block if r[0].month == 12]
    assert 0 < len(december) < 100
    extra = (dt.date(2026, 12, 31), "extra", 1, 1, 100)
    run(r2, f"INSERT INTO {local} VALUES", block + [extra])
    sync_replicas([r1, r2], local)
    assert seqs(r1, local) == seqs(r2, local) == sorted([*range(101), *december])
    # insert_deduplicate=0 stores the same block again (control: dedup is what dropped it).
    run(r2, f"INSERT INTO {local} VALUES", block, insert_deduplicate=0)
    sync_replicas([r1, r2], local)
    assert seqs(r1, local) == seqs(r2, local) == sorted([*range(101), *december, *range(100)])


@pytest.mark.slow  # the sink's own replica kill (test_clickhouse_replicas) covers it in the default run
def test_kill_9_of_a_replica_the_other_takes_inserts_and_it_catches_up(healthy):
    local, _ = create_tables(healthy)
    victim, other = healthy.shards[0].replicas
    run(victim, f"INSERT INTO {local} VALUES", make_rows(50, seed=3))
    sync_replicas([other], local)

    victim.kill()
    killed = time.monotonic()
    for n in range(1, 4):
        run(other, f"INSERT INTO {local} VALUES", make_rows(50, seed=3 + n, first_seq=50 * n))
    print(f"\nreplica killed: 3 inserts into the other replica done {time.monotonic() - killed:.3f}s after")

    started = time.monotonic()
    victim.start()
    up = time.monotonic()
    # Restarted within the session timeout, it waits for its old ZooKeeper session to expire
    # ("appears to be already active") before it replicates again.
    wait_until(lambda: len(seqs(victim, local)) == 200, 60, "the restarted replica to catch up", interval=0.2)
    print(f"restarted in {up - started:.2f}s, caught up {time.monotonic() - up:.2f}s later")
    run(victim, f"INSERT INTO {local} VALUES", make_rows(50, seed=7, first_seq=200))
    sync_replicas([victim, other], local)
    assert seqs(victim, local) == seqs(other, local) == list(range(250))


@pytest.mark.slow  # the sink's ZooKeeper outage (test_clickhouse_replicas) covers it in the default run
def test_zookeeper_down_inserts_fail_with_known_codes_and_work_again_when_it_returns(healthy):
    local, _ = create_tables(healthy)
    r1, r2 = healthy.shards[0].replicas
    run(r1, f"INSERT INTO {local} VALUES", make_rows(50, seed=8))
    sync_replicas([r2], local)
    block = make_rows(50, seed=9, first_seq=50)  # one block, resent as a sink would

    healthy.zookeeper.stop()  # kill -9 does the same here: the kernel closes its sockets at once
    stopped = time.monotonic()
    codes: list[int] = []

    def insert_fails_read_only() -> bool:
        try:
            run(r1, f"INSERT INTO {local} VALUES", block)
        except ServerException as exc:
            codes.append(exc.code)
            return exc.code == 242
        raise AssertionError("an insert succeeded with ZooKeeper stopped")

    try:
        wait_until(insert_fails_read_only, 60, "code 242 (read-only table) on insert", interval=0.1)
        print(f"\nZooKeeper stopped: insert codes {sorted(set(codes))} ({len(codes)} tries), "
              f"read-only after {time.monotonic() - stopped:.2f}s")
        assert set(codes) <= ZOOKEEPER_DOWN_CODES, codes
        assert run(r2, f"SELECT count() FROM {local}") == [(50,)]  # reads still work
    finally:
        healthy.zookeeper.start()
    restarted = time.monotonic()

    def insert_works() -> bool:
        try:
            run(r1, f"INSERT INTO {local} VALUES", block)
        except ServerException as exc:
            assert exc.code in ZOOKEEPER_DOWN_CODES, exc
            return False
        return True

    wait_until(insert_works, 60, "inserts to work again after ZooKeeper's restart", interval=0.1)
    print(f"ZooKeeper started again: inserts work {time.monotonic() - restarted:.2f}s later")
    # Every replica's session is back before the next test (its DDL goes through all of them).
    wait_until(lambda: all(map(reads_zookeeper, healthy.replicas)), 60, "every replica to read ZooKeeper again")
    sync_replicas([r1, r2], local)
    assert seqs(r1, local) == seqs(r2, local) == list(range(100))
