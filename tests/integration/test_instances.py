"""Several supervisors (instances) sharing one pipeline's partitions through NATS: membership, balance,
hand-over, failure of a whole instance. Each instance is a real `python -m supervisor` with its own
instance_id, state_dir and admin port, as on separate hosts.  Each test runs on both stream layouts
(tests/conftest.py's `layout`); stream_per_partition's runs under load are behind the slow marker (the
suite's budget: ~30 s each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import nats
import pytest

from tests.integration.harness import REPO, Load, Supervisor, pipeline_names, run, sink_config
from workers.topology import consumer_name

PARTITIONS = 8

# Both layouts; stream_per_partition's runs under load behind the slow marker (`python3 -m pytest -m slow`).
SLOW_ON_PARTITION_STREAMS = pytest.mark.parametrize(
    "layout", ["single_stream", pytest.param("stream_per_partition", marks=pytest.mark.slow)], indirect=True)


def _names(layout_nats) -> tuple[dict, str]:
    """A fresh pipeline's names and publish prefix; its `layout` (with stream_per_partition, the account's
    mapping of its subject added first) in names["pipeline"]."""
    names, prefix = pipeline_names("ev")
    return {**names, "pipeline": layout_nats.pipeline(names["subject"], PARTITIONS)}, prefix


def _instance(tmp_path: Path, name: str, nats_url: str, ch_port: int, db: str, names: dict, workers: int = 1):
    home = tmp_path / name
    home.mkdir()
    cfg = sink_config(home, nats_url, ch_port, db, partitions=PARTITIONS, workers=workers, max_rows=2000,
                      ack_wait_s=3, instance_id=name, **names)
    return Supervisor(cfg, home / "sink.log")


def _owned(sup: Supervisor) -> set[str]:
    return {p for w in sup.workers() if w["ready"] for p in w["partitions"]}


def _inserted(sup: Supervisor) -> dict[str, int]:
    """Rows inserted per partition by the instance's current workers, from /status."""
    return {p: s.get("inserted", 0) for w in sup.workers() for p, s in (w.get("stats") or {}).items()}


def _distinct(client, db) -> int:
    return client.execute(f"SELECT uniqExact(event_id) FROM {db}.events")[0][0]


def _pins(*sups: Supervisor) -> dict[int, list[tuple[int, int | None, str]]]:
    """Per partition, every pin a worker held: (first consumer seq, last consumer seq or None, pin), from the logs."""
    spans: dict[tuple[int, str], list] = {}
    for sup in sups:
        for line in sup.lines():
            pin = line.get("pin")
            if pin is None:
                continue
            key = (int(line["partition"]), pin)
            if "last_consumer_seq" in line:
                spans[key] = [line["first_consumer_seq"], line["last_consumer_seq"]]
            else:
                spans.setdefault(key, [line["first_consumer_seq"], None])
    out: dict[int, list] = defaultdict(list)
    for (partition, pin), (first, last) in spans.items():
        out[partition].append((first, last, pin))
    return {p: sorted(v) for p, v in out.items()}


def _assert_one_owner_at_a_time(pins: dict[int, list]) -> None:
    """A partition's consumer numbers its deliveries; two owners at once would interleave their ranges."""
    for partition, spans in pins.items():
        for (first, last, pin), (next_first, _, next_pin) in zip(spans, spans[1:], strict=False):
            assert last is not None and last < next_first, (
                f"partition {partition}: pin {pin} delivered {first}..{last}, pin {next_pin} from {next_first}")


async def _server_pins(layout_nats, stream: str, pipeline: str) -> dict[int, str | None]:
    """The consumers' own record: the pin each one's priority group holds now (each consumer on its
    partition's stream: the pipeline's, or with stream_per_partition its own)."""
    nc = await nats.connect(layout_nats.url)
    try:
        out = {}
        for i in range(PARTITIONS):
            reply = await nc.request(
                f"$JS.API.CONSUMER.INFO.{layout_nats.stream_of(stream, i)}.{consumer_name(pipeline, i)}", b"")
            groups = json.loads(reply.data).get("priority_groups") or [{}]
            out[i] = groups[0].get("pinned_client_id")
        return out
    finally:
        await nc.close()


