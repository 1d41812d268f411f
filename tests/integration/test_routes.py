"""One stream, several tables, and columns filled from the message (issue 24), on the real servers.

A routed pipeline sends clicks, views and orders of one stream to three tables, skips debug
events (whose payloads are no JSON: they are never parsed) and dead-letters the rest as
`unrouted`; every table takes metadata columns (subject, stream sequence, JetStream's
stored time, a header, the partition, a subject token, the raw message). A worker killed
between two tables' inserts of one batch leaves nothing lost and nothing twice in any table.
Every test runs on both stream layouts (tests/conftest.py's `layout`): with stream_per_partition the
stream sequence is the partition stream's, and the subject source is still the producer's subject.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

import nats
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import (
    Supervisor,
    fed,
    pipeline_names,
    publish_events,
    run,
    sink_config,
)
from workers.delivery import commits

TABLES = {
    "clicks": "event_id String, user_id UInt64, subj String, seq UInt64, stored UInt64, "
              "tenant String, raw String, part UInt16",
    "views": "event_id String, kind String, seq UInt64, tenant String, kindtok String, delivered UInt8",
    "orders": "event_id String, amount Float64, subj String, stored DateTime('UTC'), seq Int64",
}


PARTITIONS = 2


def _routed(tmp_path, layout_nats, ch, client, db, **pipeline):
    names, prefix = pipeline_names("rt")
    for table, columns in TABLES.items():
        client.execute(f"CREATE TABLE {db}.{table} ({columns}) ENGINE = MergeTree() ORDER BY event_id")
    names["subject"] = f"{prefix}.*.*"
    # An instance_id of its own: `check --connect` refuses one that is live in the members bucket (tests
    # share a nats-server, and a previous test's supervisor stays listed for its TTL).
    config = sink_config(tmp_path, layout_nats.url, ch.port, db, partitions=PARTITIONS, workers=1,
                         instance_id=names["name"], pipeline=layout_nats.pipeline(names["subject"], PARTITIONS, **{
        "table": None, "create_table": None,
        "routes": [
            {"subject": f"{prefix}.click.*", "table": "clicks", "columns": {"user_id": "user.id"}},
            {"field": "kind", "in": ["view", "open"], "table": "views"},
            {"subject": f"{prefix}.order.*", "table": "orders", "columns": {"event_id": {"required": True}}},
            {"subject": f"{prefix}.debug.*", "skip": True},
        ],
        "columns": {
            "subj": {"source": "subject"}, "seq": {"source": "stream_sequence"}, "stored": {"source": "timestamp"},
            "tenant": {"header": "X-Tenant"}, "raw": {"source": "message"}, "part": {"source": "partition"},
            "kindtok": {"subject_token": 2}, "delivered": {"source": "delivered"},
        },
        **pipeline,
    }), **names)
    return config, names, prefix


def _event(i: int, kind: str) -> dict:
    return {"event_id": f"e{i:06d}", "kind": kind, "user": {"id": 1000 + i}, "amount": i / 4}


def _messages(prefix: str, n: int):
    """Per i: a click, a view (on a 'misc' subject: routed by its field), an order, a debug line that is no
    JSON, and an event no route takes; each with its tenant header."""
    out = []
    for i in range(n):
        kinds = [("click", "click"), ("view", "misc"), ("order", "order"), ("x", "debug"), ("x", "other")]
        kind, subject = kinds[i % 5]
        body = b"debug: not json" if subject == "debug" else orjson.dumps(_event(i, kind))
        out.append((f"{prefix}.{subject}.k{i % 7}", body, {"X-Tenant": f"t{i % 3}"}))
    return out


def _metrics(sup) -> dict:
    text = urllib.request.urlopen(f"http://{sup.address()}/metrics").read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _stored_messages(nats_url: str, streams: list[str]) -> dict[tuple[str, int], object]:
    """(stream, stream sequence) -> the stored message (subject with the partition token, time)."""
    async def go():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            out = {}
            for stream in streams:
                info = await js.stream_info(stream)
                for s in range(info.state.first_seq, info.state.last_seq + 1):
                    out[stream, s] = await js.get_msg(stream, s)
            return out
        finally:
            await nc.close()
    return run(go())


def _dead_letters(nats_url: str, stream: str) -> list:
    """The pipeline's dead letters (its DLQ stream, `<stream>_DLQ`, on both layouts)."""
    return list(_stored_messages(nats_url, [f"{stream}_DLQ"]).values())


