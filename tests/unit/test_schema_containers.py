"""workers/schema/containers.py: Nullable, LowCardinality, Array, Map, Tuple."""

from __future__ import annotations

import pytest
from schema_cases import (
    MODERN,
    assert_column_as_per_value,
    by_map_rows,
    conv,
    fast_column,
    rejects,
)

from workers.clickhouse.schema import (
    SchemaError,
)
from workers.clickhouse.schema.builder import compile_type


def test_nullable_lowcardinality_array_map_tuple():
    assert conv("Nullable(UInt8)")(None) is None
    assert conv("Nullable(UInt8)")(7) == 7
    rejects("Nullable(UInt8)", 300, "out_of_range")
    assert conv("LowCardinality(Nullable(String))")(None) is None
    detail = rejects("Array(UInt8)", [1, 2, 300], "out_of_range")
    assert detail.startswith("value[2]:")
    assert conv("Array(Array(String))")([["a"], []]) == [["a"], []]
    assert "value[1][0]" in rejects("Array(Array(String))", [["a"], [1]], "wrong_type")
    rejects("Array(String)", "abc", "wrong_type")
    assert conv("Map(String, UInt64)")({"a": 1}) == {"a": 1}
    assert conv("Map(UInt32, String)")({"7": "x", "0": "y"}) == {7: "x", 0: "y"}
    assert conv("Map(Int8, String)")({"-7": "x"}) == {-7: "x"}
    for bad in ["07", "+7", "7.0", "x"]:
        rejects("Map(UInt32, String)", {bad: "x"}, "invalid_value")
    rejects("Map(UInt8, String)", {"256": "x"}, "out_of_range")
    rejects(
        "Map(UUID, String)",
        {"6f1c2d9e-ab12-4000-8000-0000000000ab": "a", "6F1C2D9E-AB12-4000-8000-0000000000AB": "b"},
        "invalid_value",
    )  # two keys, one UUID
    assert "['a']" in rejects("Map(String, UInt8)", {"a": -1}, "out_of_range")
    assert conv("Tuple(String, UInt8)")(["a", 1]) == ("a", 1)
    assert conv("Tuple(s String, n UInt8)")({"s": "a", "n": 1}) == ("a", 1)
    rejects("Tuple(String, UInt8)", ["a"], "invalid_value")
    rejects("Tuple(s String, n UInt8)", {"s": "a", "x": 1}, "invalid_value")
    with pytest.raises(SchemaError):
        conv("Map(Float64, String)")


def test_array_column_fast_path_is_the_per_value_converter():
    assert_column_as_per_value("Array(String)", [[], ["a"], ["a", "b"], ["t1", "t2", "t3"]],
                               [["a", 1], "abc", [None], None, [["a"]], ("a",), {"a": 1}])
    assert_column_as_per_value("Array(UInt8)", [[], [0, 255], [7]], [[256], [-1], [True], [1.0], [1.5], ["1"]])
    assert_column_as_per_value("Array(Nullable(String))", [["a", None], [], [None]], [[1], None])
    assert_column_as_per_value("Array(Float64)", [[1.5], [], [0.0, -2.5]], [[1], [True], ["1.5"]])
    assert_column_as_per_value("Array(Int64)", [[-(2**63), 2**63 - 1]], [[2**63], [-(2**63) - 1]])
    assert fast_column("Array(String)", [["a"], []]) == [["a"], []]
    assert fast_column("Array(UInt8)", [[1], [256]]) is None
    assert compile_type("Array(DateTime)", MODERN, "s", where="test").column is None  # elements without one
    detail = by_map_rows("Array(String)", [["a"], ["b", 2]])[1][1]
    assert detail.startswith("[1]: expected a string")
