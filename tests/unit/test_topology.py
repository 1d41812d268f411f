"""workers/topology.py: the subject transform, partition filters and consumer names."""

import re

from hypothesis import given
from hypothesis import strategies as st

from workers.topology import (
    consumer_name,
    partition_filter,
    stored_subjects,
    transform_destination,
)


def test_transform_and_filter_for_one_wildcard():
    assert transform_destination("events.*", 8) == "events.{{partition(8,1)}}.{{wildcard(1)}}"
    assert partition_filter("events.*", 3) == "events.3.*"
    assert stored_subjects("events.*") == "events.*.*"


def test_transform_keeps_literal_tokens_between_wildcards():
    dest = transform_destination("app.*.orders.*", 16)
    assert dest == "app.{{partition(16,1,2)}}.{{wildcard(1)}}.orders.{{wildcard(2)}}"
    assert partition_filter("app.*.orders.*", 15) == "app.15.*.orders.*"


@given(st.integers(1, 1024), st.data())
def test_filter_matches_the_transformed_subject(partitions, data):
    # Apply the transform by hand: a filter of partition p must match exactly the
    # subjects the stream stores for p.
    key = data.draw(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))
    p = data.draw(st.integers(0, partitions - 1))
    dest = transform_destination("events.*", partitions)
    stored = re.sub(r"\{\{partition\([^)]*\)\}\}", str(p), dest).replace("{{wildcard(1)}}", key)
    pattern = partition_filter("events.*", p).replace(".", r"\.").replace("*", r"[^.]+")
    assert re.fullmatch(pattern, stored)
    other = partition_filter("events.*", (p + 1) % partitions).replace(".", r"\.").replace("*", r"[^.]+")
    assert partitions == 1 or not re.fullmatch(other, stored)


def test_consumer_names_are_per_pipeline_and_partition():
    assert consumer_name("events", 0) != consumer_name("events", 1) != consumer_name("other", 1)


def test_stream_per_partition_names_each_partitions_stream_and_its_mapping():
    from types import SimpleNamespace

    from workers.topology import account_mapping, data_streams, partition_stream, partition_view

    p = SimpleNamespace(name="events", stream="EVENTS", subject="events.*", partitions=3,
                        layout="stream_per_partition")
    assert data_streams(p) == ["EVENTS_0", "EVENTS_1", "EVENTS_2"] and partition_stream("EVENTS", 2) == "EVENTS_2"
    assert account_mapping("events.*", 8) == ("events.*", transform_destination("events.*", 8))
    single = SimpleNamespace(**{**vars(p), "layout": "single_stream"})
    assert data_streams(single) == ["EVENTS"] and partition_view(single, 2) is single


def test_the_views_stream_is_the_partitions_own():
    from supervisor.config import parse_config
    from workers.topology import partition_view

    data = {"pipelines": [{"name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 4,
                           "table": "events", "layout": "stream_per_partition"}]}
    p = parse_config(data, ".").pipelines[0]
    view = partition_view(p, 3)
    assert (view.stream, view.name, view.subject, view.dlq_stream) == ("EVENTS_3", "events", "events.*", "EVENTS_DLQ")


@given(st.integers(1, 64), st.integers(1, 3))
def test_the_probes_reach_every_partition_as_nats_server_partitions_them(partitions, wildcards):
    from workers.topology import PROBE_TOKEN, partition_of, probe_subjects

    subject = ".".join(["app"] + ["*"] * wildcards)
    probes = probe_subjects(subject, partitions)
    assert {p for _, p in probes} == set(range(partitions))
    for s, p in probes:
        keys = s.split(".")[1:]
        assert all(k.startswith(PROBE_TOKEN) for k in keys)
        assert partition_of(keys, partitions) == p  # FNV-1a of the tokens joined, as nats-server's partition()


def test_partition_of_is_nats_servers_fnv1a():
    from workers.topology import partition_of

    # FNV-1a (32 bits) of "a"; tests/integration/test_layouts.py checks every stored key against nats-server.
    assert partition_of(["a"], 2**32) == 0xE40C292C
    assert partition_of(["ab", "c"], 2**32) == partition_of(["abc"], 2**32)
