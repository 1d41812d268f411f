"""A pipeline's table in a worker: versions, re-reads, and a batch mapped again when its table changed.

The table here is a list of columns and a stand-in insert that refuses what ClickHouse
18.16 refuses (tests/integration/test_table_changes.py does it against the real server).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_driver import errors as ch

from supervisor.config import parse_config
from workers.clickhouse import faults, indoubt
from workers.clickhouse.schema import ServerFeatures, TableColumn, compile_mapper
from workers.clickhouse.table_schema import SchemaVersion, TableSchema, column_changes, schema_digest
from workers.partition.prepare import PartitionTarget, prepare

FEATURES = ServerFeatures.from_version((18, 16, 1))
PIPELINE = {"name": "events", "stream": "EVENTS", "subject": "events.*", "partitions": 1, "table": "t"}


class Table:
    """Columns that can change, and an insert that checks names and types as the server and driver do."""

    def __init__(self, *columns: tuple[str, str]) -> None:
        self.columns = [TableColumn(n, t) for n, t in columns]
        self.rows: list[dict] = []

    def read(self) -> list[TableColumn]:
        return list(self.columns)

    def insert(self, names, columns) -> int:
        types = {c.name: c.type for c in self.columns}
        if not self.columns:
            raise ch.ServerException("Table default.t doesn't exist.", code=60)
        for name in names:
            if name not in types:
                raise ch.ServerException(f"No such column {name} in table t.", code=16)
        for name, values in zip(names, columns, strict=False):
            if types[name].startswith("UInt") and not all(type(v) is int for v in values):
                raise ch.TypeMismatchError(f"Column {name}: required argument is not an integer")
        self.rows += [dict(zip(names, row, strict=False)) for row in zip(*columns, strict=False)]
        return len(columns[0]) if columns else 0


def _schema(table: Table, reports: list | None = None, unknown_keys: str = "ignore") -> TableSchema:
    schema = TableSchema(
        "events", "default.t", 30.0, table.read,
        lambda cols: compile_mapper("t", cols, (), FEATURES, unknown_keys=unknown_keys),
        (reports if reports is not None else []).append,
    )
    schema.read("start")
    return schema


def _target(**pipeline):
    config = parse_config({"pipelines": [{**PIPELINE, **pipeline}]}, Path("/tmp"))
    return PartitionTarget(pipeline=config.pipelines[0], index=0, consumer="c", worker=0)


def _msg(i: int, body: bytes) -> tuple:
    return (b"events.0.k%d" % i, b"$JS.ACK.EVENTS.c.1.%d.%d.1700000000000000000.0" % (100 + i, i + 1), body, None)


def _store(schema: TableSchema, table: Table, msgs: list[tuple], target) -> tuple:
    prepared = schema.prepare(prepare, msgs, target)
    refused, remapped = schema.store(prepare, table.insert, msgs, prepared, target)
    return prepared, refused, remapped


def test_the_digest_follows_names_types_and_defaults():
    a = [TableColumn("id", "String"), TableColumn("n", "UInt8")]
    assert schema_digest(a) == schema_digest(list(a))
    assert schema_digest(a) != schema_digest([a[0], TableColumn("n", "UInt16")])
    assert schema_digest(a) != schema_digest([a[0], TableColumn("n", "UInt8", "DEFAULT", "1")])


def test_column_changes_in_words():
    old = [["id", "String", "", ""], ["payload", "String", "", ""], ["n", "UInt8", "", ""]]
    new = [["id", "String", "", ""], ["n", "UInt32", "", ""], ["note", "String", "DEFAULT", "''"]]
    assert column_changes(old, new) == "added note String; dropped payload; retyped n UInt8 -> UInt32"
    assert column_changes(new, [*new[:2], ["note", "String", "DEFAULT", "'x'"]]) == "default changed note"


def test_a_read_switches_the_mapper_only_when_the_columns_changed():
    table = Table(("id", "String"))
    reports: list = []
    schema = _schema(table, reports)
    first = schema.current
    assert isinstance(first, SchemaVersion) and schema.mapper.column_names == ("id",)
    assert schema.read("periodic") is False and schema.current is first
    table.columns.append(TableColumn("note", "String"))
    assert schema.read("periodic") is True
    assert schema.mapper.column_names == ("id", "note") and schema.current.digest != first.digest
    # Columns travel with the first report of each version only.
    assert [("columns" in r, r["digest"]) for r in reports] == [
        (True, first.digest), (False, first.digest), (True, schema.current.digest)
    ]


def test_a_gone_or_unmappable_table_pauses_and_keeps_the_mapper():
    table = Table(("id", "String"))
    reports: list = []
    schema = _schema(table, reports)
    kept = schema.current
    table.columns = []
    with pytest.raises(faults.TableUnusable, match="table default.t does not exist"):
        schema.read("periodic")
    table.columns = [TableColumn("id", "String"), TableColumn("agg", "AggregateFunction(uniq, String)")]
    with pytest.raises(faults.TableUnusable, match="cannot be mapped: .*AggregateFunction"):
        schema.read("periodic")
    assert schema.current is kept
    assert faults.classify(faults.TableUnusable("x")) is faults.Fault.PIPELINE
    assert [r["problem"] is not None for r in reports] == [False, True, True]
    schema.refresh("periodic")  # never raises: a periodic check keeps going
    assert schema.current is kept


def test_a_dropped_column_makes_the_batch_mapped_again_and_its_key_unknown():
    table = Table(("id", "String"), ("payload", "String"))
    schema = _schema(table)
    target = _target()
    msgs = [_msg(i, b'{"id": "x%d", "payload": "p"}' % i) for i in range(5)]
    prepared = schema.prepare(prepare, msgs, target)
    assert prepared.mapper.column_names == ("id", "payload")
    table.columns = [TableColumn("id", "String")]  # ALTER TABLE t DROP COLUMN payload, after the batch was mapped
    refused, remapped = schema.store(prepare, table.insert, msgs, prepared, target)
    assert (refused, remapped) == ([], [])
    assert table.rows == [{"id": f"x{i}"} for i in range(5)] and prepared.rows == 5
    assert schema.mapper.column_names == ("id",)


def test_with_unknown_keys_dead_letter_the_dropped_columns_key_is_dead_lettered():
    table = Table(("id", "String"), ("payload", "String"))
    schema = _schema(table, unknown_keys="dead_letter")
    target = _target(unknown_keys="dead_letter")
    msgs = [_msg(0, b'{"id": "a", "payload": "p"}'), _msg(1, b'{"id": "b"}')]
    prepared = schema.prepare(prepare, msgs, target)
    table.columns = [TableColumn("id", "String")]
    refused, remapped = schema.store(prepare, table.insert, msgs, prepared, target)
    assert refused == [] and [(d.stream_seq, d.reason) for d in remapped] == [(100, "unknown_key")]
    assert table.rows == [{"id": "b"}]
    assert prepared.rows - len(remapped) == 1  # what the partition counts as inserted


def test_a_narrowed_column_dead_letters_exactly_the_values_it_cannot_hold_naming_the_new_type():
    table = Table(("id", "String"), ("code", "String"))
    schema = _schema(table)
    target = _target()
    codes = ["5", "abc", "300", "7"]
    msgs = [_msg(i, b'{"id": "x%d", "code": "%s"}' % (i, c.encode())) for i, c in enumerate(codes)]
    prepared = schema.prepare(prepare, msgs, target)
    table.columns = [TableColumn("id", "String"), TableColumn("code", "UInt8")]  # MODIFY COLUMN code UInt8
    refused, remapped = schema.store(prepare, table.insert, msgs, prepared, target)
    assert refused == []
    assert sorted(d.stream_seq - 100 for d in remapped) == [1, 2]
    assert all("UInt8" in d.error for d in remapped)
    assert table.rows == [{"id": "x0", "code": 5}, {"id": "x3", "code": 7}]
    assert prepared.rows == 4 and sorted(prepared.row_msgs) == [0, 3]


def test_refused_documents_make_the_table_read_again_before_they_are_dead_lettered():
    table = Table(("id", "String"), ("n", "UInt8"))
    schema = _schema(table)
    table.columns = [TableColumn("id", "String"), TableColumn("n", "UInt32")]  # widened; not read yet
    prepared = schema.prepare(prepare, [_msg(0, b'{"id": "a", "n": 1000}')], _target())
    assert prepared.dead == [] and prepared.columns == [["a"], [1000]]
    assert prepared.mapper is schema.mapper and schema.mapper.column_names == ("id", "n")


def test_a_gone_table_under_an_insert_is_a_pause_naming_the_table_and_the_server_error():
    table = Table(("id", "String"))
    schema = _schema(table)
    target = _target()
    msgs = [_msg(0, b'{"id": "a"}')]
    prepared = schema.prepare(prepare, msgs, target)
    table.columns = []
    with pytest.raises(faults.TableUnusable, match=r"does not exist; the insert said: .*code 60"):
        schema.store(prepare, table.insert, msgs, prepared, target)
    assert prepared.rows == 1 and table.rows == []  # untouched: the retry starts from the same batch
    table.columns = [TableColumn("id", "String")]
    assert schema.store(prepare, table.insert, msgs, prepared, target) == ([], [])
    assert table.rows == [{"id": "a"}]


def test_a_change_found_while_bisecting_keeps_the_rows_already_stored():
    calls = []

    def insert(columns):
        calls.append(list(columns[0]))
        if 3 in columns[0]:
            raise ch.ServerException("Cannot parse", code=6)

    def check(exc):
        if len(calls) >= 3:
            raise faults.TableChanged()

    with pytest.raises(faults.TableChanged) as caught:
        faults.isolate_bad_rows(insert, [list(range(6))], 6, check)
    assert calls[:2] == [[0, 1, 2, 3, 4, 5], [0, 1, 2]]
    assert caught.value.stored == [0, 1, 2]


def test_schema_faults():
    assert faults.classify(ch.ServerException("No such column b in table t.", code=16)) is faults.Fault.SCHEMA
    assert faults.table_in_question(ch.ServerException("No such column", code=16))
    assert faults.table_in_question(ch.ServerException("Table t doesn't exist.", code=60))
    assert faults.table_in_question(ch.TypeMismatchError("Column s: required argument is not an integer"))
    assert not faults.table_in_question(ch.ServerException("Too many parts", code=252))
    assert not faults.table_in_question(ConnectionResetError())


def test_schema_refresh_s_defaults_to_30_and_0_turns_the_periodic_check_off():
    from workers.settings import ConfigError

    assert _target().pipeline.schema_refresh_s == 30.0
    assert _target(schema_refresh_s=0).pipeline.schema_refresh_s == 0.0
    assert not TableSchema("p", "t", 0.0, list, list).due(1e12)
    with pytest.raises(ConfigError, match=r"pipelines\[0\]\.schema_refresh_s"):
        _target(schema_refresh_s=-1)


def test_rows_mapped_again_after_a_change_go_under_an_identity_of_their_own():
    """The first mapping's insert (refused by the changed table) and the second one's carry
    different query_ids and tokens: the server must not take the second for a resend of the
    first (dropping it by token), and a next owner must see that other rows landed."""
    table = Table(("id", "String"), ("payload", "String"))
    schema = _schema(table)
    target = _target()
    msgs = [_msg(i, b'{"id": "x%d", "payload": "p"}' % i) for i in range(4)]
    prepared = schema.prepare(prepare, msgs, target)
    table.columns = [TableColumn("id", "String")]
    sent = []

    def insert(names, columns):
        sent.append(indoubt.current.get())
        return table.insert(names, columns)

    ident = indoubt.identity("events", 0, 100, 103, 1, tokens=True)
    assert indoubt.run_as(ident, schema.store, prepare, insert, msgs, prepared, target) == ([], [])
    assert sent == [ident, ident.remapped(1)]
    assert len({i.query_id for i in sent}) == len({i.token for i in sent}) == 2
    assert sent[1].query_id.startswith(ident.query_id + "-")  # what landed() looks for beside the batch's own
    assert indoubt.current.get() is None  # restored after the batch
    assert table.rows == [{"id": f"x{i}"} for i in range(4)]


def test_a_column_the_driver_cannot_write_pauses_the_pipeline_and_dead_letters_nothing():
    from workers.clickhouse import native

    was = native.installed()
    native.uninstall()  # the driver alone splits this Map's type wrongly (ValueError) for every row
    try:
        table = Table(("id", "UInt32"), ("m", "Map(String, Tuple(x Int8, y Nullable(String)))"))
        calls = []

        def insert(names, columns):
            calls.append(len(columns[0]))
            raise ValueError("too many values to unpack (expected 2)")

        modern = ServerFeatures.from_version((23, 8, 1))
        schema = TableSchema(
            "events", "default.t", 30.0, table.read, lambda cols: compile_mapper("t", cols, (), modern)
        )
        schema.read("start")
        msgs = [_msg(i, b'{"id": %d, "m": {"k": [1, null]}}' % i) for i in range(4)]
        prepared = schema.prepare(prepare, msgs, _target())
        with pytest.raises(faults.ColumnUnwritable) as info:
            schema.store(prepare, insert, msgs, prepared, _target())
        assert "column m of type Map(String, Tuple(x Int8, y Nullable(String)))" in str(info.value)
        assert calls == [4]  # not bisected
        assert faults.classify(info.value) is faults.Fault.PIPELINE
    finally:
        (native.install if was else native.uninstall)()


def test_a_column_left_to_the_server_is_logged_once_per_version(caplog):
    table = Table(("id", "UInt32"), ("v", "Nullable(Unknownish)"))
    with caplog.at_level("WARNING", logger="workers.clickhouse.table_schema"):
        schema = _schema(table)
        schema.read("periodic")
        schema.read("periodic")
    (record,) = caplog.records
    assert "column v Nullable(Unknownish) is left to the server" in record.getMessage()


class Clock:
    """A monotonic clock the test moves; sleep() moves it too (and records the wait)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 3))
        self.now += s


