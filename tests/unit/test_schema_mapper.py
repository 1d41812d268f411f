"""workers/schema/mapper.py: documents -> columns, missing fields, overrides, defaults."""

from __future__ import annotations

import re
from datetime import date
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from schema_cases import (
    MODERN,
    Override,
    conv,
    typed,
)

from workers.clickhouse import native
from workers.clickhouse.schema import (
    SchemaError,
    TableColumn,
    compile_mapper,
)
from workers.clickhouse.schema.mapper import OMITTED, omission_groups

EVENTS = [
    TableColumn("id", "UUID"),
    TableColumn("ts", "DateTime"),
    TableColumn("user", "String"),
    TableColumn("n", "UInt8"),
    TableColumn("score", "Nullable(Float64)"),
    TableColumn("day", "Date", "DEFAULT", "toDate(ts)"),
    TableColumn("ts_hour", "DateTime", "MATERIALIZED", "toStartOfHour(ts)"),
    TableColumn("uid", "String", "ALIAS", "user"),
    TableColumn("source", "String", "DEFAULT", "'api'"),
]


def good(i: int) -> dict:
    return {"id": f"00000000-0000-4000-8000-{i:012d}", "ts": 1700000000 + i, "user": f"u{i}", "n": i, "score": i / 2}


def test_map_rows_columns_and_order():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    assert mapper.column_names == ("id", "ts", "user", "n", "score", "day", "source")
    columns, failures = mapper.map_rows([good(1), good(2)])
    assert failures == []
    assert columns == [
        [UUID("00000000-0000-4000-8000-000000000001"), UUID("00000000-0000-4000-8000-000000000002")],
        [1700000001, 1700000002],
        ["u1", "u2"],
        [1, 2],
        [0.5, 1.0],
        [OMITTED, OMITTED],  # DEFAULT toDate(ts): the server's, per row
        ["api", "api"],
    ]


def test_map_rows_isolates_bad_docs_and_keeps_order():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    docs = [good(0), {**good(1), "n": 300}, good(2), "not an object", good(3), {**good(4), "id": "nope"},
            {**good(5), "n": 256, "user": 5}, good(6)]
    columns, failures = mapper.map_rows(docs)
    assert [i for i, _ in failures] == [1, 3, 5, 6]
    assert columns[2] == ["u0", "u2", "u3", "u6"]
    assert all(len(col) == 4 for col in columns)
    reasons = {i: (e.reason, e.detail) for i, e in failures}
    assert reasons[1][0] == "out_of_range"
    assert "column n" in reasons[1][1]
    assert "300" in reasons[1][1]
    assert reasons[3] == ("wrong_type", "message is a JSON string, expected an object")
    assert reasons[5][0] == "invalid_value"
    assert "column id" in reasons[5][1]
    assert "column user" in reasons[6][1]  # the first failing column in table order is reported


def uint8(v: Any) -> int | None:
    """What a UInt8 column stores of v, by the rules written out: a JSON integer or canonical string in range."""
    if type(v) is str and re.fullmatch(r"-?(0|[1-9][0-9]*)", v, re.ASCII):
        v = int(v)
    return v if type(v) is int and 0 <= v <= 255 else None


@given(
    st.lists(
        st.one_of(st.integers(-5, 300), st.none(), st.text(max_size=3), st.integers(-5, 300).map(str)), max_size=30
    )
)
def test_map_rows_property_good_rows_survive_in_order(values):
    mapper = compile_mapper("t", [TableColumn("v", "UInt8")], [], MODERN)
    docs = [{"v": v} for v in values]
    columns, failures = mapper.map_rows(docs)
    stored = [uint8(v) for v in values]
    assert columns == [[v for v in stored if v is not None]]
    assert [i for i, _ in failures] == [i for i, v in enumerate(stored) if v is None]


def test_missing_fields():
    cols = [TableColumn("a", "String"), TableColumn("b", "Nullable(UInt8)"), TableColumn("c", "UInt32"),
            TableColumn("d", "Array(String)"), TableColumn("e", "DateTime"), TableColumn("f", "String"),
            TableColumn("g", "Nullable(String)", "DEFAULT", "'x'")]
    overrides = [Override("f", has_default=True, default="fallback")]
    mapper = compile_mapper("t", cols, overrides, MODERN, {"g": "x"})
    columns, failures = mapper.map_rows([{}, {"a": "A", "g": None}])
    assert failures == []
    assert columns == [["", "A"], [None, None], [0, 0], [[], []], [0, 0], ["fallback", "fallback"], ["x", None]]


