"""`python -m supervisor check --connect` on a stream_per_partition pipeline checks the account's mapping with
the probes provisioning sends (workers/nats/streams.py: a publish expecting a stream that does not exist, so
no stream stores it): missing, or into another partition count, it is a problem naming the pipeline, the
subject and the mapping to add (exit 3); present, it says the mapping was verified, before the first start
(no partition stream yet: the probes are heard on the partitions' subjects) and after it (each probe lands in
its partition's stream). The check makes no stream and stores nothing. Real nats-server and clickhouse-server."""

from __future__ import annotations

import subprocess
import sys

import nats
from nats.js.errors import NotFoundError

from supervisor import provision
from supervisor.config import load_config
from tests.integration.harness import (
    DEMO_TABLE,
    REPO,
    pipeline_names,
    run,
    sink_config,
)
from workers import exitcodes
from workers.topology import account_mapping

PARTITIONS = 4


def _config(tmp_path, url, clickhouse_server, clickhouse_client, db, names):
    clickhouse_client.execute(DEMO_TABLE.format(table=f"{db}.events"))  # check --connect makes no table
    return sink_config(tmp_path, url, clickhouse_server.port, db, partitions=PARTITIONS,
                       pipeline={"layout": "stream_per_partition"}, instance_id=names["name"], **names)


def _check(cfg) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", "check", "--connect", "--config", str(cfg)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def _partition_streams(url, names) -> list[tuple[int, int] | None]:
    """(messages, last sequence) of each partition stream; None where it does not exist."""
    async def go():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            out = []
            for i in range(PARTITIONS):
                try:
                    state = (await js.stream_info(f"{names['stream']}_{i}")).state
                except NotFoundError:
                    out.append(None)
                else:
                    out.append((state.messages, state.last_seq))
            return out
        finally:
            await nc.close()

    return run(go())


def _assert_the_problem(check, names, partitions=PARTITIONS) -> None:
    src, dest = account_mapping(names["subject"], partitions)
    assert check.returncode == exitcodes.BOOT, check.stdout + check.stderr
    problem = check.stderr
    assert f"pipelines {names['name']}: layout stream_per_partition needs the NATS account to map {src!r} to " \
           f"{dest!r}" in problem, problem
    assert f'`mappings {{ "{src}": "{dest}" }}`' in problem and "nsc add mapping" in problem
    assert "ok, servers answer" not in check.stdout


def test_without_the_mapping_check_names_the_pipeline_the_subject_and_the_mapping(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("cm")
    check = _check(_config(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database, names))
    _assert_the_problem(check, names)
    assert "landed in no stream" in check.stderr and "account does not map the subject" in check.stderr
    assert _partition_streams(nats_url, names) == [None] * PARTITIONS  # the check made nothing


def test_with_the_mapping_check_verifies_it_before_the_first_start(
    tmp_path, mapped, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("cm")
    mapped.pipeline(names["subject"], PARTITIONS)
    check = _check(_config(tmp_path, mapped.url, clickhouse_server, clickhouse_client, ch_database, names))
    assert check.returncode == 0, check.stderr
    src, dest = account_mapping(names["subject"], PARTITIONS)
    assert f"pipeline {names['name']}: the NATS account maps {src!r} to {dest!r}: mapping verified by" in check.stdout
    assert "each delivered on its partition's subject" in check.stdout
    assert _partition_streams(mapped.url, names) == [None] * PARTITIONS  # the check made nothing


def test_with_the_mapping_check_verifies_it_through_the_partition_streams_storing_nothing(
    tmp_path, mapped, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("cm")
    mapped.pipeline(names["subject"], PARTITIONS)
    cfg = _config(tmp_path, mapped.url, clickhouse_server, clickhouse_client, ch_database, names)
    run(provision.provision_streams(load_config(cfg)))  # as the first start does
    check = _check(cfg)
    assert check.returncode == 0, check.stderr
    assert "mapping verified by" in check.stdout and "each landed in its partition's stream" in check.stdout
    assert _partition_streams(mapped.url, names) == [(0, 0)] * PARTITIONS  # no probe stored


def test_a_mapping_removed_after_the_first_start_is_a_problem(
    tmp_path, mapped, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("cm")
    mapped.pipeline(names["subject"], PARTITIONS)
    cfg = _config(tmp_path, mapped.url, clickhouse_server, clickhouse_client, ch_database, names)
    run(provision.provision_streams(load_config(cfg)))
    mapped.unmap(names["subject"])
    check = _check(cfg)
    _assert_the_problem(check, names)
    assert "landed in no stream" in check.stderr
    assert _partition_streams(mapped.url, names) == [(0, 0)] * PARTITIONS


def test_a_mapping_into_another_partition_count_is_a_problem(
    tmp_path, mapped, clickhouse_server, clickhouse_client, ch_database
):
    names, _ = pipeline_names("cm")
    mapped.pipeline(names["subject"], PARTITIONS + 1)  # the account maps into 5 partitions, the pipeline has 4
    check = _check(_config(tmp_path, mapped.url, clickhouse_server, clickhouse_client, ch_database, names))
    _assert_the_problem(check, names)
    assert "probes wrong" in check.stderr and "was delivered in partition" in check.stderr
