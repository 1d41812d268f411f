"""A pipeline's table as this worker last read it: the current ColumnMapper, and when to read it again.

Tables change while jetsink runs (ALTER TABLE ... ADD / DROP / MODIFY COLUMN, a table
dropped and created again). A worker keeps one :class:`TableSchema` per pipeline; its
partitions ask it for the mapper as they prepare a batch, so every batch prepared after
a new read uses the new mapper. The table is read again:

- every ``pipelines[].schema_refresh_s`` (:class:`SchemaWatch`): how an added column is
  found, since inserts that leave it out go on succeeding;
- at once when the supervisor asks ({"op": "refresh_schema"}, sent on SIGHUP);
- when the mapper refuses documents of a batch: a widened column takes values the old
  mapper refused, an added column makes a key known that was unknown;
- when an insert fails in a way a change of the table explains (workers/clickhouse/faults.py):
  :meth:`TableSchema.store` then maps the rows not yet stored again and inserts them.
  A dropped column's key becomes an unknown key (the pipeline's ``unknown_keys`` rule);
  a value the new type cannot hold is dead-lettered with that type in its reason.

A table that is gone, or that changed so that it can no longer be mapped, is
:class:`faults.TableUnusable`: the pipeline pauses, nothing is dead-lettered.

Every read runs in the worker's insert thread, which owns the ClickHouse client; the
event loop only reads ``current`` (replaced, never mutated). Each read is reported to
the supervisor ({"op": "schema", ...}), which logs each change once and shows the
versions in ``status`` (supervisor/schemas.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from itertools import count
from typing import Any, Awaitable, Callable, Mapping, Sequence

from workers.clickhouse import faults, indoubt, native, sink
from workers.clickhouse.schema import ColumnMapper, SchemaError, ServerFeatures, TableColumn
from workers.clickhouse.schema.mapper import omission_groups

log = logging.getLogger(__name__)

# New keys in documents read the table again at most this often (seconds).
KEY_READ_INTERVAL_S = 1.0
# Dead-letter reasons that no table change can explain (see workers/partition/prepare.py's prepare).
_NOT_MAPPING = ("invalid_json", "max_deliver")


@dataclass(frozen=True)
class SchemaVersion:
    """The table's columns as read once, and the mapper compiled from them."""

    columns: tuple[TableColumn, ...]
    mapper: ColumnMapper
    digest: str


def schema_digest(columns: Sequence[TableColumn]) -> str:
    """A short hash of the columns (names, types and defaults, in table order): the schema's version."""
    text = "\n".join(f"{c.name}\t{c.type}\t{c.default_kind}\t{c.default_expression}" for c in columns)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def column_changes(old: Sequence[Sequence[str]], new: Sequence[Sequence[str]]) -> str:
    """What changed between two column lists of (name, type[, default kind, default expression]), in words."""
    before = {c[0]: tuple(c[1:]) for c in old}
    after = {c[0]: tuple(c[1:]) for c in new}
    parts = []
    added = [f"{n} {after[n][0]}" for n in after if n not in before]
    dropped = [n for n in before if n not in after]
    retyped = [f"{n} {before[n][0]} -> {after[n][0]}" for n in after if n in before and before[n][0] != after[n][0]]
    redefaulted = [n for n in after if n in before and before[n][0] == after[n][0] and before[n][1:] != after[n][1:]]
    labelled = (("added", added), ("dropped", dropped), ("retyped", retyped), ("default changed", redefaulted))
    for label, names in labelled:
        if names:
            parts.append(f"{label} {', '.join(names)}")
    if not parts and [c[0] for c in old] != [c[0] for c in new]:
        parts.append("columns reordered")
    return "; ".join(parts) or "no column changed"