@SLOW_ON_PARTITION_STREAMS
def test_instances_share_partitions_and_hand_them_over_one_owner_at_a_time(
        tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database):
    nats_url = layout_nats.url
    pipeline, prefix = _names(layout_nats)
    a = _instance(tmp_path, "a", nats_url, clickhouse_server.port, ch_database, pipeline)
    b = c = None
    try:
        a.wait_acquired(PARTITIONS)
        load = Load(nats_url, prefix, 0, 30_000, rate=3000)
        load.start()
        b = _instance(tmp_path, "b", nats_url, clickhouse_server.port, ch_database, pipeline)
        both = lambda: len(_owned(a)) == 4 and len(_owned(b)) == 4 and not _owned(a) & _owned(b)  # noqa: E731
        b.wait(both, 60, "a and b to own 4 partitions each")
        # Everyone's status shows the whole cluster.
        members = {m["instance_id"] for m in a.status()["instances"]}
        assert members == {"a", "b"}
        c = _instance(tmp_path, "c", nats_url, clickhouse_server.port, ch_database, pipeline)
        c.wait(lambda: sorted(len(_owned(s)) for s in (a, b, c)) == [2, 3, 3], 60, "8 partitions over 3 instances")
        assert c.terminate() == 0  # a clean leave: its key goes at once, its partitions move back
        b.wait(lambda: len(_owned(a)) == 4 and len(_owned(b)) == 4, 60, "a and b to take c's share")
        published = load.join_checked(120)
        a.wait(lambda: _distinct(clickhouse_client, ch_database) >= published, 120, "every event in ClickHouse")
        assert _distinct(clickhouse_client, ch_database) == published
        rows = clickhouse_client.execute(f"SELECT count() FROM {ch_database}.events")[0][0]
        print(f"3 instances, 2 hand-overs under load: {published} events, {rows} rows")
        assert rows == published  # exactly once across hand-overs
        # From the workers' records (pins held, with their consumer-sequence ranges) and the
        # servers' (the pin each consumer holds now): one owner at a time.
        assert b.terminate() == 0
        a.wait(lambda: len(_owned(a)) == PARTITIONS, 60, "a to own everything")
        # A pin is given with a delivery: traffic on every partition after the last hand-over.
        more = Load(nats_url, prefix, published, 640, rate=2000, keys=64)
        more.start()
        published += more.join_checked(60)
        a.wait(lambda: _distinct(clickhouse_client, ch_database) >= published, 60, "the last events")
        pins = _pins(a, b, c)
        assert len(pins) == PARTITIONS and sum(len(v) for v in pins.values()) > PARTITIONS
        _assert_one_owner_at_a_time(pins)
        now = a.wait(lambda: (lambda p: p if all(p.values()) else None)(
            run(_server_pins(layout_nats, pipeline["stream"], pipeline["name"]))), 30, "every consumer pinned")
        for partition, spans in pins.items():
            assert spans[-1][1] is None and spans[-1][2] == now[partition]  # the one open pin is the server's
        assert a.terminate() == 0
    finally:
        for s in (a, b, c):
            if s is not None:
                s.close()


@SLOW_ON_PARTITION_STREAMS
def test_kill_9_of_a_whole_instance_under_load_loses_nothing(
        tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database):
    nats_url = layout_nats.url
    pipeline, prefix = _names(layout_nats)
    a = _instance(tmp_path, "a", nats_url, clickhouse_server.port, ch_database, pipeline)
    b = _instance(tmp_path, "b", nats_url, clickhouse_server.port, ch_database, pipeline)
    try:
        b.wait(lambda: len(_owned(a)) == 4 and len(_owned(b)) == 4, 90, "a and b to own 4 partitions each")
        load = Load(nats_url, prefix, 0, 40_000, rate=4000)
        load.start()
        a.wait(lambda: _distinct(clickhouse_client, ch_database) > 2000, 60, "rows flowing")
        taken = _owned(b)
        victims = [b.proc.pid, *b.worker_pids().values()]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        b.proc.wait()
        a.wait(lambda: len(_owned(a)) == PARTITIONS, 60, "a to take b's partitions")
        took = time.monotonic() - killed_at
        # Inserts resume on b's former partitions: a's new runners for them insert rows.
        a.wait(lambda: all(_inserted(a).get(p, 0) > 0 for p in taken), 60, "inserts on b's partitions")
        resumed = time.monotonic() - killed_at
        published = load.join_checked(180)
        a.wait(lambda: _distinct(clickhouse_client, ch_database) >= published, 180, "every event in ClickHouse")
        rows, distinct = clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.events")[0]
        assert distinct == published
        print(f"kill -9 of instance b: a owned all partitions {took:.1f}s after, inserted on them {resumed:.1f}s "
              f"after; {published} events, {rows} rows ({rows - distinct} duplicates)")
        assert rows == distinct  # the survivor's takeover stores nothing twice (commit state in KV)
        assert a.terminate() == 0
    finally:
        a.close()
        b.close()


def test_check_rejects_an_instance_id_that_is_live(tmp_path, layout_nats, clickhouse_server, ch_database):
    pipeline, _ = _names(layout_nats)
    a = _instance(tmp_path, "a", layout_nats.url, clickhouse_server.port, ch_database, pipeline)
    try:
        a.wait_acquired(PARTITIONS)
        check = subprocess.run([sys.executable, "-m", "supervisor", "check", "--config", str(a.config), "--connect"],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
        assert check.returncode != 0 and "instance_id 'a' is live" in check.stderr
        assert a.terminate() == 0
        # Gone at once after a clean stop.
        check = subprocess.run([sys.executable, "-m", "supervisor", "check", "--config", str(a.config), "--connect"],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        # stream_per_partition: the account's mapping checked by provisioning's probes (tests/integration/
        # test_check_connect.py); single_stream has none to check.
        assert ("mapping verified by" in check.stdout) == layout_nats.per_partition, check.stdout
    finally:
        a.close()
