"""Exactly once when JetStream's objects change under jetsink (issue 22): a stream deleted and
created again, a durable consumer or the commit-state bucket deleted, messages removed by the
stream's limits before they were read. Real nats-server and clickhouse-server; counts from
ClickHouse directly."""

from __future__ import annotations

import nats

from tests.integration.harness import (
    Supervisor,
    all_once,
    demo_events,
    event_counts,
    fed,
    pipeline_names,
    publish_events,
    run,
    sink_config,
    skipped_as_stored,
)
from workers.delivery import commits
from workers.topology import consumer_name

PARTITIONS = 2


async def _js(url, fn):
    nc = await nats.connect(url)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def _first_run(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database, layout_nats=None, **pipeline):
    """Events 0..999 stored once by a first supervisor, which then stops; returns (cfg, names, prefix).
    With `layout_nats` (tests/conftest.py), on its server and layout."""
    names, prefix = pipeline_names("sc")
    if layout_nats is not None:
        pipeline = layout_nats.pipeline(names["subject"], PARTITIONS, **pipeline)
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=PARTITIONS, workers=1, max_rows=300,
        pipeline=pipeline or None, **names,
    )
    stream = layout_nats.expected(names["stream"]) if layout_nats is not None else names["stream"]
    with fed(cfg, tmp_path / "sink1.log", nats_url, stream, demo_events(prefix, 0, 1000), PARTITIONS) as sup:
        assert all_once(sup, clickhouse_client, ch_database, 1000) == (0, 0)
        assert sup.terminate() == 0
    return cfg, names, prefix


def _delete_streams(nats_url, layout_nats, names):
    """Delete the pipeline's stream, or (stream_per_partition) every partition's."""
    async def delete(js):
        for stream in layout_nats.streams(names["stream"], PARTITIONS):
            await js.delete_stream(stream)

    run(_js(nats_url, delete))


def test_a_stream_created_again_while_stopped_has_its_new_events_stored_once(
    tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database
):
    nats_url = layout_nats.url
    cfg, names, prefix = _first_run(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database, layout_nats)
    _delete_streams(nats_url, layout_nats, names)
    new_events = demo_events(prefix, 1000, 1000)
    with fed(cfg, tmp_path / "sink2.log", nats_url, layout_nats.expected(names["stream"]), new_events,
             PARTITIONS) as sup:
        # The new stream numbers its messages from 1 again; the old states said 1..~500 were stored.
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        set_aside = sup.logged("set aside its commit state")
        assert len(set_aside) == PARTITIONS
        # Each partition's state is bound to the stream it reads: the pipeline's, or the partition's own.
        for stream in layout_nats.streams(names["stream"], PARTITIONS):
            named = [line for line in set_aside if f"stream {stream} created" in line["msg"]]
            assert len(named) == PARTITIONS // len(layout_nats.streams(names["stream"], PARTITIONS)), stream
        assert sup.terminate() == 0
    assert skipped_as_stored(sup) == 0