def test_one_stream_three_tables_a_skip_and_metadata_columns(
    tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
):
    db, n, nats_url = ch_database, 500, layout_nats.url
    config, names, prefix = _routed(tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database)
    msgs = _messages(prefix, n)
    counts = {"clicks": n // 5, "views": n // 5, "orders": n // 5}
    check = _check(config)  # what `check --connect` shows of the routes and the columns' sources
    assert check.returncode == 0, check.stderr
    assert f"route 0 clicks: subject {prefix}.click.* -> table clicks" in check.stdout
    assert 'route 1 views: field kind in ["view", "open"] -> table views' in check.stdout
    assert f"route 3 skip_3: subject {prefix}.debug.* -> skip" in check.stdout
    assert "unrouted messages: dead letter" in check.stdout
    # stream_per_partition: the account's mapping of the two-wildcard subject, checked before the first start.
    assert (f"pipeline {names['name']}: the NATS account maps" in check.stdout) == layout_nats.per_partition
    assert f"pipeline {names['name']}/clicks: inserts columns event_id, user_id, subj, seq, stored, tenant, raw, " \
           "part into clicks; subj from the message's subject; seq from the message's stream_sequence" \
           in check.stdout
    with fed(config, tmp_path / "sink.log", nats_url, layout_nats.expected(names["stream"]), msgs,
             partitions=PARTITIONS) as sup:
        def done():
            return all(clickhouse_client.execute(f"SELECT count() FROM {db}.{t}")[0][0] >= c
                       for t, c in counts.items())
        sup.wait(done, 60, "every routed event stored")
        sup.wait(lambda: len(_dead_letters(nats_url, names["stream"])) >= n // 5, 30, "the unrouted dead letters")
        # Per-route counts in /status and /metrics (the workers report every second).
        def routes_counted():
            rows = {}
            for w in sup.workers():
                for s in (w.get("stats") or {}).values():
                    for route, c in (s.get("routes") or {}).items():
                        rows[route] = [a + b for a, b in zip(rows.get(route, [0, 0, 0]), c, strict=True)]
            return rows if sum(sum(c) for c in rows.values()) >= n else None
        try:
            routes = sup.wait(routes_counted, 30, "per-route counts in status")
        except AssertionError:
            print(json.dumps(sup.workers(), indent=1)[:3000])
            raise
        metrics = _metrics(sup)
        text = sup.wait(lambda: _status_text(sup), 10, "status text")
    streams = layout_nats.streams(names["stream"], PARTITIONS)
    stored = _stored_messages(nats_url, streams)
    assert routes == {"clicks": [n // 5, 0, 0], "views": [n // 5, 0, 0], "orders": [n // 5, 0, 0],
                      "skip_3": [0, n // 5, 0], "unrouted": [0, 0, n // 5]}
    label = ("pipeline", names["name"])
    assert metrics[("jetsink_skipped_total", (label, ("route", "skip_3")))] == n // 5
    assert metrics[("jetsink_routed_rows_total", (label, ("route", "clicks")))] == n // 5
    assert metrics[("jetsink_routed_dead_letters_total", (label, ("route", "unrouted")))] == n // 5
    assert "skip_3" in text and "unrouted" in text

    by_id = {orjson.loads(body)["event_id"]: (subject, body, headers, i)
             for i, (subject, body, headers) in enumerate(msgs) if not body.startswith(b"debug")}
    seq_of = {orjson.loads(m.data)["event_id"]: (s, m) for (_, s), m in stored.items()
              if not m.data.startswith(b"debug")}
    assert len(seq_of) == len(by_id)  # every message stored once, in the stream of its partition
    for (stream, _), m in stored.items():
        assert stream == layout_nats.stream_of(names["stream"], int(m.subject.split(".")[1]))

    clicks = clickhouse_client.execute(
        f"SELECT event_id, user_id, subj, seq, stored, tenant, raw, part FROM {db}.clicks")
    assert len(clicks) == len({c[0] for c in clicks}) == n // 5  # each once
    for event_id, user_id, subj, seq, stored_at, tenant, raw, part in clicks:
        subject, body, headers, i = by_id[event_id]
        s, m = seq_of[event_id]
        assert (user_id, subj, seq, tenant, raw.encode()) == (1000 + i, subject, s, headers["X-Tenant"], body)
        assert part == int(m.subject.split(".")[1])  # the stored subject's partition token
        # JetStream's stored time in ns (nats-py parses it to microseconds). DateTime64 columns (19.x+) are
        # tested on 26.x's engine (tests/modern) and tests/unit/test_sources.py.
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        assert stored_at // 1000 == (m.time - epoch) // dt.timedelta(microseconds=1)

    views = clickhouse_client.execute(f"SELECT event_id, kind, seq, tenant, kindtok, delivered FROM {db}.views")
    assert len(views) == n // 5
    for event_id, kind, seq, tenant, kindtok, delivered in views:
        subject, _, headers, _ = by_id[event_id]
        assert (kind, seq, tenant, kindtok, delivered) == ("view", seq_of[event_id][0], headers["X-Tenant"], "misc", 1)

    orders = clickhouse_client.execute(f"SELECT event_id, amount, subj, toUnixTimestamp(stored), seq FROM {db}.orders")
    assert len(orders) == n // 5
    for event_id, amount, subj, stored_s, seq in orders:
        subject, _, _, i = by_id[event_id]
        s, m = seq_of[event_id]
        assert (amount, subj, seq, stored_s) == (i / 4, subject, s, int(m.time.timestamp()))

    letters = _dead_letters(nats_url, names["stream"])
    assert len(letters) == n // 5
    assert {m.headers["Jetsink-Reason"] for m in letters} == {"unrouted"}
    for m in letters:
        subject = m.headers["Jetsink-Subject"]  # the stored subject, its partition token in it
        assert ".other." in subject and m.headers["Jetsink-Pipeline"] == names["name"]
        # The stream it came from (the partition's own with stream_per_partition) and its sequence there:
        # the very message, byte for byte; Nats-Msg-Id names both (the DLQ's duplicate window).
        stream, seq = m.headers["Jetsink-Stream"], int(m.headers["Jetsink-Stream-Seq"])
        assert stream == layout_nats.stream_of(names["stream"], int(subject.split(".")[1]))
        assert (stored[stream, seq].subject, stored[stream, seq].data) == (subject, m.data)
        assert m.headers["Nats-Msg-Id"] == f"{stream}:{seq}"


def _check(config):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "supervisor", "check", "--connect", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_a_column_added_to_a_routes_table_takes_the_first_values_that_carry_it(
    tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
):
    db, nats_url = ch_database, layout_nats.url
    config, names, prefix = _routed(tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
                                    schema_refresh_s=0)
    clicks = [(f"{prefix}.click.k{i % 3}", orjson.dumps(_event(i, "click")), {"X-Tenant": "t"}) for i in range(200)]
    with fed(config, tmp_path / "sink.log", nats_url, layout_nats.expected(names["stream"]), clicks,
             partitions=PARTITIONS) as sup:
        sup.wait(lambda: clickhouse_client.execute(f"SELECT count() FROM {db}.clicks")[0][0] >= 200, 60, "clicks")
        clickhouse_client.execute(f"ALTER TABLE {db}.clicks ADD COLUMN note String DEFAULT ''")
        noted = [(f"{prefix}.click.k{i % 3}", orjson.dumps({**_event(i, "click"), "note": f"n{i}"}), None)
                 for i in range(200, 500)]
        publish_events(nats_url, noted, layout_nats.expected(names["stream"]))
        sup.wait(lambda: clickhouse_client.execute(f"SELECT count() FROM {db}.clicks")[0][0] >= 500, 60, "noted")
        assert sup.terminate() == 0
    rows = dict(clickhouse_client.execute(f"SELECT event_id, note FROM {db}.clicks"))
    assert len(rows) == 500
    assert [i for i in range(500) if rows[f"e{i:06d}"] != (f"n{i}" if i >= 200 else "")] == []


def _status_text(sup) -> str | None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "supervisor", "status", "--config", str(sup.config)],
                         capture_output=True, text=True, timeout=30)
    return out.stdout if "ROUTE" in out.stdout else None


def test_a_worker_killed_between_two_tables_inserts_leaves_every_table_exactly_once(
    monkeypatch, tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
):
    db, n, nats_url = ch_database, 2000, layout_nats.url
    # The worker exits after the first table's part of its first routed batch, before the next part.
    monkeypatch.setenv(commits.EXIT_AFTER_PART_ENV, f"1:{tmp_path / 'hook-fired'}")
    config, names, prefix = _routed(tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
                                    batch={"max_rows": 400, "max_wait_ms": 200})
    sup = Supervisor(config, tmp_path / "sink.log")
    try:
        sup.wait_acquired(PARTITIONS)
        publish_events(nats_url, [m for m in _messages(prefix, n) if ".debug." not in m[0]],
                       layout_nats.expected(names["stream"]))
        counts = {"clicks": n // 5, "views": n // 5, "orders": n // 5}

        def done():
            return all(clickhouse_client.execute(f"SELECT uniqExact(event_id) FROM {db}.{t}")[0][0] >= c
                       for t, c in counts.items())
        sup.wait(done, 120, "every routed event stored after the worker's death")
        assert (tmp_path / "hook-fired").exists() and sup.logged("died")
        settled = sup.wait(lambda: sup.logged("each table's part asked about"), 30, "the in-doubt batch settled")
        assert settled
        # The part inserted before the death was found in ClickHouse's query log and not sent again.
        assert sup.logged("into route clicks had landed; not sending it again")
        assert sup.terminate() == 0
    finally:
        sup.close()
    for table, expected in counts.items():
        rows, distinct = clickhouse_client.execute(f"SELECT count(), uniqExact(event_id) FROM {db}.{table}")[0]
        assert (rows, distinct) == (expected, expected), table  # 0 lost, 0 duplicates
    assert len(_dead_letters(nats_url, names["stream"])) == n // 5  # the unrouted ones, each once


@pytest.mark.parametrize("source, column_type, problem", [
    ("stream_sequence", "UInt32", "source stream_sequence cannot fill UInt32; it fills UInt64 or Int64"),
    ("timestamp", "String", "source timestamp cannot fill String"),
    ("message", "UInt64", "source message cannot fill UInt64"),
])
def test_a_source_that_cannot_fill_its_column_is_refused_at_start_naming_it(
    source, column_type, problem, tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
):
    import subprocess
    import sys

    db = ch_database
    names, _ = pipeline_names("rs")
    clickhouse_client.execute(f"CREATE TABLE {db}.m (event_id String, x {column_type}) ENGINE = MergeTree() ORDER BY "
                              "event_id")
    config = sink_config(tmp_path, layout_nats.url, clickhouse_server.port, db, pipeline=layout_nats.pipeline(
        names["subject"], 8, table="m", create_table=None, columns={"x": {"source": source}}), **names)
    out = subprocess.run([sys.executable, "-m", "supervisor", "check", "--connect", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"table {db}.m column x: {problem}" in out.stderr or f"table m column x: {problem}" in out.stderr, out.stderr
    json.dumps(out.stderr)


def test_a_pipeline_wide_column_no_routes_table_has_is_refused_at_start(
    tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database,
):
    config, names, prefix = _routed(tmp_path, layout_nats, clickhouse_server, clickhouse_client, ch_database)
    import yaml

    data = yaml.safe_load(config.read_text())
    data["pipelines"][0]["columns"]["tenantt"] = {"header": "X-Tenant"}  # a typo: no route's table has it
    config.write_text(yaml.safe_dump(data))
    out = _check(config)
    assert out.returncode != 0
    assert "columns tenantt match a column of no route's table (clicks, orders, views)" in out.stderr, out.stderr
