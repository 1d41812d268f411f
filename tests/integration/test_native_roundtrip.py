"""workers/clickhouse/native.py against a real server: what the fast column writers send reads back equal."""

from __future__ import annotations

import random
from uuid import UUID

from workers.clickhouse import native


def test_fast_writers_round_trip(clickhouse_client, ch_database):
    was_installed = native.installed()
    assert native.install()
    try:
        rng = random.Random(20240611)
        n = 300
        ids = list(range(n))
        uuids = [UUID(int=rng.getrandbits(128)) for _ in ids]
        epochs = [rng.randrange(0, 2**32) for _ in ids]
        tags = [[rng.choice(["a", "bb", "", "ccc", "é"]) for _ in range(rng.randrange(4))] for _ in ids]
        nested = [[[rng.randrange(256) for _ in range(rng.randrange(3))] for _ in range(rng.randrange(3))] for _ in ids]
        countries = [rng.choice(["DE", "FR", "US", "JP"]) for _ in ids]
        maybe = [None if i % 3 == 0 else UUID(int=rng.getrandbits(128)) for i in ids]
        table = f"{ch_database}.native"
        clickhouse_client.execute(
            f"CREATE TABLE {table} (id UInt32, u UUID, ts DateTime, ts_utc DateTime('UTC'), tags Array(String), "
            "nested Array(Array(UInt8)), cc FixedString(2), nu Nullable(UUID)) ENGINE = Memory"
        )
        columns = [ids, uuids, epochs, list(epochs), tags, nested, countries, maybe]
        # As workers/clickhouse/sink.py inserts; copies, since the driver rewrites UUID lists in place.
        clickhouse_client.execute(
            f"INSERT INTO {table} VALUES", [list(c) for c in columns], columnar=True, types_check=False
        )
        got = clickhouse_client.execute(
            f"SELECT id, u, toUInt32(ts), toUInt32(ts_utc), tags, nested, cc, nu FROM {table} ORDER BY id",
            columnar=True,
        )
        assert [list(c) for c in got] == columns
    finally:
        if not was_installed:
            native.uninstall()
