"""Changing a table while jetsink runs (issue 16), each change under a steady publish.

ADD COLUMN (found on SIGHUP and by the periodic check), DROP COLUMN, MODIFY COLUMN
widening and narrowing, DROP TABLE + CREATE TABLE: nothing is lost, the new values are
stored once the change took effect, nothing is dead-lettered except values the new type
cannot hold, and the supervisor and its workers run on without a restart. Each test
prints how long the change took to take effect ("took effect after"; pytest -s shows it).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import nats
import orjson
import pytest
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from bench.events import make_event
from tests.integration.harness import (
    DEMO_TABLE,
    Load,
    Supervisor,
    demo_events,
    pipeline_names,
    publish_events,
    run,
    sink_config,
    wait_until,
)

RATE = 300.0  # events/s: steady, well below what the sink takes


class Phased:
    """Events for a Load whose shape changes when the test says so; remembers the first event of the new shape."""

    def __init__(self, before, after) -> None:
        self._before, self._after = before, after
        self.switched = False
        self.first_after: int | None = None

    def __call__(self, i: int) -> dict:
        if not self.switched:
            return self._before(i)
        if self.first_after is None:
            self.first_after = i
        return self._after(i)


def _start(tmp_path, nats_url, ch, client, db, *, prepare=(), partitions=4, workers=2, pipeline=None, **cfg):
    names, prefix = pipeline_names("tc")
    client.execute(DEMO_TABLE.format(table=f"{db}.events"))
    for sql in prepare:
        client.execute(sql.format(t=f"{db}.events"))
    config = sink_config(
        tmp_path, nats_url, ch.port, db, partitions=partitions, workers=workers, pipeline=pipeline, **names, **cfg
    )
    sup = Supervisor(config, tmp_path / "sink.log")
    sup.wait_acquired(partitions)
    return sup, prefix, names


def _count(client, db, where="1"):
    return client.execute(f"SELECT count() FROM {db}.events WHERE {where}")[0][0]


def _effect(sup, since: float, cond, what: str) -> float:
    """Seconds from `since` until `cond` first holds (polled every 0.1 s)."""
    sup.wait(cond, 120, what)
    return time.monotonic() - since


def _status(sup) -> dict:
    return sup.wait(sup.status, 30, "status endpoint")


def _metrics(sup) -> dict:
    """/metrics as {(sample name, sorted labels): value}, read by prometheus_client's parser."""
    text = urllib.request.urlopen(f"http://{sup.address()}/metrics").read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _all_on(sup, pipeline: str, digest_not: str | None = None):
    """The pipeline's schema entry once every live worker reports the version the supervisor holds."""
    entry = _status(sup).get("schemas", {}).get(pipeline)
    if not entry or entry["digest"] == digest_not or not entry["slots"]:
        return None
    return entry if set(entry["slots"].values()) == {entry["digest"]} else None


def _dead_letters(nats_url, stream):
    async def go():
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(f"{stream}_DLQ")
            except NotFoundError:
                return []
            if not info.state.messages:
                return []
            return [await js.get_msg(f"{stream}_DLQ", s) for s in range(info.state.first_seq, info.state.last_seq + 1)]
        finally:
            await nc.close()

    return run(go())


def _ran_through(sup, workers: int) -> None:
    """The supervisor still runs, its workers were never replaced, and it drains cleanly."""
    assert len(sup.logged("spawned worker")) == workers
    assert not sup.logged("died")
    assert sup.terminate() == 0


def _report(change: str, seconds: float) -> None:
    print(f"\n{change}: took effect after {seconds:.2f}s")


def _id(i: int) -> str:
    return f"e{i:012d}"