def test_a_consumer_deleted_while_stopped_is_created_again_after_what_is_stored(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    cfg, names, prefix = _first_run(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database)

    async def delete(js):
        for index in range(PARTITIONS):
            await js.delete_consumer(names["stream"], consumer_name(names["name"], index))

    run(_js(nats_url, delete))
    new_events = demo_events(prefix, 1000, 1000)
    with fed(cfg, tmp_path / "sink2.log", nats_url, names["stream"], new_events, PARTITIONS) as sup:
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        assert len(sup.logged("created again from its commit state")) == PARTITIONS
        assert sup.terminate() == 0
    # Created from the state, not from the stream's first message: nothing was delivered twice.
    assert skipped_as_stored(sup) == 0


def test_the_commit_state_bucket_deleted_while_stopped_is_created_again(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    cfg, names, prefix = _first_run(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database)
    run(_js(nats_url, lambda js: js.delete_key_value(commits.bucket_name(names["name"]))))
    new_events = demo_events(prefix, 1000, 1000)
    with fed(cfg, tmp_path / "sink2.log", nats_url, names["stream"], new_events, PARTITIONS) as sup:
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        assert sup.logged(f"commit-state bucket {commits.bucket_name(names['name'])} was missing")
        assert sup.terminate() == 0


def test_messages_the_streams_limits_removed_before_they_were_read_are_reported(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    cfg, names, prefix = _first_run(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database)

    async def limit(js):
        info = await js.stream_info(names["stream"])
        await js.update_stream(info.config.evolve(max_msgs=600))

    async def stored(js):
        kv = await js.key_value(commits.bucket_name(names["name"]))
        return {i: commits.CommitState.decode((await kv.get(str(i))).value).stored for i in range(PARTITIONS)}

    run(_js(nats_url, limit))
    stored = run(_js(nats_url, stored))
    # Published while jetsink is down: the stream keeps the last 600 (sequences 1401..2000).
    publish_events(nats_url, demo_events(prefix, 1000, 1000), names["stream"])
    with fed(cfg, tmp_path / "sink2.log", nats_url, names["stream"], [], PARTITIONS) as sup:
        sup.wait(lambda: event_counts(clickhouse_client, ch_database)[1] >= 1600, 60, "the 600 the stream kept")
        warned = {line["partition"]: line for line in sup.logged("expired unread")}
        # Each partition names the sequences after its own `stored` the stream no longer holds (the
        # partitions share the stream's sequences, so each count is a bound on its own messages).
        assert {i: line["expired_unread"] for i, line in warned.items()} == {i: 1400 - s for i, s in stored.items()}
        assert sup.terminate() == 0
    assert event_counts(clickhouse_client, ch_database) == (1600, 1600)


# -- while jetsink runs ------------------------------------------------------------------------


def _running(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database, layout_nats=None):
    """A supervisor that stored events 0..999 and goes on running (closed by the caller)."""
    names, prefix = pipeline_names("sc")
    cfg = sink_config(
        tmp_path, nats_url, clickhouse_server.port, ch_database, partitions=PARTITIONS, workers=1, max_rows=300,
        pipeline=layout_nats.pipeline(names["subject"], PARTITIONS) if layout_nats is not None else None, **names,
    )
    sup = Supervisor(cfg, tmp_path / "sink.log")
    sup.wait_acquired(PARTITIONS)
    stream = layout_nats.expected(names["stream"]) if layout_nats is not None else names["stream"]
    publish_events(nats_url, demo_events(prefix, 0, 1000), stream)
    assert all_once(sup, clickhouse_client, ch_database, 1000) == (0, 0)
    return sup, names, prefix


def _no_worker_died(sup):
    assert not sup.logged("died") and not sup.logged("failed:")
    assert all(w.get("restarts", 0) == 0 for w in sup.workers())


def test_a_consumer_deleted_while_running_is_created_again_from_its_commit_state(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    sup, names, prefix = _running(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database)
    try:
        async def delete(js):
            for index in range(PARTITIONS):
                await js.delete_consumer(names["stream"], consumer_name(names["name"], index))

        run(_js(nats_url, delete))
        sup.wait(lambda: len(sup.logged("pulling again after")) == PARTITIONS, 60, "both partitions pulling again")
        publish_events(nats_url, demo_events(prefix, 1000, 1000), names["stream"])
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        assert len(sup.logged("created again from its commit state")) == PARTITIONS
        _no_worker_died(sup)
        assert sup.terminate() == 0
    finally:
        sup.close()
    assert skipped_as_stored(sup) == 0  # the new consumers started after what was stored


def test_a_stream_deleted_and_created_again_while_running_has_every_new_event_stored_once(
    tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database
):
    nats_url = layout_nats.url
    sup, names, prefix = _running(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database, layout_nats)
    try:
        _delete_streams(nats_url, layout_nats, names)
        # The partitions find their consumers gone, make the stream and their consumers again, and
        # set their commit states aside (another incarnation).
        sup.wait(lambda: len(sup.logged("set aside its commit state")) == PARTITIONS, 60, "both states set aside")
        sup.wait(lambda: len(sup.logged("pulling again after")) == PARTITIONS, 60, "both partitions pulling again")
        publish_events(nats_url, demo_events(prefix, 1000, 1000), layout_nats.expected(names["stream"]))
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        _no_worker_died(sup)
        assert sup.terminate() == 0
    finally:
        sup.close()


def test_the_commit_state_bucket_deleted_while_running_is_made_again_with_the_partitions_states(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    sup, names, prefix = _running(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database)
    try:
        run(_js(nats_url, lambda js: js.delete_key_value(commits.bucket_name(names["name"]))))
        publish_events(nats_url, demo_events(prefix, 1000, 1000), names["stream"])
        assert all_once(sup, clickhouse_client, ch_database, 2000) == (0, 0)
        sup.wait(lambda: len(sup.logged("was deleted under it")) == PARTITIONS, 60, "both states written again")

        async def states(js):
            kv = await js.key_value(commits.bucket_name(names["name"]))
            return [commits.CommitState.decode((await kv.get(str(i))).value) for i in range(PARTITIONS)]

        # The states written into the new bucket are the partitions' own, not a fresh start.
        sup.wait(lambda: sum(s.stored > 1000 for s in run(_js(nats_url, states))) >= 1, 30, "states carried over")
        _no_worker_died(sup)
        assert sup.terminate() == 0
    finally:
        sup.close()
