import gc
import weakref

import pytest
from clickhouse_driver import errors as ch
from hypothesis import given
from hypothesis import strategies as st

from workers.clickhouse.faults import Fault, classify, describe, isolate_bad_rows


def server_error(code):
    return ch.ServerException("DB::Exception: something. Stack trace:\n0. frames", code=code)


def test_classification_by_code_and_type():
    assert classify(server_error(60)) is Fault.PIPELINE  # unknown table
    assert classify(server_error(516)) is Fault.PIPELINE  # authentication failed
    assert classify(server_error(53)) is Fault.ROWS  # type mismatch
    assert classify(server_error(252)) is Fault.RETRYABLE  # too many parts
    assert classify(server_error(123456)) is Fault.RETRYABLE  # unknown: pause, never dead-letter
    assert classify(ch.NetworkError("refused")) is Fault.RETRYABLE
    assert classify(ConnectionResetError()) is Fault.RETRYABLE
    assert classify(TypeError("bad value for UInt8")) is Fault.ROWS


def test_describe_keeps_the_message_not_the_stack():
    text = describe(server_error(53))
    assert "code 53" in text and "Stack trace" not in text and "\n" not in text


class Table:
    """A stand-in for ClickHouse's row check only: refuses any part holding a bad value."""

    def __init__(self, bad):
        self.bad = bad
        self.rows = []
        self.calls = 0

    def insert(self, columns):
        self.calls += 1
        if any(v in self.bad for v in columns[0]):
            raise server_error(53)
        self.rows.extend(columns[0])


@given(st.integers(1, 300), st.data())
def test_bisection_finds_exactly_the_bad_rows_and_inserts_the_rest_once(n, data):
    bad_idx = data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 8)))
    values = list(range(n))
    table = Table({values[i] for i in bad_idx})
    refused = isolate_bad_rows(table.insert, [values, [str(v) for v in values]], n)
    assert sorted(i for i, _ in refused) == sorted(bad_idx)
    # In row order, each good row once.
    assert table.rows == [v for i, v in enumerate(values) if i not in bad_idx]
    # Work stays logarithmic per bad row, not a row-by-row retry.
    assert table.calls <= 1 + 2 * len(bad_idx) * (n.bit_length() + 1)


class Column(list):
    """A list that can be watched with a weak reference."""


@pytest.mark.parametrize("bad", [set(), {3}])
def test_a_batch_is_freed_by_reference_counting_when_its_insert_returns(bad):
    # Workers rely on this: the cyclic GC runs rarely in them (workers/worker.py), so a
    # reference cycle holding a batch would hold it (and its memory) for long.
    gc.disable()
    try:
        columns = [Column(range(10)), Column(map(str, range(10)))]
        table = Table(bad)
        refs = [weakref.ref(c) for c in columns]
        refused = isolate_bad_rows(table.insert, columns, 10)
        assert [i for i, _ in refused] == sorted(bad)
        assert len(table.rows) == 10 - len(bad)
        del columns, refused
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_retryable_errors_while_bisecting_propagate():
    def insert(columns):
        raise ch.NetworkError("gone")

    try:
        isolate_bad_rows(insert, [[1, 2]], 2)
    except ch.NetworkError:
        pass
    else:
        raise AssertionError("a retryable error must reach the caller")



def test_a_column_the_client_cannot_write_pauses_instead_of_dead_lettering():
    from workers.clickhouse.faults import ColumnUnwritable

    calls = []

    def insert(columns):
        calls.append(len(columns[0]))
        raise ValueError("too many values to unpack (expected 2)")  # the driver, on every row

    def writable(part):
        raise ColumnUnwritable("column m of type Map(...) cannot be written")

    with pytest.raises(ColumnUnwritable):
        isolate_bad_rows(insert, [[1, 2, 3, 4]], 4, writable=writable)
    assert calls == [4]  # no bisection: nothing was dead-lettered
    assert classify(ColumnUnwritable("x")) is Fault.PIPELINE


def test_a_client_side_row_problem_is_still_bisected_when_every_column_can_be_written():
    table = Table(bad={2})

    def insert(columns):
        if any(v in table.bad for v in columns[0]):
            raise TypeError("bad value")
        table.rows.extend(columns[0])

    seen = []
    bad = isolate_bad_rows(insert, [[0, 1, 2, 3]], 4, writable=seen.append)
    assert [i for i, _ in bad] == [2] and sorted(table.rows) == [0, 1, 3]
    assert len(seen) == 1  # asked once, for the whole batch


def test_server_refusals_are_not_asked_about_the_client():
    def insert(columns):
        if 2 in columns[0]:
            raise server_error(53)

    def writable(part):
        raise AssertionError("a server refusal is about rows")

    assert [i for i, _ in isolate_bad_rows(insert, [[0, 1, 2]], 3, writable=writable)] == [2]
