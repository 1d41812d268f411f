"""workers/schema/errors.py: what a rejection says, and that it crosses processes."""

from __future__ import annotations

from schema_cases import (
    rejects,
)

from workers.clickhouse.schema import (
    MappingError,
    SchemaError,
)


def test_long_values_are_truncated_in_messages():
    detail = rejects("UInt8", "x" * 10_000, "invalid_value")
    assert len(detail) < 300
    detail = rejects("String", list(range(10_000)), "wrong_type")
    assert len(detail) < 300


def test_mapping_error_is_picklable():
    import pickle

    err = pickle.loads(pickle.dumps(MappingError("out_of_range", "column n: 300")))
    assert (err.reason, err.detail, str(err)) == ("out_of_range", "column n: 300", "out_of_range: column n: 300")
    se = pickle.loads(pickle.dumps(SchemaError(["a", "b"])))
    assert se.problems == ["a", "b"]
    assert str(se) == "a\nb"