def test_null_is_not_missing_for_non_nullable_columns():
    mapper = compile_mapper("t", [TableColumn("a", "String")], [], MODERN)
    _, failures = mapper.map_rows([{"a": None}])
    assert failures[0][1].reason == "wrong_type"
    assert "null" in failures[0][1].detail


def test_required_override():
    override = Override("a", path=("x", "y"), required=True)
    mapper = compile_mapper("t", [TableColumn("a", "Nullable(String)")], [override], MODERN)
    columns, failures = mapper.map_rows([{"x": {"y": "ok"}}, {"x": {}}, {"x": "flat"}, {"a": "wrong place"}])
    assert columns == [["ok"]]
    assert [(i, e.reason) for i, e in failures] == [(i, "missing_required") for i in (1, 2, 3)]
    assert "x.y" in failures[0][1].detail


def test_paths_and_epoch_unit():
    cols = [TableColumn("uid", "UInt64"), TableColumn("at", "DateTime")]
    overrides = [Override("uid", path=("user", "id")), Override("at", epoch_unit="ms")]
    mapper = compile_mapper("t", cols, overrides, MODERN)
    columns, failures = mapper.map_rows([{"user": {"id": 7}, "at": 1700000000000}])
    assert failures == []
    assert columns == [[7], [1700000000]]


def test_bad_override_default_is_a_schema_error():
    with pytest.raises(SchemaError, match="column n: default 300"):
        compile_mapper("t", [TableColumn("n", "UInt8")], [Override("n", has_default=True, default=300)], MODERN)
    with pytest.raises(SchemaError, match="epoch_unit"):
        compile_mapper("t", [TableColumn("n", "DateTime")], [Override("n", epoch_unit="us")], MODERN)


def test_materialized_and_alias_never_inserted_or_overridden():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"})
    assert "ts_hour" not in mapper.column_names
    assert "uid" not in mapper.column_names
    with pytest.raises(SchemaError) as info:
        compile_mapper("t", EVENTS, [Override("ts_hour"), Override("uid")], MODERN)
    assert len(info.value.problems) == 2
    assert "MATERIALIZED" in str(info.value)
    assert "ALIAS" in str(info.value)


def test_server_default_columns_take_the_value_sent_and_leave_the_rest_to_the_server():
    # As ClickHouse's own JSON input does: a sent value is stored, an omitted one is the server's DEFAULT.
    for overrides in ([], [Override("day")]):
        mapper = compile_mapper("t", EVENTS, overrides, MODERN, {"source": "api"})
        day = mapper.column_names.index("day")
        assert mapper.omittable == (day,)
        columns, failures = mapper.map_rows([{**good(1), "day": "2020-01-01"}, good(2), {**good(3), "day": "x"}])
        assert columns[day] == [date(2020, 1, 1), OMITTED]
        assert [(i, e.reason) for i, e in failures] == [(2, "invalid_value")]  # a bad value is still refused
        groups = omission_groups(mapper, columns)
        assert [(g.tag != "", g.rows, "day" in g.names) for g in groups] == [(False, [0], True), (True, [1], False)]
        assert OMITTED not in [v for g in groups for col in g.columns for v in col]
    # `required` still refuses a message without it; a default fills it in.
    mapper = compile_mapper("t", EVENTS, [Override("day", required=True)], MODERN, {"source": "api"})
    assert mapper.omittable == () and mapper.map_rows([good(1)])[1][0][1].reason == "missing_required"
    mapper = compile_mapper("t", EVENTS, [Override("day", has_default=True, default="2021-01-01")], MODERN,
                            {"source": "api"})
    assert mapper.map_rows([good(1)])[0][mapper.column_names.index("day")] == [date(2021, 1, 1)]
    # A batch where no row omits it is one insert.
    assert omission_groups(mapper, mapper.map_rows([good(1)])[0]) is None


def test_unknown_override_column_suggests_names():
    with pytest.raises(SchemaError) as info:
        compile_mapper("db.t", EVENTS, [Override("usr"), Override("scor")], MODERN)
    text = str(info.value)
    assert "'usr'" in text
    assert "did you mean 'user'" in text
    assert "did you mean 'score'" in text
    assert "id, ts, user" in text


def test_non_list_docs_and_empty_batches():
    mapper = compile_mapper("t", [TableColumn("a", "String")], [], MODERN)
    assert mapper.map_rows([]) == ([[]], [])
    assert mapper.map_rows(({"a": "x"},)) == ([["x"]], [])
    columns, failures = mapper.map_rows([[1], None, 3, {"a": "y"}])
    assert columns == [["y"]]
    assert [i for i, _ in failures] == [0, 1, 2]
    assert failures[1][1].detail == "message is a JSON null, expected an object"


