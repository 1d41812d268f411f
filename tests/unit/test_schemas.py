"""The supervisor's book of table versions: each change logged once, counted, and shown by status."""

from __future__ import annotations

import logging

from prometheus_client.parser import text_string_to_metric_families

from supervisor.metrics import render_prometheus
from supervisor.schemas import SchemaBook
from supervisor.status import render_status_table

OLD = [["id", "String", "", ""], ["payload", "String", "", ""]]
NEW = [["id", "String", "", ""], ["note", "String", "DEFAULT", "''"]]


def _report(digest, read_at, columns=None, problem=None):
    msg = {"op": "schema", "pipeline": "events", "table": "db.events", "digest": digest, "read_at": read_at,
           "problem": problem}
    if columns is not None:
        msg["columns"] = columns
    return msg


def _changes(caplog):
    return [r.getMessage() for r in caplog.records if "changed, schema" in r.getMessage()]


def test_a_change_seen_by_every_worker_is_logged_and_counted_once(caplog):
    book = SchemaBook()
    with caplog.at_level(logging.INFO, logger="jetsink.supervisor"):
        book.seen(0, _report("aaa", 10.0, OLD))
        book.seen(1, _report("aaa", 10.5, OLD))
        book.seen(0, _report("bbb", 20.0, NEW))
        book.seen(1, _report("bbb", 20.2, NEW))
        book.seen(1, _report("bbb", 50.0))  # a later periodic read: no columns, no news
    assert _changes(caplog) == [
        "pipeline events: table db.events changed, schema aaa -> bbb: added note String; dropped payload"
    ]
    entry = book.snapshot([0, 1])["events"]
    assert (entry["digest"], entry["since"], entry["read_at"], entry["changes"]) == ("bbb", 20.0, 50.0, 1)
    assert entry["slots"] == {"0": "bbb", "1": "bbb"}


def test_a_read_older_than_the_change_does_not_flip_it_back(caplog):
    book = SchemaBook()
    with caplog.at_level(logging.INFO, logger="jetsink.supervisor"):
        book.seen(0, _report("aaa", 10.0, OLD))
        book.seen(0, _report("bbb", 20.0, NEW))
        book.seen(1, _report("aaa", 19.0, OLD))  # read just before the change, arrived after
    assert len(_changes(caplog)) == 1
    entry = book.snapshot([0, 1])["events"]
    assert entry["digest"] == "bbb" and entry["slots"] == {"0": "bbb", "1": "aaa"}
    assert book.snapshot([0])["events"]["slots"] == {"0": "bbb"}  # a gone worker is not shown


def test_a_problem_is_logged_when_it_starts_and_when_it_ends(caplog):
    book = SchemaBook()
    with caplog.at_level(logging.INFO, logger="jetsink.supervisor"):
        book.seen(0, _report("aaa", 10.0, OLD))
        for slot in (0, 1, 0):
            book.seen(slot, _report("aaa", 11.0 + slot, problem="table db.events does not exist"))
        book.seen(0, _report("aaa", 20.0))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["pipeline events: table db.events: table db.events does not exist"]
    assert any("can be read and mapped again" in r.getMessage() for r in caplog.records)
    assert book.snapshot([0])["events"]["problem"] is None


def test_status_and_metrics_show_each_tables_version():
    book = SchemaBook()
    book.seen(0, _report("aaa", 100.0, OLD))
    book.seen(0, _report("bbb", 200.0, NEW))
    book.seen(1, _report("aaa", 150.0, OLD))
    snapshot = {"started_at": 0.0, "taken_at": 260.0, "draining": False, "workers": [],
                "schemas": book.snapshot([0, 1])}
    table = render_status_table(snapshot, now=260.0)
    assert "events    db.events  bbb     1m00s ago  1m00s ago  1" in table
    assert "events: worker(s) 1 still on an older schema" in table
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(render_prometheus(snapshot)) for sample in family.samples
    }
    labels = (("pipeline", "events"), ("table", "db.events"))
    assert values[("jetsink_schema_changes_total", labels)] == 1
    assert values[("jetsink_schema_read_timestamp_seconds", labels)] == 200.0
