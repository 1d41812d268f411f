"""A routed pipeline's routes (workers/partition/router.py): first match wins, what is decided
before the parse, and how values compare."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import ConfigError, parse_config
from workers.partition.router import NO_DOCUMENT, UNDECIDED, UNROUTED, Router

BASE = {"name": "ev", "stream": "EV", "subject": "events.*.*", "partitions": 4}


def _router(routes: list[dict], **pipeline) -> Router:
    config = parse_config({"pipelines": [{**BASE, "routes": routes, **pipeline}]}, Path("/tmp"))
    return Router(config.pipelines[0])


def _route(r: Router, subject: str, doc) -> str:
    """The label of the route a message (published to `subject`, stored in partition 2) takes."""
    stored = subject.replace("events.", "events.2.", 1).encode()
    d = r.by_subject([(stored,)])[0]
    if d == UNDECIDED:
        d = r.by_doc(stored, doc)
    return "unrouted" if d == UNROUTED else r.routes[d].label


def test_the_first_matching_route_wins_and_subject_only_routes_need_no_document():
    r = _router([
        {"subject": "events.click.*", "table": "clicks"},
        {"field": "kind", "in": ["view", "open"], "table": "views"},
        {"subject": "events.debug.*", "skip": True},
        {"subject": "events.*.*", "field": "kind", "equals": "click", "table": "clicks"},
    ])
    assert [x.label for x in r.routes] == ["clicks_0", "views", "skip_2", "clicks_3"]  # one table, two routes
    assert r.table_labels == ["clicks_0", "views", "clicks_3"]
    assert r.by_subject([(b"events.1.click.k",)]) == [0]  # decided without the document
    assert r.by_subject([(b"events.1.debug.k",)]) == [UNDECIDED]  # the field route before it may match
    assert _route(r, "events.debug.k", {"kind": "view"}) == "views"
    assert _route(r, "events.debug.k", {"kind": "x"}) == "skip_2"
    assert _route(r, "events.debug.k", NO_DOCUMENT) == "skip_2"  # no JSON: no field condition holds
    assert _route(r, "events.other.k", {"kind": "click"}) == "clicks_3"
    assert _route(r, "events.click.k", {"kind": "view"}) == "clicks_0"
    assert _route(r, "events.other.k", {"kind": "buy"}) == "unrouted"


def test_values_compare_as_json_values():
    r = _router([
        {"field": "n", "equals": 1, "table": "ones"},
        {"field": "b", "equals": True, "table": "trues"},
        {"field": "a.b", "exists": True, "table": "nested"},
        {"field": "z", "exists": False, "table": "no_z"},
        {"field": "o", "equals": {"x": [1, 2]}, "table": "objects"},
    ])
    assert _route(r, "events.a.b", {"n": 1, "z": 0}) == "ones"
    assert _route(r, "events.a.b", {"n": 1.0, "z": 0}) == "ones"
    assert _route(r, "events.a.b", {"n": True, "z": 0}) == "unrouted"  # true is not 1
    assert _route(r, "events.a.b", {"n": "1", "z": 0}) == "unrouted"
    assert _route(r, "events.a.b", {"b": True, "z": 0}) == "trues"
    assert _route(r, "events.a.b", {"b": 1, "z": 0}) == "unrouted"  # 1 is not true
    assert _route(r, "events.a.b", {"a": {"b": None}, "z": 0}) == "nested"  # present, even as null
    assert _route(r, "events.a.b", {"a": {"c": 1}}) == "no_z"
    assert _route(r, "events.a.b", {"a": 5, "z": 1, "o": {"x": [1, 2]}}) == "objects"
    assert _route(r, "events.a.b", [1, 2]) == "no_z"  # a document that is no object has no fields


@pytest.mark.parametrize("routes, pipeline, problem", [
    ([{"table": "t"}], {}, "routes[0]: a route needs a condition"),
    ([{"field": "k", "table": "t"}], {}, "routes[0].field: needs exactly one of equals, in, exists"),
    ([{"field": "k", "equals": 1, "in": [1], "table": "t"}], {}, "needs exactly one of equals, in, exists"),
    ([{"subject": "events.*.*", "equals": 1, "table": "t"}], {}, "equals only used with field"),
    ([{"subject": "events.*.*"}], {}, "a route needs exactly one target: table, or skip: true"),
    ([{"subject": "events.*.*", "table": "t", "skip": True}], {}, "exactly one target"),
    ([{"subject": "events.*.*", "skip": True, "columns": {"a": "b"}}], {}, "routes[0].columns: only used with a table"),
    ([{"subject": "other.*", "table": "t"}], {}, "routes[0].subject: 'other.*' never matches"),
    ([{"subject": "events.*.*", "table": "t"}], {"table": "x"}, "pipelines[0].table: a pipeline with routes has no"),
    ([{"subject": "events.*.*", "table": "t", "name": "a"}, {"subject": "events.*.*", "table": "u", "name": "a"}],
     {}, "routes[1].name: 'a' is already the name of routes[0]"),
    ([{"field": "k", "in": [], "table": "t"}], {}, "routes[0].in: expected a non-empty list"),
])
def test_route_config_problems_name_their_key(routes, pipeline, problem):
    with pytest.raises(ConfigError) as info:
        parse_config({"pipelines": [{**BASE, "routes": routes, **pipeline}]}, Path("/tmp"))
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_unrouted_is_only_for_routed_pipelines_and_column_sources_are_checked():
    with pytest.raises(ConfigError, match="unrouted: only used with routes"):
        parse_config({"pipelines": [{**BASE, "table": "t", "unrouted": "skip"}]}, Path("/tmp"))
    for columns, problem in [
        ({"x": {"source": "header"}}, "columns.x.header: required with source: header"),
        ({"x": {"source": "subject_token"}}, "columns.x.subject_token: required with source: subject_token"),
        ({"x": {"subject_token": 0}}, "tokens count from 1"),
        ({"x": {"source": "subject", "header": "H"}}, "columns.x.header: only used with source: header"),
        ({"x": {"source": "message", "path": "a.b"}}, "columns.x.path: only used with source: json"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config({"pipelines": [{**BASE, "table": "t", "columns": columns}]}, Path("/tmp"))
        assert any(problem in p for p in info.value.problems), info.value.problems
    config = parse_config({"pipelines": [{**BASE, "table": "t", "columns": {"x": {"header": "X-T"}}}]}, Path("/tmp"))
    assert config.pipelines[0].columns[0].source == "header"