def test_repeated_values_are_converted_consistently():
    mapper = compile_mapper("t", [TableColumn("ts", "Nullable(DateTime)")], [], MODERN)
    docs = [{"ts": "2026-11-26T12:34:56Z"}, {"ts": None}, {"ts": "2026-11-26T12:34:56Z"}, {"ts": "bad"}, {"ts": 5}]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1795696496, None, 1795696496, 5]]
    assert [i for i, _ in failures] == [3]


def test_batch_deduplication_of_repeated_strings_keeps_errors_per_doc():
    mapper = compile_mapper("t", [TableColumn("ts", "Nullable(DateTime)")], [], MODERN)
    docs = [{"ts": "2026-11-26T12:34:56Z"}] * 10 + [
        {"ts": None},
        {"ts": "2026-11-26T12:34:56"},
        {"ts": "2026-11-26T12:34:56Z"},
    ]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1795696496] * 10 + [None, 1795696496]]
    assert [(i, e.reason) for i, e in failures] == [(11, "invalid_value")]


def test_dotted_paths_are_walked_as_before():
    override = Override("uid", path=("user", "id"), required=True)
    mapper = compile_mapper("t", [TableColumn("uid", "UInt64"), TableColumn("k", "String")], [override], MODERN)
    docs = [{"user": {"id": 1}, "k": "a"}, {"user": {}, "k": "b"}, {"user": None, "k": "c"}, {"user": "x", "k": "d"},
            {"k": "e"}, {"user": {"id": ["7"]}, "k": "f"}, {"user": {"id": 2, "more": 1}, "k": "g"}]
    columns, failures = mapper.map_rows(docs)
    assert columns == [[1, 2], ["a", "g"]]
    assert [(i, e.reason) for i, e in failures] == [
        (1, "missing_required"), (2, "missing_required"), (3, "missing_required"), (4, "missing_required"),
        (5, "wrong_type"),
    ]
    deep = compile_mapper("t", [TableColumn("v", "String")], [Override("v", path=("a", "b", "c"))], MODERN)
    assert deep.map_rows([{"a": {"b": {"c": "x"}}}, {"a": {"b": 1}}, {"a": {"b": {}}}]) == ([["x", "", ""]], [])


def test_documents_missing_some_keys_map_as_each_alone():
    cols = [
        TableColumn("a", "String"),
        TableColumn("b", "UInt8"),
        TableColumn("c", "UUID"),
        TableColumn("d", "DateTime"),
    ]
    mapper = compile_mapper("t", cols, [Override("b", has_default=True, default=9)], MODERN)
    u, t = "6f1c2d9e-ab12-4000-8000-0000000000ab", "2026-11-26T12:34:56Z"
    docs = [
        {"a": "x", "b": 1, "c": u, "d": t},
        {"a": "y", "c": u, "d": t},
        {"b": 2},
        {"a": "z", "b": 3, "c": u, "d": t, "e": 0},
    ]
    columns, failures = mapper.map_rows(docs)
    alone = [mapper.map_rows([d])[0] for d in docs]
    assert failures == []
    assert typed(columns) == typed([[v for a in alone for v in a[k]] for k in range(4)])
    assert columns[1] == [1, 9, 2, 3]


def test_demo_events_map_as_value_by_value():
    from bench import micro
    from bench.events import make_event

    mapper = micro.demo_mapper()
    docs = [make_event(i, 350) for i in range(300)]
    columns, failures = mapper.map_rows(docs)
    assert failures == []
    types = {c.name: c.type for c in micro.DEMO_COLUMNS}
    for name, column in zip(mapper.column_names, columns, strict=False):
        c = conv(types[name], epoch_unit="ms" if name == "ts" else "s")
        sent = [d["user"]["id"] if name == "user_id" else d[name] for d in docs]
        if name == "session_id":  # packed for jetsink's writers, which demo_mapper installs as a worker does
            column = list(map(native.unpack_uuid, column))
        assert typed(column) == typed([c(v) for v in sent]), name


def test_dict_subclasses_are_read_like_plain_objects():
    from collections import defaultdict

    mapper = compile_mapper("t", [TableColumn("a", "String"), TableColumn("b", "UInt8")], [], MODERN)
    odd = defaultdict(lambda: "surprise", {"a": "x"})
    assert mapper.map_rows([odd, {"a": "y", "b": 1}]) == ([["x", "y"], [0, 1]], [])
    assert dict(odd) == {"a": "x"}  # nothing was read through __getitem__


# --------------------------------------------------------------------------- issue 13: unknown and duplicate keys

def test_unknown_keys_are_ignored_by_default():
    mapper = compile_mapper("t", [TableColumn("a", "String")], [], MODERN)
    assert mapper.map_rows([{"a": "x", "extra": 1}]) == ([["x"]], [])


