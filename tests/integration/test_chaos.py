"""Faults under continuous load, each ending with exact accounting: every published
event_id is in ClickHouse (or the DLQ), duplicates counted, zero lost."""

from __future__ import annotations

import collections
import signal
import time

import pytest
import yaml

from tests.integration.harness import (
    Load,
    OwnClickHouse,
    OwnNats,
    Supervisor,
    all_once,
    pipeline_names,
    rows_flowing,
    sink_config,
    under_load,
)
from workers.topology import account_mapping

RATE = 3000.0


def _ownership_intervals(sup):
    """partition -> [(start_ts, end_ts, slot)] from the workers' own log lines."""
    spans = collections.defaultdict(list)
    open_ = {}
    for line in sup.lines():
        msg = str(line.get("msg", ""))
        if msg.startswith("acquired partition "):
            key = (line["partition"], line["slot"])
            open_[key] = line["ts"]
        elif msg.startswith("released partition "):
            key = (line["partition"], line["slot"])
            spans[key[0]].append((open_.pop(key), line["ts"], key[1]))
    for (part, slot), start in open_.items():
        spans[part].append((start, "9999", slot))
    return spans


def _assert_never_two_owners(sup):
    for part, intervals in _ownership_intervals(sup).items():
        intervals.sort()
        for (_s1, e1, slot1), (s2, _e2, slot2) in zip(intervals, intervals[1:], strict=False):
            assert s2 >= e1, f"partition {part}: slot {slot2} acquired at {s2} before slot {slot1} released at {e1}"


# Both layouts; stream_per_partition's runs are behind the slow marker (the suite's budget):
# `python3 -m pytest -m slow tests/integration/test_chaos.py`.
BOTH_LAYOUTS = pytest.mark.parametrize(
    "layout", ["single_stream", pytest.param("stream_per_partition", marks=pytest.mark.slow)])


@BOTH_LAYOUTS
def test_resize_by_hup_and_signals_during_load(tmp_path, layout_nats, clickhouse_server, clickhouse_client,
                                               ch_database):
    names, prefix = pipeline_names("ch")
    nats_url = layout_nats.url
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=8, workers=2,
                      pipeline=layout_nats.pipeline(names["subject"], 8), **names)
    total = 45_000
    with under_load(cfg, tmp_path / "sink.log", nats_url, prefix, total, RATE, 8) as (sup, load):
        def set_workers(n):
            data = yaml.safe_load(cfg.read_text())
            data["workers"] = n
            cfg.write_text(yaml.safe_dump(data, sort_keys=False))
            sup.proc.send_signal(signal.SIGHUP)

        sup.wait(lambda: load.published > 5000, 60, "load under way")
        set_workers(3)
        sup.wait(
            lambda: any(w["slot"] == 2 and w["partitions"] for w in sup.workers()), 60, "worker 2 owning partitions"
        )

        sup.proc.send_signal(signal.SIGTTOU)
        sup.wait(lambda: [w["slot"] for w in sup.workers()] == [0, 1], 60, "worker 2 retired after SIGTTOU")

        set_workers(1)
        sup.wait(lambda: [w["slot"] for w in sup.workers()] == [0], 60, "worker 1 retired after HUP to 1")
        assert load.join_checked(120) == total
        lost, duplicates = all_once(sup, clickhouse_client, ch_database, total)
        assert lost == 0
        # A resize hands partitions over after a flush and ack: nothing is read twice.
        assert duplicates == 0
        _assert_never_two_owners(sup)
        assert len(sup.logged("acquired partition")) > 8  # partitions really moved
        assert sup.terminate() == 0


