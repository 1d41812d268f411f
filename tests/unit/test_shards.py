"""workers/clickhouse/shards.py without servers: which shard parts of an insert are sent, and which are
not sent again when the same batch is retried (after a shard failed, split around refused rows, or
mapped again).  The clients are clickhouse-driver's, never connected: `send` stands in for the insert
(tests/integration/test_clickhouse_shards.py sends them to a real cluster)."""

from __future__ import annotations

import pytest
from clickhouse_driver.errors import NetworkError, ServerException

from workers.clickhouse import faults, indoubt
from workers.clickhouse.shards import Shards
from workers.settings import ClickHouseConfig, ShardConfig

NAMES = ("event_id", "n")


def cluster() -> Shards:
    cfg = ClickHouseConfig(shards_items=(ShardConfig(("a:9000", "b:9000")), ShardConfig(("c:9000",), weight=2)))
    return Shards(cfg)


class Inserts:
    """send(client, part): records (host, query_id, rows) and fails for the hosts in `down`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, list]] = []
        self.down: set[str] = set()
        self.refuse: set[int] = set()  # values of `n` the server refuses (a row fault)

    def __call__(self, client, part):
        host = client.connection.hosts[0][0]  # never connected: where it would connect
        ident = indoubt.current.get()
        if host in self.down:
            raise NetworkError(f"Connection refused ({host}:9000)")
        if any(v in self.refuse for v in part[1]):
            raise ServerException("Cannot parse", code=27)
        self.sent.append((host, ident and ident.query_id, list(part[1])))
        return len(part[0])

    def rows(self, host: str | None = None) -> list[int]:
        return sorted(v for h, _, rows in self.sent if host in (None, h) for v in rows)


def columns(n: int) -> list[list]:
    return [[f"e{i}" for i in range(n)], list(range(n))]


def test_each_row_goes_to_one_shard_and_the_split_is_the_same_on_a_resend():
    shards, send = cluster(), Inserts()
    ident = indoubt.identity("p", 0, 1, 300, 7, tokens=False)
    indoubt.run_as(ident, shards.insert, "t", "db", "rand()", NAMES, columns(300), send)
    assert send.rows() == list(range(300))
    first = {h: rows for h, _, rows in send.sent}
    assert set(first) == {"a", "c"} and 40 < len(first["a"]) < 160  # weights 1 and 2
    assert {q for _, q, _ in send.sent} == {ident.query_id + "-s0", ident.query_id + "-s1"}
    again, send2 = cluster(), Inserts()  # another process: nothing remembered, the same split
    indoubt.run_as(ident, again.insert, "t", "db", "rand()", NAMES, columns(300), send2)
    assert {h: rows for h, _, rows in send2.sent} == first


def test_a_shard_that_is_down_holds_only_its_part_and_the_retry_sends_only_that():
    shards, send = cluster(), Inserts()
    ident = indoubt.identity("p", 0, 1, 100, 7, tokens=False)
    send.down = {"c"}
    with pytest.raises(NetworkError):
        indoubt.run_as(ident, shards.insert, "t", "db", "rand()", NAMES, columns(100), send)
    stored_first = send.rows("a")
    assert stored_first and send.rows("c") == []
    assert shards.view()["waiting"] == [0, 1]
    send.down = set()
    indoubt.run_as(ident, shards.insert, "t", "db", "rand()", NAMES, columns(100), send)
    assert send.rows() == list(range(100))  # shard 1's part was not sent again
    assert send.rows("a") == stored_first
    assert shards.view()["waiting"] == [0, 0]


def test_parts_of_a_split_around_refused_rows_skip_what_is_stored():
    """faults.isolate_bad_rows bisects the batch after shard 1 refused a row; shard 2's part was stored
    by the first attempt and none of its rows is sent again."""
    shards, send = cluster(), Inserts()
    ident = indoubt.identity("p", 0, 1, 8, 7, tokens=False)
    send.refuse = {5}

    def insert(cols):
        return shards.insert("t", "db", "rand()", NAMES, cols, send)

    refused = indoubt.run_as(ident, faults.isolate_bad_rows, insert, columns(8), 8)
    assert [i for i, _ in refused] == [5]
    assert send.rows() == [0, 1, 2, 3, 4, 6, 7]  # every row but the refused one, each once


def test_rows_mapped_again_skip_the_shard_parts_stored_before_the_change():
    shards, send = cluster(), Inserts()
    shards._types[("db", "t", "n")] = "UInt64"  # as system.columns gives it (a bare integer key: n % 3)
    ident = indoubt.identity("p", 0, 1, 50, 7, tokens=False)
    send.down = {"c"}
    with pytest.raises(NetworkError):
        indoubt.run_as(ident, shards.insert, "t", "db", "n", NAMES, columns(50), send)
    assert send.rows() == [n for n in range(50) if n % 3 == 0]
    send.down = set()
    # The table changed under the batch: its rows, mapped again, come numbered anew under a remap identity.
    indoubt.run_as(ident.remapped(1), shards.insert, "t", "db", "n", NAMES, columns(50), send)
    assert send.rows() == list(range(50))  # shard 1's part was not sent again


def test_no_sharding_key_with_several_shards_is_an_error_naming_the_table():
    from workers.clickhouse.faults import TableUnusable

    with pytest.raises(TableUnusable, match="table t has no sharding_key"):
        cluster().insert("t", "db", None, NAMES, columns(3), Inserts())