def test_unknown_keys_dead_letter_names_the_key():
    cols = [TableColumn("a", "String"), TableColumn("uid", "UInt64"), TableColumn("m", "Map(String, UInt8)")]
    overrides = [Override("uid", path=("user", "id"))]
    mapper = compile_mapper("db.t", cols, overrides, MODERN, unknown_keys="dead_letter")
    docs = [
        {"a": "x", "user": {"id": 1}, "m": {"any": 1}},  # keys inside a Map column's object are its values
        {"a": "x", "extra": 1},
        {"a": "x", "user": {"id": 2, "name": "n"}},
        {"a": 5, "extra": 1},  # a bad value is reported before the unknown key
        {},
    ]
    columns, failures = mapper.map_rows(docs)
    assert columns == [["x", ""], [1, 0], [{"any": 1}, {}]]
    assert [(i, e.reason) for i, e in failures] == [(1, "unknown_key"), (2, "unknown_key"), (3, "wrong_type")]
    assert "'extra'" in failures[0][1].detail
    assert "db.t" in failures[0][1].detail
    assert "'user.name'" in failures[1][1].detail


def test_unknown_keys_dead_letter_knows_server_filled_columns():
    mapper = compile_mapper("t", EVENTS, [], MODERN, {"source": "api"}, unknown_keys="dead_letter")
    _, failures = mapper.map_rows([{**good(1), "day": "2020-01-01"}, {**good(2), "ts_hour": 0}])
    assert [(i, e.reason) for i, e in failures] == [(1, "unknown_key")]  # day is inserted, ts_hour computed


def test_unknown_keys_setting_is_checked():
    with pytest.raises(SchemaError, match="unknown_keys"):
        compile_mapper("t", [TableColumn("a", "String")], [], MODERN, unknown_keys="drop")


def test_duplicate_keys_the_last_one_wins():
    import orjson

    mapper = compile_mapper("t", [TableColumn("a", "UInt8")], [], MODERN)
    assert mapper.map_rows([orjson.loads(b'{"a": 300, "a": 7}')]) == ([[7]], [])


# --------------------------------------------------------------------------- map_batch: map_rows + new_keys

KEYED = [TableColumn("a", "String"), TableColumn("b", "UInt8"), TableColumn("n", "UInt32")]
KEYED_OVERRIDES = [Override("n", path=("nested", "n"))]


def _keyed_mapper():
    return compile_mapper("t", KEYED, KEYED_OVERRIDES, MODERN)


def _plain(columns, failures):
    return columns, [(i, e.reason, e.detail) for i, e in failures]


@pytest.mark.parametrize("docs, new", [
    ([{"a": "x", "b": 1, "nested": {"n": 1}}] * 3, set()),  # exactly the columns' keys: found while mapping
    ([{"a": "x", "b": 1, "nested": {"n": 1}}, {"a": "y", "b": 2, "nested": {"n": 2}, "c": 0}], {"c"}),
    ([{"a": "x", "b": 1}, {"a": "y", "b": 2, "nested": {"n": 2}, "d": [1]}], {"d"}),  # one lacks a key, one has more
    ([{"a": "x", "b": 1, "n": 3}], {"n"}),  # a column's name read from elsewhere ("nested.n") is no column's key
    ([{"a": "x", "b": 1, "nested": {"n": 1}}, [1, 2], "text"], set()),  # not objects: refused, no keys
    ([], set()),
])
def test_map_batch_is_map_rows_and_new_keys(docs, new):
    mapper = _keyed_mapper()
    columns, failures, found = mapper.map_batch(docs)
    assert _plain(columns, failures) == _plain(*mapper.map_rows(docs))
    assert found == new == mapper.new_keys(docs)


def test_map_batch_sees_a_key_in_place_of_a_known_one():
    # As many keys as the columns read, but not the same ones: the length alone must not pass it.
    mapper = _keyed_mapper()
    docs = [{"a": "x", "b": 1, "nested": {"n": 1}}, {"a": "x", "b": 1, "other": 5}]
    assert mapper.map_batch(docs)[2] == {"other"}


@given(st.lists(st.dictionaries(st.sampled_from(["a", "b", "nested", "c", "n"]),
                                st.one_of(st.integers(0, 300), st.text(max_size=2), st.just({"n": 1}))),
                max_size=6))
def test_map_batch_property(docs):
    mapper = _keyed_mapper()
    columns, failures, found = mapper.map_batch(docs)
    assert _plain(columns, failures) == _plain(*mapper.map_rows(docs))
    assert found == mapper.new_keys(docs)
