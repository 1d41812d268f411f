"""clickhouse.hosts, clickhouse.shards and pipelines[].sharding_key: what the config accepts, what it refuses
(workers/settings.py, supervisor/config_rules.py), and how a sharding key is read (workers/clickhouse/shards.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.config import ConfigError, parse_config
from workers.clickhouse.shards import parse_key

REPO = Path(__file__).resolve().parents[2]


def config(clickhouse: dict, **pipeline: Any) -> Any:
    return parse_config({"clickhouse": clickhouse, "pipelines": [
        {"name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 4, "table": "events", **pipeline}
    ]}, REPO)


def problems(clickhouse: dict, **pipeline: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(clickhouse, **pipeline)
    return info.value.problems


def test_host_and_port_are_a_one_host_list():
    assert config({"host": "ch", "port": 9001}).clickhouse.shard_addresses == ((("ch", 9001),),)
    c = config({"hosts": ["ch-1:9000", "ch-2:9001"]}).clickhouse
    assert c.shard_addresses == ((("ch-1", 9000), ("ch-2", 9001)),) and c.addresses == (("ch-1", 9000), ("ch-2", 9001))
    assert config({"hosts": "ch-1:9000"}).clickhouse.addresses == (("ch-1", 9000),)


def test_shards_keep_the_clusters_order_and_weights():
    c = config({"shards": [{"hosts": ["a:1", "b:2"]}, {"hosts": "c:3", "weight": 2}]},
               sharding_key="cityHash64(user_id)").clickhouse
    assert c.shard_addresses == ((("a", 1), ("b", 2)), (("c", 3),))
    assert c.shard_weights == (1, 2)
    assert c.addresses == (("a", 1), ("b", 2), ("c", 3))


@pytest.mark.parametrize("clickhouse, pipeline, expected", [
    ({"hosts": ["ch-1"]}, {}, "clickhouse.hosts[0]: expected host:port (e.g. ch-1:9000), got 'ch-1'"),
    ({"hosts": ["a:1", "a:1"]}, {}, "clickhouse.hosts[1]: a:1 is listed twice"),
    ({"hosts": ["a:1"], "port": 9000}, {},
     "clickhouse.port: give either hosts or host/port, not both (host/port is a one-host hosts list)"),
    ({"hosts": ["127.0.0.1:9000"], "embedded": True}, {},
     "clickhouse.hosts: embedded: true starts one local server on host:port; hosts lists servers you run"),
    ({"shards": [{"hosts": ["a:1"]}], "hosts": ["b:1"]}, {},
     "clickhouse.hosts: give either shards or hosts (host/port), not both (hosts is a one-shard cluster)"),
    ({"shards": [{"hosts": ["a:1"], "weight": 0}]}, {}, "clickhouse.shards: at least one shard needs a weight above 0"),
    ({"shards": [{"weight": 1}]}, {}, "clickhouse.shards[0].hosts: required"),
    ({"shards": [{"hosts": ["a:1"]}, {"hosts": ["b:1"]}]}, {},
     "pipelines[0].sharding_key: required with clickhouse.shards (2 shards): the sharding key of the cluster's "
     "Distributed table, e.g. cityHash64(user_id) or rand()"),
    ({"hosts": ["a:1"]}, {"sharding_key": "rand()"},
     "pipelines[0].sharding_key: only used with clickhouse.shards (more than one shard)"),
    ({"shards": [{"hosts": ["a:1"]}, {"hosts": ["b:1"]}]}, {"sharding_key": "cityHash64(user_id"},
     "pipelines[0].sharding_key: expected cityHash64(column), an integer column or rand(), got 'cityHash64(user_id'"),
])
def test_refused_with_the_key_named(clickhouse, pipeline, expected):
    assert problems(clickhouse, **pipeline) == [expected]


def test_a_sharding_key_is_read_as_the_distributed_table_writes_it():
    assert parse_key("cityHash64(user_id)") == ("user_id", True)
    assert parse_key(" cityHash64( user_id ) ") == ("user_id", True)
    assert parse_key("uid") == ("uid", False)
    assert parse_key("rand()") == parse_key("rand") == (None, False)
