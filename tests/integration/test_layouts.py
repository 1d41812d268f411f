"""pipelines[].layout stream_per_partition against real servers: the mapping probe refuses a server
without the account mapping and stores nothing where it has it; each partition is its own stream,
the stored subjects are those of single_stream, so column sources read the producer's subject and
the partition as before; dead letters name the partition stream they came from. (The guarantees on
both layouts: test_exactly_once, test_stream_changes, test_nats_cluster, parametrized by layout.)"""

from __future__ import annotations

from functools import partial

import nats
import pytest

from supervisor import provision
from supervisor.config import load_config
from tests.integration.harness import (
    Supervisor,
    pipeline_names,
    publish_events,
    run,
    sink_config,
    wait_until,
)
from workers.topology import account_mapping, partition_of

PARTITIONS = 4


async def _streams(url, names):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return {i: (await js.stream_info(f"{names['stream']}_{i}")) for i in range(PARTITIONS)}
    finally:
        await nc.close()


def test_without_the_account_mapping_provisioning_refuses_naming_the_pipeline_and_the_mapping(
    monkeypatch, tmp_path, nats_url, clickhouse_server, ch_database
):
    from workers.nats import streams

    names, _ = pipeline_names("ly")
    cfg = sink_config(tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=PARTITIONS,
                      pipeline={"layout": "stream_per_partition"}, **names)
    # No reload is under way: one round of probes.
    monkeypatch.setattr(streams, "check_mapping", partial(streams.check_mapping, wait_s=0.0))
    with pytest.raises(provision.ProvisionError) as err:
        run(provision.provision_streams(load_config(cfg)))
    src, dest = account_mapping(names["subject"], PARTITIONS)
    msg = str(err.value)
    assert f"pipelines {names['name']}" in msg and f'"{src}": "{dest}"' in msg and "nsc add mapping" in msg
    assert "landed in no stream" in msg
    # Its partition streams exist (made before the probe), and the probes stored nothing.
    assert all(info.state.messages == 0 for info in run(_streams(nats_url, names)).values())


def test_a_mapping_with_another_partition_count_is_refused(
    monkeypatch, tmp_path, mapped, clickhouse_server, ch_database
):
    from workers.nats import streams

    names, _ = pipeline_names("ly")
    mapped.pipeline(names["subject"], PARTITIONS + 1)  # the account maps into 5 partitions, the pipeline has 4
    cfg = sink_config(tmp_path, mapped.url, clickhouse_server.port, ch_database, partitions=PARTITIONS,
                      pipeline={"layout": "stream_per_partition"}, **names)
    # No reload is under way: one round of probes.
    monkeypatch.setattr(streams, "check_mapping", partial(streams.check_mapping, wait_s=0.0))
    with pytest.raises(provision.ProvisionError, match="probes wrong"):
        run(provision.provision_streams(load_config(cfg)))


TABLE = """CREATE TABLE IF NOT EXISTS {table} (
  event_id String, ts DateTime, user_id UInt64, kind String, amount Float64,
  country FixedString(2), tags Array(String), session_id UUID, payload String,
  subj String, part UInt16, seq UInt64
) ENGINE = MergeTree() ORDER BY (kind, ts)"""


def test_each_partition_is_a_stream_and_sources_and_dead_letters_read_as_before(
    tmp_path, mapped, clickhouse_server, clickhouse_client, ch_database
):
    import orjson

    from bench.events import make_event

    names, prefix = pipeline_names("ly")
    url = mapped.url
    cfg = sink_config(
        tmp_path, url, clickhouse_server.port, ch_database, partitions=PARTITIONS, workers=2, max_rows=500,
        pipeline=mapped.pipeline(names["subject"], PARTITIONS, create_table=TABLE.format(
            table=f"{ch_database}.events"), columns={
                "event_id": {"required": True}, "user_id": {"path": "user.id", "required": True},
                "subj": {"source": "subject"}, "part": {"source": "partition"},
                "seq": {"source": "stream_sequence"}}),
        **names)
    total, keys = 2000, 16
    events = [(f"{prefix}.k{i % keys}", orjson.dumps(make_event(i)), None) for i in range(total)]
    events.append((f"{prefix}.k3", b"{not json", None))  # one dead letter, from k3's partition
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(PARTITIONS)
        publish_events(url, events, None)
        sup.wait(lambda: clickhouse_client.execute(f"SELECT count() FROM {ch_database}.events")[0][0] >= total, 60,
                 "every event stored")
        rows = clickhouse_client.execute(f"SELECT subj, part, seq, event_id FROM {ch_database}.events")
        assert len(rows) == len({r[3] for r in rows}) == total
        # The producer's subject, and the partition nats-server's mapping chose, as single_stream gives them.
        for subj, part, _, _ in rows:
            assert subj.startswith(f"{prefix}.k") and part == partition_of([subj.rsplit(".", 1)[1]], PARTITIONS)
        # Each partition stream holds its partition's messages alone, numbered from 1.
        infos = run(_streams(url, names))
        for i, info in infos.items():
            mine = [r for r in rows if r[1] == i]
            assert info.state.messages == len(mine) + (i == partition_of(["k3"], PARTITIONS))
            assert sorted(r[2] for r in mine)[:1] in ([1], [])
        letter = wait_until(lambda: run(_dead_letter(url, names)), 30, "the dead letter")
        p3 = partition_of(["k3"], PARTITIONS)
        assert letter.headers["Jetsink-Stream"] == f"{names['stream']}_{p3}"
        assert letter.headers["Nats-Msg-Id"] == f"{names['stream']}_{p3}:{letter.headers['Jetsink-Stream-Seq']}"
        assert letter.headers["Jetsink-Subject"] == f"{prefix}.{p3}.k3"
        assert sup.terminate() == 0
    finally:
        sup.close()


