"""The map-and-insert step of a partition's batch: map its messages (workers/partition/prepare.py,
in the insert thread), dead-letter what cannot be mapped, insert the rest into ClickHouse and
dead-letter the rows it refuses; each step retried until it succeeds. A routed pipeline's batch
is split by route first (workers/partition/router.py): one part per table.

The storer (workers/partition/storer.py) calls it for each batch, and a takeover
(workers/delivery/takeover.py) for the batches a dead owner left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from itertools import count
from typing import Any, Awaitable, Callable, Sequence

from workers import message
from workers.clickhouse import indoubt
from workers.clickhouse.schema import ColumnMapper
from workers.clickhouse.table_schema import TableSchema
from workers.delivery.commits import Range
from workers.nats.dlq import DeadLetter, publish_dead_letters
from workers.observability.telemetry import Telemetry
from workers.partition.prepare import (
    REPLY,
    SUBJECT,
    Parsed,
    PartitionTarget,
    Prepared,
    dead_letter,
    join_prepared,
    map_parsed,
    parse,
    prepare,
)
from workers.partition.retry import Retrying
from workers.partition.router import NO_DOCUMENT, UNDECIDED, UNROUTED, Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteTable:
    """One of a partition's tables: its schema (the current mapper) and how to insert into it."""

    schema: TableSchema
    insert: Callable[[Sequence[str], list[list]], int]  # (names, columns) -> rows, in the insert thread

    @property
    def label(self) -> str | None:
        return self.schema.route


@dataclass
class _Part:
    """A batch's rows for one table: the messages routed there, mapped."""

    table: WriteTable
    msgs: list[tuple]
    prepared: Prepared


