"""End to end: real nats-server, real clickhouse-server, the real supervisor and workers."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys

import nats
import orjson
import yaml

from bench.events import event_messages, make_event, publish
from tests.integration.harness import REPO, Supervisor, pipeline_names, publish_events, run, sink_config, wait_until
from workers.topology import PRIORITY_GROUP, consumer_name

N_EVENTS = 100_000


async def _pending(nats_url, stream, name, partitions):
    """(unacked, undelivered) per partition consumer."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        out = []
        for p in range(partitions):
            info = await js.consumer_info(stream, consumer_name(name, p))
            out.append((info.num_ack_pending, info.num_pending))
        return out
    finally:
        await nc.close()


async def _pin_id(nats_url, stream, consumer):
    """The id of the consumer's current pin (priority group PRIORITY_GROUP), or None."""
    nc = await nats.connect(nats_url)
    try:
        info = orjson.loads((await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"")).data)
        groups = [g for g in info.get("priority_groups") or () if g.get("group") == PRIORITY_GROUP]
        return groups[0].get("pinned_client_id") if groups else None
    finally:
        await nc.close()


def _count(client, db, where="1"):
    return client.execute(f"SELECT count() FROM {db}.events WHERE {where}")[0][0]


def test_100k_events_arrive_exactly_with_matching_values(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("ev")
    name, stream = names["name"], names["stream"]
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=8, workers=2, **names)
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(8)
        result = publish_events(nats_url, event_messages(0, N_EVENTS, prefix=prefix, keys=16), stream)
        assert result.published == N_EVENTS
        sup.wait(lambda: _count(clickhouse_client, ch_database) >= N_EVENTS, 180, f"{N_EVENTS} rows")

        # Exactly once each: nothing lost, nothing doubled in a clean run.
        rows, distinct = clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.events")[0]
        assert (rows, distinct) == (N_EVENTS, N_EVENTS)

        # Field by field on a sample.
        sample = [0, 1, 7, 4242, 55_555, N_EVENTS - 1]
        got = clickhouse_client.execute(
            "SELECT event_id, toUnixTimestamp(ts), user_id, kind, amount, country, tags, toString(session_id), "
            "payload "
            f"FROM {ch_database}.events WHERE event_id IN %(ids)s ORDER BY event_id",
            {"ids": tuple(f"e{i:012d}" for i in sample)},
        )
        assert len(got) == len(sample)
        for i, row in zip(sample, got, strict=False):
            ev = make_event(i)
            from datetime import datetime

            expected_ts = int(datetime.fromisoformat(ev["ts"].replace("Z", "+00:00")).timestamp())
            assert row == (
                ev["event_id"],
                expected_ts,
                ev["user"]["id"],
                ev["kind"],
                ev["amount"],
                ev["country"],
                ev["tags"],
                ev["session_id"],
                ev["payload"],
            )

        # Each partition was consumed by exactly one worker.
        owners = collections.defaultdict(set)
        for line in sup.logged("acquired partition"):
            owners[line["partition"]].add(line["slot"])
        assert sorted(owners) == list(range(8))
        assert all(len(slots) == 1 for slots in owners.values()), owners
        assert {s for slots in owners.values() for s in slots} == {0, 1}

        assert sup.terminate() == 0
        assert sup.logged("all workers drained")
    finally:
        sup.close()

    # After a clean drain every message is acked.
    assert run(_pending(nats_url, stream, name, 8)) == [(0, 0)] * 8


