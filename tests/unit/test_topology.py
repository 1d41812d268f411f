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