async def _dead_letter(url, names):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            return await js.get_msg(f"{names['stream']}_DLQ", 1)
        except Exception:
            return None
    finally:
        await nc.close()


@pytest.mark.parametrize("wildcards", [1, 2])
def test_the_probe_stores_nothing(wildcards, tmp_path, mapped, clickhouse_server, ch_database):
    names, _ = pipeline_names("ly")
    names["subject"] += ".*" * (wildcards - 1)  # events.*.*: partition(P,1,2) over both tokens
    cfg = sink_config(tmp_path, mapped.url, clickhouse_server.port, ch_database, partitions=PARTITIONS,
                      pipeline=mapped.pipeline(names["subject"], PARTITIONS), **names)
    config = load_config(cfg)
    for _ in range(2):  # created, then checked again as at every start
        run(provision.provision_streams(config))
    infos = run(_streams(mapped.url, names))
    assert [(info.state.messages, info.state.last_seq) for info in infos.values()] == [(0, 0)] * PARTITIONS


def test_a_layout_changed_without_moving_the_pipeline_is_refused(tmp_path, mapped, clickhouse_server, ch_database):
    names, prefix = pipeline_names("ly")
    single = sink_config(tmp_path, mapped.url, clickhouse_server.port, ch_database, partitions=PARTITIONS, **names)
    run(provision.provision_streams(load_config(single)))
    publish_events(mapped.url, [(f"{prefix}.k{i}", b"{}", None) for i in range(10)], names["stream"])
    # The config now says stream_per_partition and the account maps the subject, but the single stream
    # still holds 10 messages no consumer has stored: nothing would ever read them.
    per_partition = sink_config(tmp_path, mapped.url, clickhouse_server.port, ch_database, partitions=PARTITIONS,
                                pipeline=mapped.pipeline(names["subject"], PARTITIONS), **names)
    with pytest.raises(provision.ProvisionError) as err:
        run(provision.provision_streams(load_config(per_partition)))
    assert f"pipelines {names['name']}: the single_stream streams {names['stream']} hold 10 messages" in str(err.value)
    assert "migrate-layout" in str(err.value)


def test_the_embedded_nats_server_carries_the_mapping_and_takes_more_partitions_on_a_reload(
    tmp_path, clickhouse_server, clickhouse_client, ch_database
):
    import signal

    from supervisor import embedded
    from tests.integration.harness import all_once, demo_events

    names, prefix = pipeline_names("ly")
    url = f"nats://127.0.0.1:{embedded.free_port()}"

    def config(partitions):
        return sink_config(tmp_path, url, clickhouse_server.port, ch_database, partitions=partitions, workers=1,
                           max_rows=500, nats={"embedded": True}, pipeline={"layout": "stream_per_partition"},
                           **names)

    cfg = config(2)
    sup = Supervisor(cfg, tmp_path / "sink.log")
    try:
        sup.wait_acquired(2)
        publish_events(url, demo_events(prefix, 0, 1000), None)
        assert all_once(sup, clickhouse_client, ch_database, 1000) == (0, 0)
        config(4)  # the same file, 4 partitions: the mapping changes with them
        sup.proc.send_signal(signal.SIGHUP)
        sup.wait(lambda: sup.logged("embedded nats-server reloaded with the subject mappings"), 30, "the remap")
        sup.wait_acquired(4)
        publish_events(url, demo_events(prefix, 1000, 1000), None)
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        infos = run(_streams_of(url, names["stream"], 4))
        assert all(n > 0 for n in infos), infos  # the new partitions' streams take their keys
        assert sup.terminate() == 0
    finally:
        sup.close()


async def _streams_of(url, stream, partitions):
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return [(await js.stream_info(f"{stream}_{i}")).state.messages for i in range(partitions)]
    finally:
        await nc.close()
