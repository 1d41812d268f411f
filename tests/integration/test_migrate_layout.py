"""`python -m supervisor migrate-layout prepare|finish` as an operator runs it, producers publishing all
along: the new layout's streams made, the account's mapping changed by a config reload, the old
layout drained and stopped, finish, the new layout started: every event stored once (counted in
ClickHouse), and each layout stored some of them."""

from __future__ import annotations

import subprocess
import sys

import nats
import pytest

from tests.integration.harness import (
    REPO,
    Load,
    Supervisor,
    all_once,
    map_subject,
    pipeline_names,
    rows_flowing,
    run,
    sink_config,
    unmap_subject,
)
from workers.topology import consumer_name

PARTITIONS = 2


def _migrate(step, cfg):
    return subprocess.run([sys.executable, "-m", "supervisor", "migrate-layout", step, "--config", str(cfg)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


async def _counts(url, names, per_partition):
    """Messages in the pipeline's streams of one layout, and what its consumers have not stored."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        streams = [f"{names['stream']}_{i}" for i in range(PARTITIONS)] if per_partition else [names["stream"]]
        messages = sum([(await js.stream_info(s)).state.messages for s in streams])
        left = 0
        for i in range(PARTITIONS):
            try:
                c = await js.consumer_info(streams[i if per_partition else 0], consumer_name(names["name"], i))
            except Exception:
                continue
            left += c.num_pending + c.num_ack_pending
        return messages, left
    finally:
        await nc.close()


@pytest.mark.parametrize("to", ["stream_per_partition", "single_stream"])
def test_moving_a_pipeline_between_layouts_under_load_loses_and_duplicates_nothing(
    to, tmp_path, mapped_nats_server, clickhouse_server, clickhouse_client, ch_database
):
    server, mappings = mapped_nats_server
    url = f"nats://{server.host}:{server.port}"
    names, prefix = pipeline_names("mg")
    frm = "single_stream" if to == "stream_per_partition" else "stream_per_partition"
    if frm == "stream_per_partition":
        map_subject(server, mappings, names["subject"], PARTITIONS)
    cfgs = {}
    for layout in (frm, to):
        (tmp_path / layout).mkdir()
        cfgs[layout] = sink_config(tmp_path / layout, url, clickhouse_server.port, ch_database, partitions=PARTITIONS,
                                   workers=1, max_rows=500, pipeline={"layout": layout}, **names)
    total = 10_000
    load = Load(url, prefix, 0, total, rate=2000)
    old = Supervisor(cfgs[frm], tmp_path / "old.log")
    try:
        old.wait_acquired(PARTITIONS)
        load.start()
        rows_flowing(old, clickhouse_client, ch_database, 1000)
        prepared = _migrate("prepare", cfgs[to])
        assert prepared.returncode == 0, prepared.stderr
        # The operator changes the account's mapping (a config reload); new events go to the new streams.
        if to == "stream_per_partition":
            map_subject(server, mappings, names["subject"], PARTITIONS)
        else:
            unmap_subject(server, mappings, names["subject"])
        refused = _migrate("finish", cfgs[to])
        assert refused.returncode == 5 and "live in the members bucket" in refused.stderr
        # The old layout stores what its streams hold, then stops.
        old.wait(lambda: run(_counts(url, names, frm == "stream_per_partition"))[1] == 0, 60, "the old streams drained")
        assert old.terminate() == 0
    finally:
        old.close()
    finished = _migrate("finish", cfgs[to])
    assert finished.returncode == 0, finished.stderr
    new = Supervisor(cfgs[to], tmp_path / "new.log")
    try:
        new.wait_acquired(PARTITIONS)
        assert load.join_checked(120) == total
        assert all_once(new, clickhouse_client, ch_database, total) == (0, 0)
        assert new.terminate() == 0
    finally:
        new.close()
    in_old = run(_counts(url, names, frm == "stream_per_partition"))[0]
    in_new = run(_counts(url, names, to == "stream_per_partition"))[0]
    assert in_old > 0 and in_new > 0 and in_old + in_new == total
    # The new layout's partitions started from their streams' first message, with no state set aside.
    assert not new.logged("set aside its commit state")