class TableSchema:
    """One pipeline's table in a worker: the mapper in use, read again when due, asked or contradicted."""

    def __init__(
        self,
        pipeline: str,
        table: str,
        refresh_s: float,
        read_columns: Callable[[], Sequence[TableColumn]],
        compile: Callable[[Sequence[TableColumn]], ColumnMapper],
        report: Callable[[dict], None] = lambda msg: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pipeline = pipeline
        self.table = table  # database.table, for messages
        self.refresh_s = refresh_s
        self._read_columns = read_columns
        self._compile = compile
        self._report = report
        self._clock = clock
        self._wall = wall
        self.current: SchemaVersion | None = None
        self.read_at = 0.0  # wall clock of the last read
        self.next_at = 0.0  # monotonic time the next periodic read is due
        self.route: str | None = None  # the route whose table this is (None: the pipeline's own table)
        self._unmappable: tuple[str, str] | None = None  # (digest, problem) of columns that failed to compile
        self._watch_keys = True  # new top-level keys make the table be read again (see _read_for_keys)
        self._keys_read_at = -KEY_READ_INTERVAL_S
        self._sleep = sleep
        self._sent: str | None = None  # the digest whose columns the supervisor has been sent

    @classmethod
    def for_target(
        cls, client: Any, pipeline: Any, target: Any, database: str, features: ServerFeatures,
        report: Callable[[dict], None],
    ) -> "TableSchema":
        """The TableSchema of one of a configured pipeline's tables (a workers.settings.TableTarget:
        its own table, or a route's), read through `client`."""
        db, name = sink.split_table(target.table, database)
        schema = cls(
            pipeline.name,
            f"{db}.{name}",
            pipeline.schema_refresh_s,
            partial(sink.table_columns, client, target.table, database),
            partial(sink.compile_columns, client, target.table, features=features,
                    **sink.pipeline_mapping(pipeline, target)),
            report,
        )
        schema.route = target.label
        return schema

    @property
    def mapper(self) -> ColumnMapper:
        assert self.current is not None, "read() first"
        return self.current.mapper

    def due(self, now: float) -> bool:
        return self.refresh_s > 0 and now >= self.next_at

    # -- reading ----------------------------------------------------------------

    def read(self, why: str) -> bool:
        """Read the table; switch to a new mapper if its columns changed (True then).

        Raises TableUnusable if the table is gone or its new columns cannot be mapped
        (the mapper in use stays), and the driver's error if the server cannot be read.
        """
        try:
            columns = tuple(self._read_columns())
        except Exception as exc:
            self._send(problem=f"cannot read the table: {faults.describe(exc)}")
            raise
        self.read_at = self._wall()
        self.next_at = self._clock() + self.refresh_s
        if not columns:
            problem = f"table {self.table} does not exist"
            self._send(problem=problem)
            raise faults.TableUnusable(problem)
        digest = schema_digest(columns)
        if self.current is not None and digest == self.current.digest:
            self._send()
            return False
        if self._unmappable is not None and self._unmappable[0] == digest:
            self._send(problem=self._unmappable[1])
            raise faults.TableUnusable(self._unmappable[1])
        try:
            mapper = self._compile(columns)
        except SchemaError as exc:
            problem = f"table {self.table} (schema {digest}) cannot be mapped: {'; '.join(exc.problems)}"
            self._unmappable = (digest, problem)
            self._send(problem=problem)
            raise faults.TableUnusable(problem) from None
        old = self.current
        self.current = SchemaVersion(columns, mapper, digest)
        self._unmappable = None
        for col in mapper.unsupported:  # once per version: a version is compiled once
            log.warning(
                "pipeline %s: table %s (schema %s) column %s %s is left to the server: %s; "
                "messages carrying it are dead-lettered (unsupported_type)",
                self.pipeline, self.table, digest, col.name, col.type, col.why, extra={"pipeline": self.pipeline},
            )
        log.debug(
            "pipeline %s: table %s read (%s): schema %s", self.pipeline, self.table, why, digest,
            extra={"pipeline": self.pipeline},
        )
        self._send()
        return old is not None

    def refresh(self, why: str) -> None:
        """read(), for the periodic and the asked-for checks: a failure keeps the mapper in use.

        The failure reaches the supervisor's log through the report; inserts meanwhile
        find out for themselves (a gone table pauses the pipeline).
        """
        try:
            self.read(why)
        except Exception as exc:
            log.debug("pipeline %s: table %s not read (%s): %s", self.pipeline, self.table, why, exc)

    def _send(self, problem: str | None = None) -> None:
        """Report the read to the supervisor; the columns only with a version it has not been sent."""
        version = self.current
        msg = {
            "op": "schema",
            "pipeline": self.pipeline,
            "route": self.route,
            "table": self.table,
            "digest": version.digest if version else None,
            "read_at": self.read_at,
            "problem": problem,
        }
        if version is not None and version.digest != self._sent:
            msg["columns"] = [[c.name, c.type, c.default_kind, c.default_expression] for c in version.columns]
            self._sent = version.digest
        self._report(msg)

    # -- a batch ------------------------------------------------------------------

    def prepare(self, prepare: Callable[..., Any], msgs: list[tuple], target: Any) -> Any:
        """prepare(msgs, mapper, target) with the current mapper, again with a new one if the table changed.

        Documents the mapper refuses make it read the table first: the change that
        explains them (a widened type, an added column) would otherwise dead-letter them.
        So do documents with a top-level key no column reads (ColumnMapper.new_keys): a
        column added by ALTER TABLE takes the values of the first messages that carry it.
        Reads for keys are at most one a second (a batch with a key never seen before waits
        for the second to pass rather than be mapped without it); keys found to match no
        column are looked up again once a second at most while they keep coming, and not at
        all once more than 1000 distinct ones were seen (keys that are data, not names).
        The result's ``mapper`` is the one that mapped it.
        """
        version = self.current
        if self._watch_keys and self._clock() - self._keys_read_at >= KEY_READ_INTERVAL_S:
            version.mapper.forget_settled_keys()  # keys already flowing are looked up again, once a second at most
        prepared = prepare(msgs, version.mapper, target)
        if any(d.reason not in _NOT_MAPPING for d in prepared.dead):
            self.refresh("documents refused")
        elif prepared.new_keys and self._watch_keys:
            self._read_for_keys(prepared.new_keys)
        if self.current is not version:
            version = self.current
            prepared = prepare(msgs, version.mapper, target)
        if prepared.new_keys and self._watch_keys and not version.mapper.settle_keys(prepared.new_keys):
            self._watch_keys = False
            log.warning(
                "pipeline %s: table %s: more than 1000 top-level keys match no column (keys that are data?); new "
                "keys no longer make the table be read again (schema_refresh_s and SIGHUP still do)",
                self.pipeline, self.table, extra={"pipeline": self.pipeline},
            )
        prepared.mapper = version.mapper
        return prepared

    def _read_for_keys(self, keys: set[str]) -> None:
        """Documents carry keys no column reads: read the table before they are mapped (at most once a
        second), so that a column added by ALTER TABLE takes the values of the first messages that carry it."""
        wait = self._keys_read_at + KEY_READ_INTERVAL_S - self._clock()
        if wait > 0:
            self._sleep(wait)  # in the insert thread: this batch waits, nothing is mapped without the column
        self._keys_read_at = self._clock()
        shown = ", ".join(sorted(keys)[:5]) + (", ..." if len(keys) > 5 else "")
        self.refresh(f"new keys {shown}")

    def store(
        self,
        prepare: Callable[..., Any],
        insert: Callable[[Sequence[str], list[list]], Any],
        msgs: list[tuple],
        prepared: Any,
        target: Any,
        landed: Callable[[str], bool | None] | None = None,
    ) -> tuple[list[tuple[int, str]], list[Any]]:
        """Insert a prepared batch; if the table changed under it, map the rows not yet stored again and insert those.

        Returns (refused, remapped): ClickHouse's refusals as (message index, error) and
        the dead letters of the new mapping. ``prepared.rows`` becomes the rows stored
        plus both. Raises what a retry should handle (TableUnusable pauses); it changes
        nothing in `prepared` until it returns, so a retry starts from the same batch.
        Rows that leave columns to the server (ColumnMapper.omittable) are inserted in
        groups, each under its own identity; `landed(query_id)` (a retry, a batch in doubt)
        is asked about each group first, and a group that landed is not sent again.
        """
        mapper, columns, row_msgs = prepared.mapper, prepared.columns, prepared.row_msgs
        stored: list[int] = []  # message indices inserted before a change was found
        remapped: list[Any] = []
        ident, passes = indoubt.current.get(), count(1)
        while True:
            try:
                refused = self._insert(insert, mapper, columns, len(row_msgs), landed)
                break
            except faults.TableChanged as change:
                done = set(change.stored)
                stored += [row_msgs[i] for i in change.stored]
                todo = [m for i, m in enumerate(row_msgs) if i not in done]
                mapper = self.mapper
                again = prepare([msgs[i] for i in todo], mapper, target)
                log.info(
                    "pipeline %s: table %s changed under a batch of %d rows; mapped again with schema %s "
                    "(%d refused by it)", self.pipeline, self.table, len(todo), self.current.digest, len(again.dead),
                    extra={"pipeline": self.pipeline},
                )
                remapped += again.dead
                columns, row_msgs = again.columns, [todo[i] for i in again.row_msgs]
                if ident is not None:
                    # Inserted under run_as (workers/clickhouse/indoubt.py), which restores the batch's identity after.
                    indoubt.current.set(ident.remapped(next(passes)))
        prepared.row_msgs = stored + row_msgs
        prepared.rows = len(prepared.row_msgs) + len(remapped)
        prepared.mapper = mapper
        return [(row_msgs[i], faults.describe(exc)) for i, exc in refused], remapped

    def _insert(
        self, insert: Callable[[Sequence[str], list[list]], Any], mapper: ColumnMapper, columns: list[list], n: int,
        landed: Callable[[str], bool | None] | None,
    ) -> list[tuple[int, BaseException]]:
        """isolate_bad_rows over the batch, or over each group of rows omitting the same columns
        (raises TableChanged with the rows of every group inserted before the change)."""
        groups = omission_groups(mapper, columns) if mapper.omittable else None
        if groups is None:
            return faults.isolate_bad_rows(
                partial(insert, mapper.column_names), columns, n, partial(self._check, mapper),
                partial(self._writable, mapper.column_names, mapper.column_types),
            )
        ident = indoubt.current.get()
        refused: list[tuple[int, BaseException]] = []
        done: list[int] = []
        for g in groups:
            part = ident if ident is None or not g.tag else indoubt.InsertIdentity(
                f"{ident.query_id}-o{g.tag}", ident.token and f"{ident.token}:o{g.tag}")
            if landed is not None and part is not None and landed(part.query_id) is True:
                log.info("pipeline %s: table %s: the %d rows leaving %s to the server had landed; not sent again",
                         self.pipeline, self.table, len(g.rows), g.tag or "nothing", extra={"pipeline": self.pipeline})
                done += g.rows
                continue
            token = indoubt.current.set(part)
            try:
                bad = faults.isolate_bad_rows(
                    partial(insert, g.names), g.columns, len(g.rows), partial(self._check, mapper),
                    partial(self._writable, g.names, g.types),
                )
            except faults.TableChanged as change:
                raise faults.TableChanged(done + [g.rows[i] for i in change.stored]) from None
            finally:
                indoubt.current.reset(token)
            refused += [(g.rows[i], exc) for i, exc in bad]
            done += g.rows
        return refused

    def _check(self, mapper: ColumnMapper, exc: BaseException) -> None:
        """Before an insert failure is acted on: was it the table that changed? (raises TableChanged)"""
        if not faults.table_in_question(exc):
            return
        try:
            self.read(f"an insert failed: {faults.describe(exc)}")
        except faults.TableUnusable as unusable:
            raise faults.TableUnusable(f"{unusable}; the insert said: {faults.describe(exc)}") from None
        except Exception:
            return  # the server cannot be read now: the insert's own error decides
        if self.mapper is not mapper:
            raise faults.TableChanged()


    def _writable(self, names: Sequence[str], types: Sequence[str], columns: list[list]) -> None:
        """After the client library failed to write a batch: is there a column no row of which it can write?

        Raises ColumnUnwritable naming it (the pipeline pauses; nothing is dead-lettered).
        A column only some rows of which fail is left to the bisection (those rows' problem).
        """
        for name, type_text, values in zip(names, types, columns, strict=True):
            if not values or native.write_problem(type_text, values) is None:
                continue
            first = native.write_problem(type_text, values[:1])
            if first is not None and all(native.write_problem(type_text, [v]) for v in values[1:]):
                raise faults.ColumnUnwritable(
                    f"table {self.table}: the client library cannot write column {name} of type {type_text} "
                    f"({first}); no row is dead-lettered"
                )


def unused_overrides(p: Any, mappers: Sequence[ColumnMapper | None]) -> str | None:
    """A routed pipeline's own `columns` that no route's table has (a typo would go unused), in words;
    `mappers` are its tables' (None: not read)."""
    if not p.routes or any(m is None for m in mappers):
        return None
    tables = {m.table: set(m.all_columns) for m in mappers}
    unused = [o.column for o in p.columns if not any(o.column in cols for cols in tables.values())]
    if not unused:
        return None
    return (f"columns {', '.join(unused)} match a column of no route's table "
            f"({', '.join(sorted(tables))}); each pipeline-wide override must be used by at least one")


class SchemaWatch:
    """The worker's TableSchema per (pipeline, route) table, and the loop that reads each again when due or asked."""

    def __init__(self, tables: Mapping[Any, TableSchema], run_in_thread: Callable[..., Awaitable[Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._tables = dict(tables)
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._asked = False
        self._wake = asyncio.Event()

    def __getitem__(self, key: Any) -> TableSchema:
        return self._tables[key]

    def of(self, pipeline: str) -> list[TableSchema]:
        """A pipeline's tables: its own, or its routes' in route order."""
        return [t for t in self._tables.values() if t.pipeline == pipeline]

    def values(self) -> list[TableSchema]:
        return list(self._tables.values())

    def refresh_all(self) -> None:
        """Read every table again at once (the supervisor's SIGHUP), whether or not it is due."""
        self._asked = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            asked, self._asked = self._asked, False
            for table in self._tables.values():
                if asked or table.due(self._clock()):
                    await self._run_in_thread(table.refresh, "asked" if asked else "periodic")
            now = self._clock()
            waits = [t.next_at - now for t in self._tables.values() if t.refresh_s > 0]
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, min(waits)) if waits else None)
            except asyncio.TimeoutError:
                pass
