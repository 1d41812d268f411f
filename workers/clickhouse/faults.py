"""What a failed insert means: retry it, pause the pipeline, or isolate the bad rows.

ClickHouse tells by exception code; the network tells by exception type. The answers
lead to these behaviours in the partition's commit:

- RETRYABLE: the server or the path to it is unwell (down, overloaded, timing out).
  Retry the same batch with capped backoff; nothing is dead-lettered.
- PIPELINE: the pipeline cannot work at all (table gone, no rights, wrong password).
  Every batch would fail the same way, so dead-lettering would empty the stream into
  the DLQ: pause and retry slowly, with a clear error.
- ROWS: something in the data was refused. Split the batch to find the rows and
  dead-letter only those.
- SCHEMA: the INSERT names a column the table no longer has. Once the table has
  been read again (below) and has not changed after all, retried like RETRYABLE.

A table can change under a batch (ALTER TABLE, a table dropped and created again), and
then the batch's failure says nothing about its rows: a dropped column is an unknown
column, a retyped one shows as values the driver cannot write (a row fault), a dropped
table as a pipeline fault. So before any of those is acted on, `isolate_bad_rows` lets
the caller read the table again (its `check`, workers/clickhouse/table_schema.py), which raises
TableChanged (map the rows again and insert them) or TableUnusable (pause).
"""

from __future__ import annotations

import enum
import socket
import struct
from typing import Any, Callable

from clickhouse_driver import errors as ch

from workers.clickhouse import indoubt


class Fault(enum.Enum):
    RETRYABLE = "retryable"
    PIPELINE = "pipeline"
    ROWS = "rows"
    SCHEMA = "schema"


class TableChanged(Exception):
    """The table's columns changed under a batch: map its rows again.

    ``stored`` holds the indices of the rows inserted before the change was found.
    """

    def __init__(self, stored: list[int] | None = None) -> None:
        super().__init__("the table changed under the batch")
        self.stored = stored or []


class TableUnusable(Exception):
    """The table is gone, or changed so that it can no longer be mapped: pause the pipeline, dead-letter nothing."""


class ColumnUnwritable(TableUnusable):
    """The client library cannot write a column at all (every row of it fails): not a row problem."""


# Codes are stable across ClickHouse versions (src/Common/ErrorCodes.cpp).
_SCHEMA_CODES = {
    8,    # THERE_IS_NO_COLUMN
    16,   # NO_SUCH_COLUMN_IN_TABLE (18.16 and later, for an INSERT naming a dropped column)
    47,   # UNKNOWN_IDENTIFIER
}
_TABLE_GONE_CODES = {
    60,   # UNKNOWN_TABLE
    81,   # UNKNOWN_DATABASE
    218,  # TABLE_IS_DROPPED
}
_PIPELINE_CODES = _TABLE_GONE_CODES | {
    192,  # UNKNOWN_USER
    193,  # WRONG_PASSWORD
    194,  # REQUIRED_PASSWORD
    497,  # ACCESS_DENIED
    516,  # AUTHENTICATION_FAILED
}
_ROW_CODES = {
    6, 26, 27, 38, 41, 72, 376,  # CANNOT_PARSE_* (text, quoted string, escaped string, date, datetime, number, uuid)
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
}


def classify(exc: BaseException) -> Fault:
    """Sort an insert failure into one of the behaviours above."""
    if isinstance(exc, TableUnusable):
        return Fault.PIPELINE
    if isinstance(exc, ch.ServerException):
        if exc.code in _SCHEMA_CODES:
            return Fault.SCHEMA
        if exc.code in _PIPELINE_CODES:
            return Fault.PIPELINE
        if exc.code in _ROW_CODES:
            return Fault.ROWS
        # Unknown server codes (too many parts, memory limit, timeouts, readonly
        # replicas...) are treated as passing: pausing loses nothing, dead-lettering would.
        return Fault.RETRYABLE
    if isinstance(exc, (ch.NetworkError, ch.SocketTimeoutError, ConnectionError, socket.timeout, EOFError, OSError)):
        return Fault.RETRYABLE
    if isinstance(exc, (ch.TypeMismatchError, struct.error, TypeError, ValueError, OverflowError, AttributeError)):
        # The driver refused to serialise a value: a row problem found on the client.
        return Fault.ROWS
    return Fault.RETRYABLE


