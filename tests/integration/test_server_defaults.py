"""Columns whose DEFAULT the server computes per row (issue 23), on the real 18.16 server.

A message that sends such a field has its value stored; one that omits it gets what the
server computes for that row; the batch is inserted in groups by the columns its rows
omit, nothing is dead-lettered, nothing lost or stored twice.
"""

from __future__ import annotations

import orjson

from tests.integration.harness import fed, pipeline_names, sink_config


def test_a_default_of_other_columns_takes_the_value_sent_or_is_computed_for_the_row(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database,
):
    db, n = ch_database, 600
    names, prefix = pipeline_names("sd")
    clickhouse_client.execute(
        f"CREATE TABLE {db}.d (id UInt32, ts DateTime, day Date DEFAULT toDate(ts), "
        "label String DEFAULT concat('n', toString(id)), seen DateTime DEFAULT now()) "
        "ENGINE = MergeTree() ORDER BY id")
    config = sink_config(tmp_path, nats_url, clickhouse_server.port, db, partitions=2, workers=1,
                         pipeline={"table": "d", "create_table": None, "columns": {}}, **names)

    def event(i: int) -> dict:
        e = {"id": i, "ts": 1_700_000_000 + i * 3600}
        if i % 3 == 1:
            e["day"] = "2001-02-03"
        if i % 4 == 2:
            e["label"] = f"sent{i}"
        return e

    msgs = [(f"{prefix}.k{i % 5}", orjson.dumps(event(i)), None) for i in range(n)]
    with fed(config, tmp_path / "sink.log", nats_url, names["stream"], msgs, partitions=2) as sup:
        sup.wait(lambda: clickhouse_client.execute(f"SELECT count() FROM {db}.d")[0][0] >= n, 60, "every row")
        assert not sup.logged("dead-lettered")
        assert sup.terminate() == 0
    rows = clickhouse_client.execute(
        f"SELECT id, toString(day), toString(toDate(ts)), label, seen > toDateTime('2020-01-01 00:00:00') FROM {db}.d")
    assert len(rows) == len({r[0] for r in rows}) == n
    for i, day, ts_day, label, seen in rows:
        assert day == ("2001-02-03" if i % 3 == 1 else ts_day)
        assert label == (f"sent{i}" if i % 4 == 2 else f"n{i}")
        assert seen == 1  # now(), by the server, for every row (none sends it)