def _watched(table: Table, clock: Clock) -> tuple[TableSchema, list]:
    reads = []

    def read():
        reads.append(clock.now)
        return table.read()

    schema = TableSchema("events", "default.t", 30.0, read, lambda cols: compile_mapper("t", cols, (), FEATURES),
                         clock=clock, sleep=clock.sleep)
    schema.read("start")
    reads.clear()
    return schema, reads


def test_a_key_no_column_reads_makes_the_table_be_read_before_the_batch_is_mapped():
    table, clock = Table(("id", "String")), Clock()
    schema, reads = _watched(table, clock)
    target = _target()
    clock.now += 5
    _store(schema, table, [_msg(0, b'{"id": "a"}')], target)
    assert reads == []  # only known keys: nothing read
    # The column is added (ALTER TABLE), then the first message carrying its key comes.
    table.columns.append(TableColumn("note", "String"))
    prepared, _, _ = _store(schema, table, [_msg(1, b'{"id": "b", "note": "n1"}')], target)
    assert len(reads) == 1 and table.rows[-1] == {"id": "b", "note": "n1"}
    assert prepared.mapper.column_names == ("id", "note")


def test_a_key_that_matches_no_column_is_looked_up_at_most_once_a_second_and_a_new_one_waits_for_it():
    table, clock = Table(("id", "String")), Clock()
    schema, reads = _watched(table, clock)
    target = _target()
    clock.now += 5
    for i in range(3):  # the same unknown key in three batches within the second: one read
        _store(schema, table, [_msg(i, b'{"id": "a", "x": 1}')], target)
        clock.now += 0.1
    assert len(reads) == 1 and clock.slept == []
    # A key never seen before, 0.3 s after that read: the batch waits out the second, then reads.
    table.columns.append(TableColumn("y", "UInt8"))
    _store(schema, table, [_msg(5, b'{"id": "b", "y": 7}')], target)
    assert clock.slept == [0.7] and len(reads) == 2 and table.rows[-1] == {"id": "b", "y": 7}
    # A second later the known-unknown key is looked up again (a column may have been added for it).
    table.columns.append(TableColumn("x", "UInt8"))
    clock.now += 1.0
    _store(schema, table, [_msg(6, b'{"id": "c", "x": 2, "y": 1}')], target)
    assert len(reads) == 3 and table.rows[-1] == {"id": "c", "y": 1, "x": 2}