class TableWriter:
    """Writes a partition's messages into its table(s) and its DLQ; returns once all confirmed them.

    A pipeline without routes has one table and each batch is one insert. A routed pipeline
    (workers/partition/router.py) splits each batch by route: one part per table, inserted
    one after the other, each under its own identity (the batch's, named after the route),
    so that each part is asked about, deduplicated and settled on its own.
    """

    def __init__(
        self,
        nc: Any,
        target: PartitionTarget,
        tables: Sequence[WriteTable],
        run_in_thread: Callable[..., Awaitable[Any]],
        telemetry: Telemetry,
        retrying: Retrying,
        log_extra: dict,
        clickhouse: indoubt.QueryLog | None = None,
        exit_hook: Any = None,
        stats: Any = None,
    ) -> None:
        self._nc = nc
        self.target = target
        self.name = f"{target.pipeline.name}/{target.index}"
        self._tables = list(tables)  # each table's current mapper follows changes of the table
        self._router = Router(target.pipeline) if target.pipeline.routes else None
        self._run_in_thread = run_in_thread  # carrying the batch span when observability is on
        self._telemetry = telemetry
        self._retrying = retrying
        self._log_extra = log_extra  # on every log line
        # Asks ClickHouse about an in-doubt insert (workers/clickhouse/indoubt.py, in the insert thread).
        self._query_log = clickhouse
        self._exit_hook = exit_hook  # tests: exit between two parts' inserts
        self._stats = stats  # the partition's PartitionStats (a resend nobody could tell about is counted)

    async def store(
        self, msgs: list[tuple], ident: indoubt.InsertIdentity | None, r: Range | None, keep_alive: list[tuple] | None,
        first_deliveries: bool = False, in_doubt: bool = False,
    ) -> Prepared:
        """Map `msgs`, dead-letter what cannot be mapped, insert the rest (under `ident`) and
        dead-letter the rows ClickHouse refuses; returns once all of it is confirmed.
        `first_deliveries`: none of `msgs` is a redelivery (known from intake).
        `in_doubt`: a previous owner may have inserted some parts; each is asked about first
        (ClickHouse's query log) and not sent again if it landed."""
        pipeline = self.target.pipeline
        prep = partial(self._prepare, first_deliveries=first_deliveries)
        if self._router is None:
            table = self._tables[0]
            prepared: Prepared = await self._run_in_thread(table.schema.prepare, prep, msgs, self.target)
            parts = [_Part(table, msgs, prepared)]
            total = Prepared(columns=[], rows=0, row_msgs=[], dead=list(prepared.dead),
                             redelivered=prepared.redelivered)
        else:
            parts, total = await self._run_in_thread(self._route, msgs, first_deliveries)
        if total.dead:
            for dl in total.dead:
                log.warning(
                    "dead-lettered %s seq %d: %s: %s", dl.subject, dl.stream_seq, dl.reason, dl.error,
                    extra=self._log_extra,
                )
            await self._retrying(
                "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, total.dead
            )
        for n, part in enumerate(parts):
            if n and self._exit_hook is not None and r is not None:
                self._exit_hook.reached("part", r, log)
            letters = await self._insert_part(part, prep, ident, r, keep_alive, in_doubt)
            total.rows += part.prepared.rows
            total.dead.extend(letters)
            if part.table.label is not None:
                counts = total.routes.setdefault(part.table.label, [0, 0, 0])
                counts[0] += part.prepared.rows
                counts[2] += len(part.prepared.dead) + len(letters)
        return total

    async def _insert_part(
        self, part: _Part, prep: Callable[..., Prepared], ident: indoubt.InsertIdentity | None, r: Range | None,
        keep_alive: list[tuple] | None, in_doubt: bool,
    ) -> list[DeadLetter]:
        """Insert one table's part (retried until it is in); returns the dead letters of the rows it refused."""
        prepared = part.prepared
        if not prepared.rows:
            return []
        if ident is not None and part.table.label is not None:
            ident = ident.routed(part.table.label)
        # A table changed under the batch has its rows mapped again (remapped: what the new mapping refused).
        attempts = count(1 if in_doubt else 0)  # in doubt: ask whether it landed before the first send
        refused, remapped = await self._retrying(
            "insert", self._insert_once, part.table, prep, ident, r, attempts, part.msgs, prepared,
            keep_alive=keep_alive,
        )
        if not (refused or remapped):
            return []
        letters = remapped + [dead_letter(part.msgs[i], self.target, "insert_rejected", error) for i, error in refused]
        for dl in letters:
            log.warning(
                "%s %s seq %d, dead-lettered: %s", "ClickHouse refused" if dl.reason == "insert_rejected"
                else f"the changed table refuses ({dl.reason})", dl.subject, dl.stream_seq, dl.error,
                extra=self._log_extra,
            )
        pipeline = self.target.pipeline
        await self._retrying(
            "dlq publish", publish_dead_letters, self._nc, pipeline.dlq_stream, pipeline.dlq_subject, letters,
            keep_alive=keep_alive,
        )
        prepared.rows -= len(letters)
        return letters

    async def _insert_once(
        self, table: WriteTable, prep: Callable[..., Prepared], ident: indoubt.InsertIdentity | None, r: Range | None,
        attempts: Any, msgs: list[tuple], prepared: Prepared,
    ) -> tuple[list[tuple[int, str]], list[DeadLetter]]:
        """One attempt at the insert (through the table's schema, which maps the rows again if the
        table changed under them); a retry first asks ClickHouse whether the failed attempt landed
        (and the table's schema asks about each group of rows leaving columns to the server)."""
        landed = None
        if next(attempts) and ident is not None and self._query_log is not None:
            query_log, began_at = self._query_log, r.began_at

            def landed(query_id: str) -> bool | None:  # in the insert thread
                return query_log.landed(query_id, began_at, 10.0)

            verdict = await self._run_in_thread(landed, ident.query_id)
            into = "" if table.label is None else f" into route {table.label}"
            if verdict:
                log.info(
                    "partition %s: the insert of %d..%d%s had landed; not sending it again",
                    self.name, r.first, r.last, into, extra=self._log_extra,
                )
                return [], []
            if verdict is None:
                # ClickHouse cannot say (restarted before logging it): the same block again, under the same
                # identity; counted with the takeovers' resends (jetsink_in_doubt_batches_total{settled="resent"}).
                if self._stats is not None:
                    self._stats.in_doubt_resent += 1
                log.warning(
                    "partition %s: cannot tell whether the failed insert of %d..%d%s landed (ClickHouse restarted?); "
                    "sent again as the same block (%d rows, %s)", self.name, r.first, r.last, into, prepared.rows,
                    "deduplicated by its token where the table deduplicates" if ident.token
                    else "a duplicate if it had landed, unless the table is Replicated",
                    extra={**self._log_extra, "first_seq": r.first, "last_seq": r.last, "rows": prepared.rows},
                )
        return await self._run_in_thread(
            indoubt.run_as, ident, table.schema.store, prep, table.insert, msgs, prepared, self.target, landed
        )

    def _route(self, msgs: list[tuple], first_deliveries: bool) -> tuple[list[_Part], Prepared]:
        """Split a routed pipeline's batch (in the insert thread): the part of each table, mapped, and
        the batch's totals (dead letters so far, skipped and routed counts)."""
        router = self._router
        tables = {t.label: t for t in self._tables}
        decided = router.by_subject(msgs)
        total = Prepared(columns=[], rows=0, row_msgs=[], routes={t.label: [0, 0, 0] for t in self._tables})
        skipped = {i for i, d in enumerate(decided) if d >= 0 and router.routes[d].skip}
        for i in skipped:
            self._count(total, router.routes[decided[i]].label, skipped=1)
        todo = [m for i, m in enumerate(msgs) if i not in skipped] if skipped else msgs
        decided = [d for i, d in enumerate(decided) if i not in skipped] if skipped else decided
        parsed = parse(todo, self.target, first_deliveries)
        total.dead, total.redelivered = list(parsed.dead), parsed.redelivered
        invalid = {dl.stream_seq for dl in parsed.dead if dl.reason == "invalid_json"}
        if invalid:
            # Messages that are no JSON: a route after the field conditions may skip them.
            kept = set(parsed.keep)
            skip = {}
            for i in range(len(todo)):
                if i in kept or decided[i] != UNDECIDED:
                    continue
                seq = message.parse_ack_subject(todo[i][REPLY]).stream_seq
                d = router.by_doc(todo[i][SUBJECT], NO_DOCUMENT) if seq in invalid else UNROUTED
                if d >= 0 and router.routes[d].skip:
                    skip[seq] = router.routes[d].label
            if skip:
                total.dead = [dl for dl in total.dead if dl.reason != "invalid_json" or dl.stream_seq not in skip]
                for label in skip.values():
                    self._count(total, label, skipped=1)
        groups: dict[int, list[int]] = {}  # route -> positions in parsed.docs
        for j, (k, doc) in enumerate(zip(parsed.keep, parsed.docs, strict=True)):
            d = decided[k]
            if d == UNDECIDED:
                d = router.by_doc(todo[k][SUBJECT], doc)
            groups.setdefault(d, []).append(j)
        for j in groups.pop(UNROUTED, []):
            m = todo[parsed.keep[j]]
            if router.unrouted_skip:
                self._count(total, "unrouted", skipped=1)
            else:
                self._count(total, "unrouted", dead=1)
                total.dead.append(dead_letter(
                    m, self.target, "unrouted", f"no route of pipeline {self.target.pipeline.name} matches it"))
        parts = []
        for d in sorted(groups):
            route, positions = router.routes[d], groups[d]
            if route.skip:  # a route with a field test that skips
                self._count(total, route.label, skipped=len(positions))
                continue
            part_msgs = [todo[parsed.keep[j]] for j in positions]
            sub = Parsed(part_msgs, [parsed.docs[j] for j in positions], list(range(len(positions))), [],
                         parsed.redelivered)
            table = tables[route.label]
            prepared = table.schema.prepare(partial(self._map_part, sub, first_deliveries), part_msgs, self.target)
            total.dead.extend(prepared.dead)
            parts.append(_Part(table, part_msgs, prepared))
        return parts, total

    def _map_part(self, sub: Parsed, first_deliveries: bool, msgs: list[tuple], mapper: ColumnMapper,
                  target: PartitionTarget) -> Prepared:
        """A route's part mapped (its documents parsed already); other messages (the rows of a part whose
        table changed under it) are parsed again."""
        if msgs is sub.msgs and not self._telemetry.per_message_spans:
            with self._telemetry.map(target, msgs) as mapped:
                prepared = map_parsed(sub, mapper, target)
                mapped(prepared)
                return prepared
        return self._prepare(msgs, mapper, target, first_deliveries)

    @staticmethod
    def _count(total: Prepared, label: str, skipped: int = 0, dead: int = 0) -> None:
        counts = total.routes.setdefault(label, [0, 0, 0])
        counts[1] += skipped
        counts[2] += dead

    def _prepare(
        self, msgs: list[tuple], mapper: ColumnMapper, target: PartitionTarget, first_deliveries: bool = False
    ) -> Prepared:
        """prepare() in the insert thread, under the telemetry's `map` span(s).

        The table's schema (workers/clickhouse/table_schema.py) calls it with its current mapper,
        and again with a new one when the table changed under the batch.
        """
        if not self._telemetry.per_message_spans:
            with self._telemetry.map(target, msgs) as mapped:
                prepared = prepare(msgs, mapper, target, first_deliveries)
                mapped(prepared)
                return prepared
        # Each message parsed and mapped on its own, so that each span times one message;
        # this costs, hence opt-in (observability.traces.per_message_spans).
        parts = []
        for msg in msgs:
            with self._telemetry.map_message(msg) as mapped:
                parts.append(prepare([msg], mapper, target, first_deliveries))
                mapped(parts[-1])
        return join_prepared(parts)
