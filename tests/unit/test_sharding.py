"""workers/clickhouse/sharding.py's pure parts; tests/integration/test_clickhouse_cluster.py checks it against 18.16."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.clickhouse.sharding import ShardRule, int_hash64, key_function, shard_of, slots_for


def test_slots_repeat_each_shard_by_its_weight():
    assert slots_for([1, 1]) == (0, 1)
    assert slots_for([1, 2]) == (0, 1, 1)
    assert slots_for([0, 3, 1]) == (1, 1, 1, 2)
    for weights in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            slots_for(weights)


def test_the_figures_measured_on_18_16():
    assert key_function("String")("abc") == 4220206313085259313
    assert int_hash64(42) == int_hash64(42, 1) == int_hash64(42, 4) == 11490350930367293593
    assert key_function("Int8")(-1) == int_hash64(0xFF)  # zero-extended, not sign-extended
    assert key_function("Int8", hashed=False)(-1) == 255


def test_types_it_cannot_follow_fail_at_construction():
    for column_type, hashed in (("Float64", True), ("Nullable(String)", True), ("String", False),
                                ("Date", False), ("UUID", True)):
        with pytest.raises(ValueError, match=column_type.replace("(", r"\(").replace(")", r"\)")):
            ShardRule(column_type, (0, 1), hashed)
    assert key_function("LowCardinality(String)")("abc") == key_function("String")("abc")
    assert key_function("FixedString(4)")("ab") == key_function("String")("ab\0\0")


@given(st.lists(st.integers(0, 3), min_size=1, max_size=5).filter(any),
       st.lists(st.integers(-(2**63), 2**64 - 1), max_size=50), st.booleans())
def test_a_rule_s_selector_is_shard_of_and_names_a_shard_with_weight(weights, keys, hashed):
    slots = slots_for(weights)
    select = ShardRule("Int64", slots, hashed).selector()
    for key in keys:
        shard = select(key)
        assert shard == shard_of(key, "Int64", slots, hashed)
        assert weights[shard] > 0