def test_keys_that_are_data_stop_the_lookups_after_a_thousand():
    table, clock = Table(("id", "String")), Clock()
    schema, reads = _watched(table, clock)
    target = _target()
    clock.now += 5
    body = b'{"id": "a", %s}' % b", ".join(b'"k%d": 1' % i for i in range(1001))
    _store(schema, table, [_msg(0, body)], target)
    assert len(reads) == 1
    for i in range(3):
        clock.now += 2
        _store(schema, table, [_msg(i + 1, b'{"id": "a", "new%d": 1}' % i)], target)
    assert len(reads) == 1  # no more reads for keys: the periodic check and SIGHUP remain


def test_rows_leaving_a_column_to_the_server_are_inserted_in_groups_each_asked_about_when_in_doubt():
    table = Table(("id", "String"), ("n", "UInt8"))
    table.columns[1] = TableColumn("n", "UInt8", "DEFAULT", "length(id)")  # computed per row by the server
    schema = TableSchema("events", "default.t", 30.0, table.read, lambda cols: compile_mapper("t", cols, (), FEATURES))
    schema.read("start")
    target = _target()
    msgs = [_msg(0, b'{"id": "a", "n": 7}'), _msg(1, b'{"id": "bb"}'), _msg(2, b'{"id": "c", "n": 9}')]
    sent = []

    def insert(names, columns):
        sent.append((tuple(names), indoubt.current.get().query_id))
        return table.insert(names, columns)

    ident = indoubt.identity("events", 0, 100, 102, 1, tokens=False)
    prepared = schema.prepare(prepare, msgs, target)
    indoubt.run_as(ident, schema.store, prepare, insert, msgs, prepared, target)
    assert [names for names, _ in sent] == [("id", "n"), ("id",)]  # the rows sending n, then the one omitting it
    assert table.rows == [{"id": "a", "n": 7}, {"id": "c", "n": 9}, {"id": "bb"}]
    assert sent[0][1] == ident.query_id and sent[1][1].startswith(ident.query_id + "-o")
    # Sent again in doubt: the group found in the query log is not sent again.
    sent.clear()
    asked = []

    def landed(query_id):
        asked.append(query_id)
        return query_id == ident.query_id

    prepared = schema.prepare(prepare, msgs, target)
    indoubt.run_as(ident, schema.store, prepare, insert, msgs, prepared, target, landed)
    assert asked == [ident.query_id, sent[0][1]] and [names for names, _ in sent] == [("id",)]