def test_hup_with_a_bad_config_keeps_running(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    names, prefix = pipeline_names("ch")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=2, workers=1, **names)
    good = cfg.read_text()
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(2)
        cfg.write_text(good.replace("workers: 1", "workers: many"))
        sup.proc.send_signal(signal.SIGHUP)
        line = sup.wait(lambda: sup.logged("is invalid, keeping the running config"), 30, "reload refused")
        assert "workers" in line[0]["msg"]
        load = Load(nats_url, prefix, 0, 2000, RATE)
        load.start()
        assert load.join_checked(60) == 2000
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_term_during_load_then_restart(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    names, prefix = pipeline_names("ch")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=4, workers=2, **names)
    total = 30_000
    sup = Supervisor(cfg, tmp_path / "sink1.log")
    load = Load(nats_url, prefix, 0, total, RATE)
    try:
        sup.wait_acquired(4)
        load.start()
        rows_flowing(sup, clickhouse_client, ch_database)
        assert sup.terminate() == 0
        assert sup.logged("all workers drained")
    finally:
        sup.close()
    sup = Supervisor(cfg, tmp_path / "sink2.log")
    try:
        sup.wait_acquired(4)
        assert load.join_checked(120) == total
        lost, duplicates = all_once(sup, clickhouse_client, ch_database, total)
        assert lost == 0
        assert duplicates == 0  # a drain acks everything it inserted
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_clickhouse_down_for_10s(tmp_path, nats_url):
    with OwnClickHouse(tmp_path, "chaos") as ch:
        names, prefix = pipeline_names("ch")
        cfg = sink_config(tmp_path, nats_url, ch.port, "chaos", partitions=4, workers=2, **names)
        total = 40_000
        with under_load(cfg, tmp_path / "sink.log", nats_url, prefix, total, RATE, 4) as (sup, load):
            rows_flowing(sup, ch.client, "chaos")
            ch.stop()
            sup.wait(lambda: sup.logged("retrying"), 30, "workers noticing the outage")
            time.sleep(10)  # the outage itself: ClickHouse stays down this long
            ch.start()
            assert load.join_checked(120) == total
            lost, duplicates = all_once(sup, ch.client, "chaos", total)
            assert lost == 0
            print(f"clickhouse outage: {total} events, {duplicates} duplicates")
            assert sup.terminate() == 0


@BOTH_LAYOUTS
def test_nats_server_restart(tmp_path, layout, clickhouse_server, clickhouse_client, ch_database):
    names, prefix = pipeline_names("ch")
    mappings = dict([account_mapping(names["subject"], 4)]) if layout == "stream_per_partition" else None
    with OwnNats(tmp_path, mappings) as nats_server:
        url = nats_server.url
        cfg = sink_config(tmp_path, url, clickhouse_server.port, ch_database, partitions=4, workers=2,
                          pipeline={"layout": layout}, **names)
        total = 30_000
        with under_load(cfg, tmp_path / "sink.log", url, prefix, total, RATE, 4) as (sup, load):
            rows_flowing(sup, clickhouse_client, ch_database)
            nats_server.stop()
            nats_server.start()
            assert load.join_checked(120) == total
            lost, duplicates = all_once(sup, clickhouse_client, ch_database, total)
            assert lost == 0
            print(f"nats restart: {total} events, {duplicates} duplicates, {load.errors} publish retries")
            assert sup.terminate() == 0


def test_rows_the_server_refuses_are_isolated_and_dead_lettered(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    """ClickHouse itself refuses a row (a DEFAULT that cannot be computed for it): the
    batch is split, only that row goes to the DLQ, every other row is inserted once."""
    import nats
    import orjson

    from tests.integration.harness import run

    names, prefix = pipeline_names("ch")
    table = (
        f"CREATE TABLE {ch_database}.events (event_id String, day_text String, day Date DEFAULT toDate(day_text)) "
        "ENGINE = MergeTree() ORDER BY event_id"
    )
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=1, workers=1, max_rows=500, max_wait_ms=500,
        pipeline={"create_table": table, "columns": {"event_id": {"required": True}}}, **names,
    )
    bad = {17, 250, 251, 499}
    bodies = [
        orjson.dumps({"event_id": f"e{i:012d}", "day_text": "not a date" if i in bad else "2026-11-26"})
        for i in range(500)
    ]

    async def publish_all():
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        for b in bodies:
            await js.publish(f"{prefix}.k", b)
        await nc.close()

    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(1)
        run(publish_all())
        sup.wait(
            lambda: clickhouse_client.execute(f"SELECT count() FROM {ch_database}.events")[0][0] >= 500 - len(bad),
            60,
            "good rows",
        )
        sup.wait(lambda: len(sup.logged("ClickHouse refused")) >= len(bad), 60, "refused rows logged")
        rows, distinct = clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.events")[0]
        assert (rows, distinct) == (500 - len(bad), 500 - len(bad))
        refused = sorted(int(e["msg"].split(" seq ")[1].split(",")[0]) for e in sup.logged("ClickHouse refused"))
        assert refused == sorted(i + 1 for i in bad)  # stream seq = index + 1
        assert sup.terminate() == 0
    finally:
        sup.close()