@pytest.mark.parametrize("found_by", ["sighup", "periodic"])
def test_add_column(found_by, tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    db = ch_database
    # SIGHUP with the default period (30 s, longer than the test), or a check every second without it.
    refresh = {"schema_refresh_s": 1} if found_by == "periodic" else None
    sup, prefix, names = _start(tmp_path, nats_url, clickhouse_server, clickhouse_client, db, pipeline=refresh)
    n = 3000
    load = Load(nats_url, prefix, 0, n, RATE, make=lambda i: {**make_event(i), "note": f"n{i}"})
    try:
        load.start()
        sup.wait(lambda: _count(clickhouse_client, db) >= 300, 60, "rows before the change")
        before = _all_on(sup, names["name"])
        assert before is not None and before["changes"] == 0
        t0 = time.monotonic()
        clickhouse_client.execute(f"ALTER TABLE {db}.events ADD COLUMN note String DEFAULT ''")
        if found_by == "sighup":
            sup.proc.send_signal(signal.SIGHUP)
        took = _effect(sup, t0, lambda: _count(clickhouse_client, db, "note != ''") > 0, "a row with its note")
        _report(f"ADD COLUMN ({found_by})", took)
        after = sup.wait(lambda: _all_on(sup, names["name"], before["digest"]), 60, "every worker on the new schema")
        boundary = load.published + 1  # published after every worker switched: each carries its note
        assert load.join_checked(120) == n
        sup.wait(lambda: _count(clickhouse_client, db) >= n, 120, "every event")
        rows = dict(clickhouse_client.execute(f"SELECT event_id, note FROM {db}.events"))
        assert len(rows) == n == _count(clickhouse_client, db)  # 0 lost, none twice
        assert all(rows[_id(i)] in ("", f"n{i}") for i in range(n))  # never another value
        assert all(rows[_id(i)] == f"n{i}" for i in range(boundary, n))
        changed = sup.logged("changed, schema")
        assert len(changed) == 1 and "added note String" in changed[0]["msg"]  # logged once, by two workers' reports
        assert after["changes"] == 1
        labels = (("pipeline", names["name"]), ("table", f"{db}.events"))
        assert _metrics(sup)[("jetsink_schema_changes_total", labels)] == 1
        assert not _dead_letters(nats_url, names["stream"])
        _ran_through(sup, 2)
    finally:
        sup.close()


def test_add_column_then_publish_at_once_every_value_is_stored(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database,
):
    """No SIGHUP and no periodic check (schema_refresh_s: 0): the first messages carrying the new
    column's key make the workers read the table before they are mapped (issue 24)."""
    db = ch_database
    sup, prefix, names = _start(tmp_path, nats_url, clickhouse_server, clickhouse_client, db,
                                pipeline={"schema_refresh_s": 0})
    before, after = 2000, 3000
    try:
        publish_events(nats_url, demo_events(prefix, 0, before), names["stream"])
        sup.wait(lambda: _count(clickhouse_client, db) >= before, 60, "the events before the change")
        clickhouse_client.execute(f"ALTER TABLE {db}.events ADD COLUMN note String DEFAULT ''")
        noted = ((s, orjson.dumps({**json.loads(b), "note": f"n{i}"}), h)
                 for i, (s, b, h) in enumerate(demo_events(prefix, before, after), start=before))
        publish_events(nats_url, noted, names["stream"])
        sup.wait(lambda: _count(clickhouse_client, db) >= before + after, 60, "every event")
        rows = dict(clickhouse_client.execute(f"SELECT event_id, note FROM {db}.events"))
        assert len(rows) == before + after == _count(clickhouse_client, db)  # 0 lost, none twice
        assert [i for i in range(before + after) if rows[_id(i)] != (f"n{i}" if i >= before else "")] == []
        assert not _dead_letters(nats_url, names["stream"])
        _ran_through(sup, 2)
    finally:
        sup.close()


def test_drop_column(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    db = ch_database
    sup, prefix, names = _start(tmp_path, nats_url, clickhouse_server, clickhouse_client, db)
    n = 3000
    load = Load(nats_url, prefix, 0, n, RATE)  # every event carries "payload"
    try:
        load.start()
        sup.wait(lambda: _count(clickhouse_client, db) >= 300, 60, "rows before the change")
        t0 = time.monotonic()
        clickhouse_client.execute(f"ALTER TABLE {db}.events DROP COLUMN payload")
        after = load.published + 1  # published after the column was gone
        took = _effect(sup, t0, lambda: _count(clickhouse_client, db, f"event_id >= '{_id(after)}'") > 0, "rows after")
        _report("DROP COLUMN", took)
        assert load.join_checked(120) == n
        sup.wait(lambda: _count(clickhouse_client, db) >= n, 120, "every event")
        assert clickhouse_client.execute(f"SELECT uniqExact(event_id), count() FROM {db}.events")[0] == (n, n)
        changed = sup.logged("changed, schema")
        assert len(changed) == 1 and "dropped payload" in changed[0]["msg"]
        assert not _dead_letters(nats_url, names["stream"])  # the key is unknown now: ignored (unknown_keys)
        assert not sup.logged("paused")
        _ran_through(sup, 2)
    finally:
        sup.close()


def test_modify_column_widening(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    db = ch_database
    sup, prefix, names = _start(
        tmp_path, nats_url, clickhouse_server, clickhouse_client, db,
        prepare=["ALTER TABLE {t} ADD COLUMN n UInt8 DEFAULT 0"],
    )
    n = 3000
    events = Phased(lambda i: {**make_event(i), "n": i % 200}, lambda i: {**make_event(i), "n": 1000 + i})
    load = Load(nats_url, prefix, 0, n, RATE, make=events)
    try:
        load.start()
        sup.wait(lambda: _count(clickhouse_client, db) >= 300, 60, "rows before the change")
        t0 = time.monotonic()
        clickhouse_client.execute(f"ALTER TABLE {db}.events MODIFY COLUMN n UInt32")
        events.switched = True  # values only the new type holds; the old mapper refuses them
        took = _effect(sup, t0, lambda: _count(clickhouse_client, db, "n >= 1000") > 0, "a wide value")
        _report("MODIFY COLUMN UInt8 -> UInt32", took)
        assert load.join_checked(120) == n
        sup.wait(lambda: _count(clickhouse_client, db) >= n, 120, "every event")
        rows = dict(clickhouse_client.execute(f"SELECT event_id, n FROM {db}.events"))
        assert len(rows) == n == _count(clickhouse_client, db)
        first = events.first_after
        assert all(rows[_id(i)] == (i % 200 if i < first else 1000 + i) for i in range(n))
        assert not _dead_letters(nats_url, names["stream"])
        assert "retyped n UInt8 -> UInt32" in sup.logged("changed, schema")[0]["msg"]
        _ran_through(sup, 2)
    finally:
        sup.close()


def test_modify_column_narrowing_dead_letters_exactly_the_unstorable(
    tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database
):
    db = ch_database
    # One partition whose batch is held 3 s: the values published right after the change
    # are mapped for the old type (String) and inserted into the new one (UInt8).
    sup, prefix, names = _start(
        tmp_path, nats_url, clickhouse_server, clickhouse_client, db,
        prepare=["ALTER TABLE {t} ADD COLUMN code String DEFAULT ''"],
        partitions=1, workers=1, max_rows=100_000, max_wait_ms=3000, ack_wait_s=15,
    )
    n = 3000

    def unstorable(i):
        return i % 10 == 0

    events = Phased(
        lambda i: {**make_event(i), "code": str(i % 200)},
        lambda i: {**make_event(i), "code": f"x{i}" if unstorable(i) else str(i % 200)},
    )
    load = Load(nats_url, prefix, 0, n, RATE, make=events)
    try:
        load.start()
        sup.wait(lambda: _count(clickhouse_client, db) >= 300, 60, "rows before the change")
        stored = _count(clickhouse_client, db)
        # Right after a batch went in, so that the held batch is the next one (an 'x..' value
        # in the table would make ClickHouse refuse the ALTER itself).
        wait_until(lambda: _count(clickhouse_client, db) > stored, 30, "a batch to go in", interval=0.02)
        events.switched = True
        t0 = time.monotonic()
        clickhouse_client.execute(f"ALTER TABLE {db}.events MODIFY COLUMN code UInt8")
        first = sup.wait(lambda: events.first_after, 30, "the new values")
        took = _effect(sup, t0, lambda: _count(clickhouse_client, db, f"event_id >= '{_id(first)}'") > 0, "new rows")
        _report("MODIFY COLUMN String -> UInt8", took)
        assert load.join_checked(120) == n
        bad = {_id(i) for i in range(first, n) if unstorable(i)}
        sup.wait(lambda: _count(clickhouse_client, db) >= n - len(bad), 120, "every storable event")
        letters = wait_until(
            lambda: (ls := _dead_letters(nats_url, names["stream"])) and len(ls) >= len(bad) and ls, 60, "dead letters"
        )
        assert sorted(json.loads(m.data)["event_id"] for m in letters) == sorted(bad)
        assert all("UInt8" in m.headers["Jetsink-Error"] for m in letters)
        rows = dict(clickhouse_client.execute(f"SELECT event_id, code FROM {db}.events"))
        assert len(rows) == n - len(bad) == _count(clickhouse_client, db)
        assert all(rows[_id(i)] == i % 200 for i in range(n) if _id(i) not in bad)
        assert sup.logged("changed under a batch")  # the held batch was mapped again
        _ran_through(sup, 1)
    finally:
        sup.close()


def test_drop_table_and_create_it_again(tmp_path, nats_url, clickhouse_server, clickhouse_client, ch_database):
    db = ch_database
    # The pause retries every 5 s and more; an ack_wait longer than that keeps the held
    # messages from being redelivered meanwhile (which would store them twice).
    sup, prefix, names = _start(tmp_path, nats_url, clickhouse_server, clickhouse_client, db, ack_wait_s=30)
    n = 3000
    load = Load(nats_url, prefix, 0, n, RATE)
    try:
        load.start()
        sup.wait(lambda: _count(clickhouse_client, db) >= 300, 60, "rows before the change")
        clickhouse_client.execute(f"DROP TABLE {db}.events")
        after = load.published + 1  # published once the table was gone: each must reach the new one
        line = sup.wait(lambda: sup.logged("paused"), 60, "the pipeline to pause")[0]
        assert "does not exist" in line["msg"] and "code 60" in line["msg"]
        assert sup.wait(lambda: sup.logged(f"table {db}.events does not exist"), 30, "the supervisor to say so")
        t0 = time.monotonic()
        # Created again without `payload` and with a new column: the held batches are mapped again.
        recreated = DEMO_TABLE.format(table=f"{db}.events").replace(", payload String", ", note String DEFAULT 'none'")
        assert recreated != DEMO_TABLE.format(table=f"{db}.events")
        clickhouse_client.execute(recreated)
        took = _effect(sup, t0, lambda: _count(clickhouse_client, db) > 0, "rows in the new table")
        _report("DROP TABLE + CREATE TABLE", took)
        assert load.join_checked(120) == n
        # What the old table held went with it; every event published after the DROP is in the new one, once.
        later = f"event_id >= '{_id(after)}'"
        sup.wait(lambda: _count(clickhouse_client, db, later) >= n - after, 120, "every later event")
        got = clickhouse_client.execute(f"SELECT uniqExact(event_id), count() FROM {db}.events")[0]
        assert got[0] == got[1]  # none twice
        assert _count(clickhouse_client, db, later) == n - after
        assert not _dead_letters(nats_url, names["stream"])
        assert "dropped payload" in sup.logged("changed, schema")[0]["msg"]
        _ran_through(sup, 2)
    finally:
        sup.close()