def test_bad_messages_go_to_the_dlq_and_good_ones_are_inserted(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("ev")
    name, stream = names["name"], names["stream"]
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=4, workers=2, **names)
    good = [(f"{prefix}.k{i % 8}", orjson.dumps(make_event(i)), None) for i in range(2000)]
    bad_specs = {
        "invalid_json": b'{"event_id": "bad-1", ',
        "wrong_type": orjson.dumps({**make_event(10_001), "event_id": "bad-2", "amount": True}),
        "missing_required": orjson.dumps(
            {k: v for k, v in make_event(10_002).items() if k != "user"} | {"event_id": "bad-3"}
        ),
        "out_of_range": orjson.dumps({**make_event(10_003), "event_id": "bad-4", "user": {"id": -5}}),
        "invalid_value": orjson.dumps({**make_event(10_004), "event_id": "bad-5", "session_id": "not-a-uuid"}),
    }
    msgs = list(good)
    bad_subjects = {}
    for j, (reason, body) in enumerate(bad_specs.items()):
        subj = f"{prefix}.bad{j}"
        bad_subjects[reason] = subj
        msgs.insert(
            300 * (j + 1), (subj, body, {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        )

    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(4)
        assert publish_events(nats_url, msgs, stream).published == len(msgs)
        sup.wait(lambda: _count(clickhouse_client, ch_database) >= len(good), 120, "good rows")

        async def dead_letters():
            nc = await nats.connect(nats_url)
            try:
                js = nc.jetstream()
                info = await js.stream_info(f"{stream}_DLQ")
                letters = []
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    letters.append(await js.get_msg(f"{stream}_DLQ", seq))
                return letters
            finally:
                await nc.close()

        letters = wait_until(
            lambda: (ls := run(dead_letters())) and len(ls) >= len(bad_specs) and ls, 60, "dead letters"
        )
        assert len(letters) == len(bad_specs)
        by_reason = {m.headers["Jetsink-Reason"]: m for m in letters}
        assert set(by_reason) == set(bad_specs)
        for reason, body in bad_specs.items():
            m = by_reason[reason]
            assert m.data == body  # original bytes
            stored_subject = m.headers["Jetsink-Subject"]
            # The stream stored it under its partition: <prefix>.<p>.<key>
            assert stored_subject.startswith(prefix + ".") and stored_subject.endswith(
                "." + bad_subjects[reason].split(".")[-1]
            )
            assert int(m.headers["Jetsink-Stream-Seq"]) > 0
            assert m.headers["Jetsink-Pipeline"] == name
            assert m.headers["Jetsink-Worker"] in ("0", "1")
            assert m.headers["Jetsink-Error"]
            assert m.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c")
        assert _count(clickhouse_client, ch_database) == len(good)
        assert _count(clickhouse_client, ch_database, "event_id LIKE 'bad-%'") == 0
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_kill_9_of_a_worker_mid_stream_loses_nothing(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, prefix = pipeline_names("ev")
    name, stream = names["name"], names["stream"]
    # at_least_once: its replacement waits for the redeliveries (exactly_once reads them from
    # the stream instead: tests/integration/test_exactly_once.py).
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=8, workers=2, max_rows=2000, ack_wait_s=3,
        pipeline={"delivery": "at_least_once"}, **names,
    )
    total = 60_000
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(8)
        assert publish_events(nats_url, event_messages(0, total // 2, prefix=prefix), stream).published == total // 2
        # Kill worker 0 mid-stream: some rows inserted, and deliveries in its hands
        # unacked (what its replacement must not ack before they are stored).
        sup.wait(lambda: _count(clickhouse_client, ch_database) > 0, 60, "first rows")
        owned = [int(p.rpartition("/")[2]) for w in sup.workers() if w["slot"] == 0 for p in w["partitions"]]
        assert owned

        def victim_holds_deliveries():
            pending = run(_pending(nats_url, stream, name, 8))
            return any(pending[p][0] > 0 for p in owned)

        victim = sup.worker_pids()[0]  # asked first: the kill follows the check at once
        sup.wait(victim_holds_deliveries, 60, "worker 0 to hold unacked deliveries")
        os.kill(victim, signal.SIGKILL)
        assert (
            publish_events(nats_url, event_messages(total // 2, total - total // 2, prefix=prefix), stream).published
            == total - total // 2
        )
        sup.wait(lambda: sup.worker_pids().get(0) not in (None, victim), 60, "the killed worker to be replaced")
        sup.wait(
            lambda: clickhouse_client.execute(f"SELECT uniqExact(event_id) FROM {ch_database}.events")[0][0] >= total,
            180, "every event_id",
        )
        rows, distinct = clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.events")[0]
        assert distinct == total
        duplicates = rows - distinct
        print(f"kill -9: {total} events, {rows} rows, {duplicates} duplicates")
        assert sup.logged("died")
        # The replacement found the dead worker's deliveries unacked and held its own acks
        # (one AckAll would have settled them unstored) until they came back and were
        # stored; then every partition acks again and nothing is left unacked.
        held = sup.logged("holding acks until they are redelivered and stored")
        assert held
        sup.wait(lambda: len(sup.logged("acking per batch again")) >= len(held), 120, "held partitions to ack again")
        sup.wait(lambda: run(_pending(nats_url, stream, name, 8)) == [(0, 0)] * 8, 60, "nothing unacked")
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_bad_config_exits_non_zero_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((REPO / "config.yaml").read_text().replace("max_rows: 10000", "max_rows: ten"))
    for argv in (["check", "--config", str(cfg)], ["--config", str(cfg)]):
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2
        assert "pipelines[0].batch.max_rows" in proc.stderr
        assert "ten" in proc.stderr


def test_check_connect_reports_table_and_servers(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    names, _ = pipeline_names("ev")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, **names)
    clickhouse_client.execute(
        f"CREATE TABLE {ch_database}.events (event_id String, ts DateTime, user_id UInt64, kind String, "
        "amount Float64, "
        f"country FixedString(2), tags Array(String), session_id UUID, payload String) ENGINE = MergeTree() ORDER BY ts"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "check", "--config", str(cfg), "--connect"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "event_id" in proc.stdout

    data = yaml.safe_load(cfg.read_text())
    data["pipelines"][0]["columns"]["nosuch"] = {"required": True}
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "check", "--config", str(cfg), "--connect"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "nosuch" in proc.stderr


def test_consumers_made_explicit_by_an_earlier_version_keep_working(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    """An existing consumer's ack policy cannot change: explicit ones are kept and acked per message."""
    from nats.js import api

    from workers.topology import partition_filter, transform_destination

    names, prefix = pipeline_names("ev")
    name, stream, subject = names["name"], names["stream"], names["subject"]
    partitions = 2

    async def as_an_earlier_version_made_them():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(api.StreamConfig(
                name=stream, subjects=[subject], storage=api.StorageType.FILE,
                subject_transform=api.SubjectTransform(src=subject, dest=transform_destination(subject, partitions)),
            ))
            for p in range(partitions):
                await js.add_consumer(stream, api.ConsumerConfig(
                    durable_name=consumer_name(name, p), filter_subject=partition_filter(subject, p),
                    ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL, ack_wait=4.0,
                    max_ack_pending=15000, max_deliver=10, max_waiting=16,
                ))
        finally:
            await nc.close()

    async def policies():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            return [
                (await js.consumer_info(stream, consumer_name(name, p))).config.ack_policy for p in range(partitions)
            ]
        finally:
            await nc.close()

    run(as_an_earlier_version_made_them())
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=partitions, workers=1, **names
    )
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(partitions)
        assert sup.logged("consumers ack each message (made by an earlier version)")
        n = 5000
        assert publish_events(nats_url, event_messages(0, n, prefix=prefix, keys=8), stream).published == n
        sup.wait(lambda: _count(clickhouse_client, ch_database) >= n, 120, f"{n} rows")
        assert clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {ch_database}.events")[0] == (n, n)
        sup.wait(
            lambda: run(_pending(nats_url, stream, name, partitions)) == [(0, 0)] * partitions,
            60,
            "every message acked",
        )
        assert run(policies()) == [api.AckPolicy.EXPLICIT] * partitions
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_deliveries_the_sink_never_saw_hold_its_acks_until_they_come_back(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    """A gap in the consumer's delivery numbering (here: another client pulls a few messages
    and drops them, as a socket cut mid-delivery would) must stop the per-batch AckAll, which
    would settle them unstored; they are redelivered after ack_wait, stored, and only then acked."""
    names, prefix = pipeline_names("ev")
    name, stream = names["name"], names["stream"]
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=1, workers=1, max_rows=50, ack_wait_s=3,
        **names,
    )
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(1)
        # The consumer is pinned (priority group): the server parks a pull without the pin's
        # id while the sink holds it. So the sink pulls first and gets the pin; the thief then
        # pulls as a second holder of the same pin would (a stale owner's socket, say).
        assert publish_events(nats_url, event_messages(0, 100, prefix=prefix), stream=stream).published == 100
        sup.wait(lambda: _count(clickhouse_client, ch_database) == 100, 60, "the first events")
        pin = run(_pin_id(nats_url, stream, consumer_name(name, 0)))
        assert pin, "the sink's pulls got no pin"
        stolen: list = []
        statuses: list = []  # what the server answered the thief besides deliveries (for a failure's message)

        async def steal_and_publish():
            nc = await nats.connect(nats_url)
            try:
                inbox = nc.new_inbox()
                got = asyncio.Event()

                async def on_msg(msg):
                    if msg.reply:  # a delivery, never acked
                        stolen.append(msg.reply)
                        if len(stolen) == 5:
                            got.set()
                    else:
                        statuses.append(msg.headers)

                await nc.subscribe(inbox, cb=on_msg)
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer_name(name, 0)}",
                                 orjson.dumps({"batch": 5, "expires": 30_000_000_000, "group": PRIORITY_GROUP,
                                               "id": pin}), reply=inbox)
                await nc.flush()
                result = await publish(nc, event_messages(100, 1900, prefix=prefix), stream=stream)
                try:
                    await asyncio.wait_for(got.wait(), 60)
                except asyncio.TimeoutError:
                    raise AssertionError(f"the thief got {len(stolen)} deliveries, and {statuses}") from None
                return result
            finally:
                await nc.close()

        assert run(steal_and_publish()).published == 1900
        assert len(stolen) == 5
        sup.wait(lambda: sup.logged("deliveries missing before consumer sequence"), 60, "the gap to be noticed")
        sup.wait(
            lambda: clickhouse_client.execute(f"SELECT uniqExact(event_id) FROM {ch_database}.events")[0][0] == 2000,
            120,
            "every event",
        )
        sup.wait(lambda: sup.logged("acking per batch again"), 60, "acks to resume")
        sup.wait(lambda: run(_pending(nats_url, stream, name, 1)) == [(0, 0)], 60, "nothing unacked")
        assert sup.terminate() == 0
    finally:
        sup.close()