# Failures of one replica rather than of the shard or of the data: another replica of the shard
# takes the insert (workers/clickhouse/replicas.py).  Quorum failures that concern the whole
# shard (285 too few live replicas, 286 another quorum insert running) are not among them.
_REPLICA_CODES = {
    225,  # NO_ZOOKEEPER: the server has no ZooKeeper session (yet)
    242,  # TABLE_IS_READ_ONLY: a Replicated table whose ZooKeeper session is lost
    319,  # UNKNOWN_STATUS_OF_INSERT: a quorum insert whose outcome this replica cannot tell
    999,  # KEEPER_EXCEPTION: ZooKeeper connection loss, session expired
}


def replica_local(exc: BaseException) -> bool:
    """Whether a failure is this replica's (unreachable, or a ZooKeeper/quorum trouble of its own):
    another replica of the shard is worth trying."""
    return unreachable(exc) or (isinstance(exc, ch.ServerException) and exc.code in _REPLICA_CODES)


def unreachable(exc: BaseException) -> bool:
    """Whether a failure is about reaching the server (refused, reset, timed out), not about what
    it answered: such a step is worth trying again the moment the server answers again."""
    if isinstance(exc, ch.ServerException):
        return False
    return isinstance(exc, (ch.NetworkError, ch.SocketTimeoutError, ConnectionError, socket.timeout, EOFError, OSError))


def table_in_question(exc: BaseException) -> bool:
    """Whether a failed insert may come from a change of the table (read it again before acting)."""
    fault = classify(exc)
    return fault is Fault.SCHEMA or fault is Fault.ROWS or getattr(exc, "code", None) in _TABLE_GONE_CODES


def isolate_bad_rows(
    insert: Callable[[list[list]], Any],
    columns: list[list],
    rows: int,
    check: Callable[[BaseException], None] | None = None,
    writable: Callable[[list[list]], None] | None = None,
) -> list[tuple[int, BaseException]]:
    """Insert `columns` (rows x len(columns)), bisecting around rows the server refuses.

    Returns (row index, error) for each refused row; every other row is inserted once.
    A retryable or pipeline fault while bisecting is raised: the caller retries the
    whole batch, and rows already inserted by then may be inserted twice (at-least-once).
    `check(exc)` sees every failure first; a TableChanged it raises leaves with the
    rows inserted so far in its ``stored``.  `writable(part)` sees a failure of the
    client library first, before any bisecting: a ColumnUnwritable it raises (a column
    no row of which can be written) pauses the pipeline instead of dead-lettering every row.
    """
    bad: list[tuple[int, BaseException]] = []
    ident = indoubt.current.get()
    stored: list[tuple[int, int]] = []
    # A loop over a stack of row ranges, not a recursive closure: a closure that refers
    # to itself is a reference cycle, and it would keep every batch's columns alive
    # until the cyclic GC ran (and make that GC walk them all).
    ranges = [(0, rows)] if rows else []
    while ranges:
        lo, hi = ranges.pop()
        # A copy per attempt, handed over to the driver: it rewrites some columns in place
        # (workers/clickhouse/native.py columns_handed_over), and a failed attempt's copy is not used again.
        part = [col[lo:hi] for col in columns]
        try:
            if (lo, hi) == (0, rows) or ident is None:
                insert(part)
            else:
                # A part of the batch is a block of its own: its own identity, the same on a resend.
                indoubt.run_as(ident.part(lo, hi), insert, part)
            stored.append((lo, hi))
            continue
        except Exception as exc:
            if check is not None:
                try:
                    check(exc)
                except TableChanged as change:
                    change.stored = [i for a, b in stored for i in range(a, b)]
                    raise
            if classify(exc) is not Fault.ROWS:
                raise
            if writable is not None and not isinstance(exc, ch.ServerException) and (lo, hi) == (0, rows):
                writable(columns)  # raises ColumnUnwritable when a whole column cannot be written
            if hi - lo == 1:
                bad.append((lo, exc.with_traceback(None)))
                continue
        mid = (lo + hi) // 2
        ranges.append((mid, hi))
        ranges.append((lo, mid))  # popped first: rows are tried in order
    return bad


def describe(exc: BaseException) -> str:
    """One line naming the error, for logs and dead-letter headers."""
    code = getattr(exc, "code", None)
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    # Server exceptions carry a stack trace after the first lines; keep the message.
    text = text.split(" Stack trace:")[0][:500]
    return f"{type(exc).__name__}{f' (code {code})' if code else ''}: {text}"

